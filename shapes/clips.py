"""The "shapes" task: generated clips of coloured shapes with questions whose answers are known.

A clip is T frames (1 to 8) of SIZE x SIZE pixels: 3 to 6 filled shapes over a background, each still or
moving in a straight line. Everything is deterministic from a seed: `sample_clip(seed)` draws a ClipSpec,
`render` paints it (numpy only, a few ms), `questions` and `caption` label it, `encode_mp4` writes it as
H.264, and `write_split` writes a split's clips plus a questions file the pipeline reads.

Geometry: an object's box is `size` x `size` pixels with its top-left corner at (x, y) in frame 0
(x grows right, y grows down); in frame t it is at (x + vx * speed * t, y + vy * speed * t), with
(vx, vy) the unit step of its direction ("down" is +y). The shape is drawn inside that box.

Rules the sampler guarantees (the tests check them on rendered pixels):
    - no two objects share (shape, colour); 28 <= size <= 56; moving objects go 8 to 24 px a frame;
    - every box stays inside the frame in every frame;
    - boxes never overlap (they may touch) at any time along their straight paths, between frames
      too, so no object hides or passes through another;
    - an object's colour name is used only when its nominal RGB is at least MIN_COLOUR_DISTANCE (135)
      in Euclidean RGB from every background colour. The background only takes colours on the segment
      between its two colours, so after the +-20 per-channel jitter (at most 34.7 away) every object
      pixel is at least 99 away from every background pixel.

An object covers a patch (a 14 x 14 cell of the 24 x 24 grid, index row * 24 + col) when at least 25%
of the patch's 196 pixels belong to it. Every object covers at least one patch wherever it is (the
least, a 28 px star on a patch corner, fills 76 pixels of its fullest patch; a test checks every shape,
size and offset).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

SIZE = 336
PATCH = 14
GRID = 24  # SIZE // PATCH: the 24 x 24 patch grid of LLaVA-1.5 at 336 px
SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "purple": (150, 60, 200), "orange": (250, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
DIRECTIONS = ("still", "left", "right", "up", "down")
QUESTION_TYPES = ("colour", "shape", "count", "motion", "exists")
SPLITS = ("train", "validation", "test")

MAX_FRAMES = 8
MIN_OBJECTS, MAX_OBJECTS = 3, 6
MIN_SIZE, MAX_SIZE = 28, 56
MIN_SPEED, MAX_SPEED = 8, 24
JITTER = 20
MIN_COLOUR_DISTANCE = 135.0
MAX_PAN = 3  # background pan, px a frame along each axis
COVER_FRACTION = 0.25
PER_TYPE = {"colour": 2, "shape": 2, "count": 2, "motion": 2, "exists": 2}  # questions a clip, at most
SPLIT_STRIDE = 10**9  # split k uses seeds [k * SPLIT_STRIDE, (k + 1) * SPLIT_STRIDE)

_STEP = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_PLURAL = {s: s + "s" for s in SHAPES}
_STAR_INNER = 0.5  # inner / outer radius: fatter than a pentagram so a 28 px star still reads as a star


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape; (x, y) is the top-left of its size x size box in frame 0."""

    shape: str
    colour: str  # a COLOURS name
    rgb: tuple[int, int, int]  # the jittered colour it is painted in, exactly
    size: int  # px across (the box side)
    x: int
    y: int
    direction: str  # a DIRECTIONS entry
    speed: int  # px a frame; 0 when still

    def position(self, t: int) -> tuple[int, int]:
        """Top-left (x, y) of the box in frame t."""
        vx, vy = _STEP[self.direction]
        return self.x + vx * self.speed * t, self.y + vy * self.speed * t


@dataclass(frozen=True)
class Background:
    """Pixels are colours[0] + w * (colours[1] - colours[0]) for a weight w in [0, 1] per pixel.

    kind "solid": w = 0; "gradient": w linear along `angle` (degrees, 0 = left to right, 90 = top to
    bottom); "noise": w a smoothstep interpolation of a coarse (5 x 5) random grid drawn from
    `noise_seed`. The content moves `pan` = (dx, dy) px a frame.
    """

    kind: str
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    pan: tuple[int, int] = (0, 0)
    angle: float = 0.0
    noise_seed: int = 0


@dataclass(frozen=True)
class ClipSpec:
    seed: int
    frames: int  # T
    background: Background
    objects: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class Question:
    question: str
    answer: str  # one lowercase word
    question_type: str  # a QUESTION_TYPES entry
    object_patches: tuple[tuple[int, int], ...]  # (frame, row * GRID + col); empty when no such object


# ----------------------------------------------------------------------------- seeds and sampling


def clip_seed(split: str, index: int) -> int:
    """The seed of clip `index` of `split`; splits draw from disjoint ranges."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= int(index) < SPLIT_STRIDE:
        raise ValueError(f"index must be in [0, {SPLIT_STRIDE}), got {index}")
    return SPLITS.index(split) * SPLIT_STRIDE + int(index)


def _check_frames(frames: int) -> int:
    if not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be an int in [1, {MAX_FRAMES}], got {frames!r}")
    return int(frames)


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance of each RGB point (n, 3) to the segment a-b."""
    ab = b - a
    denom = float(ab @ ab)
    t = np.clip((points - a) @ ab / denom, 0.0, 1.0) if denom else np.zeros(len(points))
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def allowed_colours(background: Background) -> tuple[str, ...]:
    """The colour names far enough from every colour the background can take."""
    a, b = (np.asarray(c, dtype=np.float64) for c in background.colours)
    nominal = np.asarray(list(COLOURS.values()), dtype=np.float64)
    far = _segment_distance(nominal, a, b) >= MIN_COLOUR_DISTANCE
    return tuple(name for name, ok in zip(COLOURS, far) if ok)


def _sample_background(rng: np.random.Generator) -> Background:
    while True:
        kind = ("solid", "gradient", "noise")[rng.integers(3)]
        c0 = rng.integers(0, 256, 3)
        c1 = c0 if kind == "solid" else np.clip(c0 + rng.integers(-60, 61, 3), 0, 255)
        pan = (0, 0)
        if kind != "solid" and rng.random() < 0.5:
            pan = tuple(int(v) for v in rng.integers(-MAX_PAN, MAX_PAN + 1, 2))
        background = Background(
            kind=kind, colours=(tuple(int(v) for v in c0), tuple(int(v) for v in c1)), pan=pan,
            angle=float(rng.integers(0, 360)) if kind == "gradient" else 0.0,
            noise_seed=int(rng.integers(2**31)) if kind == "noise" else 0,
        )
        if len(allowed_colours(background)) >= 3:  # 12+ (shape, colour) pairs for up to 6 objects
            return background


def _collide(a: ShapeObject, b: ShapeObject, frames: int) -> bool:
    """Whether the two boxes overlap (touching is fine) at any real time t in [0, frames - 1]."""
    (avx, avy), (bvx, bvy) = _STEP[a.direction], _STEP[b.direction]
    low, high = -math.inf, math.inf  # the open interval of t where they overlap on every axis so far
    for d0, dv, size_a, size_b in (
        (b.x - a.x, bvx * b.speed - avx * a.speed, a.size, b.size),
        (b.y - a.y, bvy * b.speed - avy * a.speed, a.size, b.size),
    ):
        # on this axis they overlap while -size_b < d0 + dv * t < size_a (d: b's offset from a)
        if dv == 0:
            if not -size_b < d0 < size_a:
                return False
            continue
        t1, t2 = Fraction(-size_b - d0, dv), Fraction(size_a - d0, dv)  # exact: touching is not overlap
        low, high = max(low, min(t1, t2)), min(high, max(t1, t2))
    return low < high and low < frames - 1 and high > 0  # (low, high) meets the closed [0, T-1]


def _sample_object(rng: np.random.Generator, shape: str, colour: str, frames: int) -> ShapeObject:
    """An object with its colour, size and motion drawn; its place is drawn by `_place`."""
    nominal = np.asarray(COLOURS[colour])
    rgb = tuple(int(v) for v in np.clip(nominal + rng.integers(-JITTER, JITTER + 1, 3), 0, 255))
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    # one frame shows no motion, so a one-frame clip holds only still objects
    direction = "still" if frames == 1 else DIRECTIONS[rng.integers(len(DIRECTIONS))]
    speed = 0 if direction == "still" else int(rng.integers(MIN_SPEED, MAX_SPEED + 1))
    return ShapeObject(shape, colour, rgb, size, 0, 0, direction, speed)


def _place(rng: np.random.Generator, obj: ShapeObject, frames: int) -> ShapeObject:
    """`obj` at a random frame-0 place from which its box stays inside the frame in every frame."""
    vx, vy = _STEP[obj.direction]
    travel = obj.speed * (frames - 1)
    # inside at t = 0 and t = T-1, hence at every t between (MAX_SIZE + 7 * MAX_SPEED < SIZE, never empty)
    x_lo, x_hi = max(0, -vx * travel), min(SIZE - obj.size, SIZE - obj.size - vx * travel)
    y_lo, y_hi = max(0, -vy * travel), min(SIZE - obj.size, SIZE - obj.size - vy * travel)
    return replace(obj, x=int(rng.integers(x_lo, x_hi + 1)), y=int(rng.integers(y_lo, y_hi + 1)))


def sample_clip(seed: int, frames: int = 4) -> ClipSpec:
    """A random clip, deterministic from (seed, frames)."""
    frames = _check_frames(frames)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([int(seed), frames])
    background = _sample_background(rng)
    pairs = [(s, c) for s in SHAPES for c in allowed_colours(background)]
    while True:
        count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)]
        drawn = [_sample_object(rng, shape, colour, frames) for shape, colour in chosen]
        # only places are retried, so a moving object (harder to fit) is not dropped in favour of a still one
        placed: list[ShapeObject] = []
        for obj in drawn:
            for _ in range(100):
                candidate = _place(rng, obj, frames)
                if not any(_collide(candidate, other, frames) for other in placed):
                    placed.append(candidate)
                    break
            else:
                break  # no free place: draw the whole clip again
        if len(placed) == count:
            return ClipSpec(seed=int(seed), frames=frames, background=background, objects=tuple(placed))


# ----------------------------------------------------------------------------- rendering


def _polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: pixel centres inside the polygon (even-odd rule); vertices (n, 2) as (x, y)."""
    c = np.arange(size) + 0.5
    px, py = c[None, :], c[:, None]
    inside = np.zeros((size, size), dtype=bool)
    x0, y0 = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        crosses = (ay > py) != (by > py)
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    return inside


@lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape filling a size x size box (read-only, cached)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    c = np.arange(size) + 0.5
    if shape == "circle":
        r = size / 2
        mask = (c[None, :] - r) ** 2 + (c[:, None] - r) ** 2 <= r * r
    elif shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "triangle":  # apex at top centre, base along the bottom edge
        mask = np.abs(c[None, :] - size / 2) <= c[:, None] / 2
    else:  # five-pointed star, a point up, centred vertically on its own extent
        r = size / 2
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * _STAR_INNER)
        shift = (r - r * np.cos(np.pi / 5)) / 2  # the lower points reach r*cos(36 deg) below the centre
        vertices = np.stack([r + radii * np.cos(angles), r + shift + radii * np.sin(angles)], axis=1)
        mask = _polygon_mask(vertices, size)
    mask = np.ascontiguousarray(mask)
    mask.flags.writeable = False
    return mask


def _smooth_axis(length: int, points: int) -> np.ndarray:
    """(length, points) weights interpolating `points` control values smoothly (smoothstep) over `length`."""
    u = np.linspace(0, points - 1, length)
    i0 = np.minimum(np.floor(u).astype(int), points - 2)
    f = u - i0
    f = f * f * (3 - 2 * f)
    weights = np.zeros((length, points))
    weights[np.arange(length), i0] = 1 - f
    weights[np.arange(length), i0 + 1] = f
    return weights


def _background_canvas(background: Background, frames: int) -> np.ndarray:
    """(H, W, 3) uint8, large enough for every frame's crop when the background pans."""
    dx, dy = background.pan
    h, w = SIZE + abs(dy) * (frames - 1), SIZE + abs(dx) * (frames - 1)
    c0, c1 = (np.asarray(c, dtype=np.float64) for c in background.colours)
    if background.kind == "solid":
        return np.tile(c0.astype(np.uint8), h * w).reshape(h, w, 3)  # contiguous: 10x faster to copy from
    if background.kind == "gradient":
        a = np.deg2rad(background.angle)
        xs, ys = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)[:, None]
        weight = np.float32(np.cos(a)) * xs + np.float32(np.sin(a)) * ys  # (h, w) position along the angle
    elif background.kind == "noise":
        grid = np.random.default_rng(background.noise_seed).random((5, 5))  # ~4 bumps across: low frequency
        along_h, along_w = (_smooth_axis(n, 5).astype(np.float32) for n in (h, w))
        rows = np.einsum("hk,kl->hl", along_h, grid.astype(np.float32))  # (h, 5)
        # rows @ along_w.T as 5 outer products: 0.7 ms, where a BLAS matmul took 10 ms on a busy 2-core machine
        weight = sum(np.multiply.outer(rows[:, k], along_w[:, k]) for k in range(5))  # (h, w)
    else:
        raise ValueError(f"background.kind must be solid, gradient or noise, got {background.kind!r}")
    weight = (weight - weight.min()) / max(float(weight.max() - weight.min()), 1e-9)  # [0, 1]
    # through a 256-entry table: a channel spans at most 60 levels, so 256 steps lose nothing visible
    lut = np.rint(c0 + np.linspace(0, 1, 256)[:, None] * (c1 - c0)).astype(np.uint8)
    return np.take(lut, (weight * 255 + 0.5).astype(np.uint8), axis=0)


def render(spec: ClipSpec) -> np.ndarray:
    """(T, SIZE, SIZE, 3) uint8 frames of the clip."""
    T = _check_frames(spec.frames)
    canvas = _background_canvas(spec.background, T)
    dx, dy = spec.background.pan
    x0, y0 = max(dx, 0) * (T - 1), max(dy, 0) * (T - 1)  # content moving +dx means the crop moves -dx
    out = np.empty((T, SIZE, SIZE, 3), dtype=np.uint8)
    for t in range(T):
        ox, oy = x0 - dx * t, y0 - dy * t
        out[t] = canvas[oy : oy + SIZE, ox : ox + SIZE]
    for obj in spec.objects:
        mask, rgb = shape_mask(obj.shape, obj.size), np.asarray(obj.rgb, dtype=np.uint8)
        for t in range(T):
            x, y = obj.position(t)
            out[t, y : y + obj.size, x : x + obj.size][mask] = rgb
    return out


# ----------------------------------------------------------------------------- labels


def _patches_at(obj: ShapeObject, t: int) -> list[int]:
    """Sorted grid indices the object covers in frame t (see the module docstring)."""
    x, y = obj.position(t)
    r0, c0 = y // PATCH, x // PATCH
    oy, ox = y - r0 * PATCH, x - c0 * PATCH
    rows, cols = -(-(oy + obj.size) // PATCH), -(-(ox + obj.size) // PATCH)
    window = np.zeros((rows * PATCH, cols * PATCH), dtype=bool)
    window[oy : oy + obj.size, ox : ox + obj.size] = shape_mask(obj.shape, obj.size)
    counts = window.reshape(rows, PATCH, cols, PATCH).sum(axis=(1, 3))  # (rows, cols) object pixels a patch
    rr, cc = np.nonzero(counts >= COVER_FRACTION * PATCH * PATCH)
    return sorted(int((r0 + r) * GRID + c0 + c) for r, c in zip(rr, cc))


def object_patches(spec: ClipSpec, index: int) -> list[list[int]]:
    """Per frame, the sorted grid indices (row * 24 + col) that object `index` covers."""
    if not 0 <= index < len(spec.objects):
        raise ValueError(f"index must be in [0, {len(spec.objects)}), got {index}")
    return [_patches_at(spec.objects[index], t) for t in range(spec.frames)]


def _pairs(spec: ClipSpec, indices: list[int]) -> tuple[tuple[int, int], ...]:
    """(frame, index) pairs covered by any of the objects, sorted by frame then index."""
    out: set[tuple[int, int]] = set()
    for i in indices:
        for t, patches in enumerate(object_patches(spec, i)):
            out.update((t, p) for p in patches)
    return tuple(sorted(out))


def _pick(rng: np.random.Generator, items: list, k: int) -> list:
    """Up to k distinct items in a random order."""
    return [items[i] for i in rng.permutation(len(items))[:k]] if items else []


def questions(spec: ClipSpec, seed: int | None = None) -> list[Question]:
    """The clip's questions, at most PER_TYPE[type] of each type, in QUESTION_TYPES order.

    Which ones are picked is random but deterministic from `seed` (default: the clip's seed):
        colour  shapes held by exactly one object; up to 2 of them
        shape   colours held by exactly one object; up to 2 of them
        count   2 distinct shapes drawn uniformly from all four, so a shape the clip lacks is asked
                (answer "0") as often as it is absent
        motion  up to 2 objects (none for a one-frame clip: a single frame shows no motion)
        exists  one "yes" (a random object) and one "no" per clip; the "no" is, half the time when
                possible, a binding distractor (its shape and its colour are both in the clip, not
                together), otherwise any (shape, colour) the clip lacks
    """
    rng = np.random.default_rng([spec.seed, 0x5151] if seed is None else [int(seed), 0x5152])
    objs = spec.objects
    out: list[Question] = []
    by_shape = {s: [i for i, o in enumerate(objs) if o.shape == s] for s in SHAPES}
    by_colour = {c: [i for i, o in enumerate(objs) if o.colour == c] for c in COLOURS}

    for shape in _pick(rng, [s for s in SHAPES if len(by_shape[s]) == 1], PER_TYPE["colour"]):
        i = by_shape[shape][0]
        out.append(Question(f"What colour is the {shape}?", objs[i].colour, "colour", _pairs(spec, [i])))
    for colour in _pick(rng, [c for c in COLOURS if len(by_colour[c]) == 1], PER_TYPE["shape"]):
        i = by_colour[colour][0]
        out.append(Question(f"What shape is the {colour} object?", objs[i].shape, "shape", _pairs(spec, [i])))
    for shape in _pick(rng, list(SHAPES), PER_TYPE["count"]):
        out.append(Question(f"How many {_PLURAL[shape]} are there?", str(len(by_shape[shape])), "count",
                            _pairs(spec, by_shape[shape])))
    if spec.frames > 1:
        for i in _pick(rng, list(range(len(objs))), PER_TYPE["motion"]):
            o = objs[i]
            out.append(Question(f"Which way is the {o.colour} {o.shape} moving?", o.direction, "motion",
                                _pairs(spec, [i])))
    present = {(o.shape, o.colour) for o in objs}
    for i in _pick(rng, list(range(len(objs))), PER_TYPE["exists"] // 2):
        o = objs[i]
        out.append(Question(f"Is there a {o.colour} {o.shape}?", "yes", "exists", _pairs(spec, [i])))
    absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
    binding = [(s, c) for s, c in absent if by_shape[s] and by_colour[c]]
    for _ in range(PER_TYPE["exists"] // 2):
        pool = binding if binding and rng.random() < 0.5 else absent
        shape, colour = pool[rng.integers(len(pool))]
        out.append(Question(f"Is there a {colour} {shape}?", "no", "exists", ()))
    return out


def caption(spec: ClipSpec) -> str:
    """E.g. "a red circle moving left, a blue square staying still"; objects left to right in frame 0."""
    parts = []
    for o in sorted(spec.objects, key=lambda o: (o.x, o.y)):
        motion = "staying still" if o.direction == "still" else f"moving {o.direction}"
        parts.append(f"a {o.colour} {o.shape} {motion}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- files


def encode_mp4(frames: np.ndarray, fps: int = 4) -> bytes:
    """H.264 MP4 (libx264, yuv420p, crf 18, one thread so the bytes do not depend on the machine)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frames must have even height and width for yuv420p, got {frames.shape[1:3]}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_split(folder, split: str, count: int, *, frames: int = 4) -> Path:
    """Write <folder>/<split>/clip_00000.mp4 ... and <folder>/<split>/questions.jsonl; returns the latter.

    Rows: video_uri (the clip's file name, relative to the split folder: point the job's input.uri at
    that folder), question, answer, question_type, object_patches ([[frame, index], ...]).
    """
    clip_seed(split, 0)
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    frames = _check_frames(frames)
    out = Path(folder) / split
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        spec = sample_clip(clip_seed(split, index), frames)
        name = f"clip_{index:05d}.mp4"
        (out / name).write_bytes(encode_mp4(render(spec)))
        for q in questions(spec):
            rows.append({"video_uri": name, "question": q.question, "answer": q.answer,
                         "question_type": q.question_type, "object_patches": [list(p) for p in q.object_patches]})
    path = out / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# Long videos: K scenes of D seconds with hard cuts, each scene a clip of its own (background and objects).

LONG_SEED_OFFSET = 500_000_000  # long videos' scenes take seeds from here on within the split's range


def long_video_specs(split: str, index: int, scenes: int = 6, frames: int = 4) -> list[ClipSpec]:
    """The scenes of long video `index` of `split`: distinct clips, seeds apart from the split's clips."""
    return [sample_clip(clip_seed(split, LONG_SEED_OFFSET + index * scenes + k), frames) for k in range(scenes)]


def encode_long_mp4(path: str | Path, specs: list[ClipSpec], scene_s: float = 4.0, fps: int = 8) -> Path:
    """Write one H.264 MP4 of the scenes back to back, each `scene_s` long; a scene's T rendered frames are each
    held scene_s / T, so a segment [k * scene_s, (k + 1) * scene_s) sampled at the centres of T equal parts
    shows exactly the frames of the clip alone. A keyframe every 2 s (seeking) and at every cut;
    the index comes first (faststart), so a truncated file still opens."""
    import av

    hold = scene_s * fps / specs[0].frames
    if any(s.frames != specs[0].frames for s in specs) or hold != int(hold) or hold < 1:
        raise ValueError(f"every scene needs the same frame count T with scene_s * fps / T a whole number, got "
                         f"{scene_s} s * {fps} fps / {[s.frames for s in specs]}")
    path = Path(path)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:  # faststart rewrites the file
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "threads": "1", "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        pts = 0
        for spec in specs:
            for image in render(spec):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                for _ in range(int(hold)):
                    frame.pts = pts
                    pts += 1
                    for packet in stream.encode(frame):
                        container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_long_videos(folder, split: str, count: int, *, scenes: int = 6, scene_s: float = 4.0, frames: int = 4,
                      fps: int = 8) -> Path:
    """Write <folder>/long_00000.mp4 ... (`count` videos of `scenes` scenes of scene_s seconds) and
    <folder>/long_questions.jsonl; returns the latter. Rows: video_uri (file name), start_s, end_s (the
    scene), question, answer, question_type, object_patches (as write_split's, frames of the scene)."""
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        specs = long_video_specs(split, index, scenes, frames)
        name = f"long_{index:05d}.mp4"
        encode_long_mp4(out / name, specs, scene_s, fps)
        for k, spec in enumerate(specs):
            for q in questions(spec):
                rows.append({"video_uri": name, "start_s": k * scene_s, "end_s": (k + 1) * scene_s,
                             "question": q.question, "answer": q.answer, "question_type": q.question_type,
                             "object_patches": [list(p) for p in q.object_patches]})
    path = out / "long_questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# Plain clips for decoding and pipeline tests: no labels, any size and length (a square over a gradient).

_PLAIN_COLOURS = [(230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 200, 30), (200, 60, 220)]


def make_clip(path: str | Path, *, frames: int = 24, fps: int = 12, width: int = 160, height: int = 120, seed: int = 0) -> Path:
    """Write an H.264 MP4 of `frames` frames; returns its path."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = np.array(_PLAIN_COLOURS[seed % len(_PLAIN_COLOURS)], dtype=np.uint8)
    background = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    side = max(8, min(width, height) // 4)
    x, y = rng.integers(0, width - side), rng.integers(0, height - side)
    dx, dy = 1 + seed % 3, 1 + (seed + 1) % 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = background.copy()
            image[y : y + side, x : x + side] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            x, y = (x + dx * 3) % (width - side), (y + dy * 2) % (height - side)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(folder: str | Path, count: int) -> list[Path]:
    """`count` clips named clip_00.mp4, clip_01.mp4, ... (existing ones are kept)."""
    folder = Path(folder)
    return [p if (p := folder / f"clip_{i:02d}.mp4").exists() else make_clip(p, seed=i) for i in range(count)]
