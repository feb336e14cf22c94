"""The shapes generator: deterministic, its rules hold, and its labels agree with its pixels."""

import io
import json
import re
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from shapes import clips as S

SEEDS = range(40)
TEMPLATES = {
    "colour": re.compile(r"What colour is the (circle|square|triangle|star)\?"),
    "shape": re.compile(r"What shape is the (\w+) object\?"),
    "count": re.compile(r"How many (circle|square|triangle|star)s are there\?"),
    "motion": re.compile(r"Which way is the (\w+) (circle|square|triangle|star) moving\?"),
    "exists": re.compile(r"Is there a (\w+) (circle|square|triangle|star)\?"),
}
NOMINAL = np.asarray(list(S.COLOURS.values()), dtype=np.float64)
COVER = 0.25 * 196  # the documented rule: a quarter of the patch's pixels


@pytest.fixture(scope="module")
def clips():
    """(spec, frames, questions) for 40 clips of 4 frames and a few of 1 and 8."""
    specs = [S.sample_clip(seed, frames) for frames in (4, 1, 8) for seed in (SEEDS if frames == 4 else range(8))]
    return [(spec, S.render(spec), S.questions(spec)) for spec in specs]


def _patch(frame: np.ndarray, index: int) -> np.ndarray:
    r, c = divmod(index, S.GRID)
    return frame[r * S.PATCH : (r + 1) * S.PATCH, c * S.PATCH : (c + 1) * S.PATCH].reshape(-1, 3)


def _pixels_of(frame: np.ndarray, rgb) -> np.ndarray:
    """(H, W) bool: pixels painted exactly `rgb`."""
    return (frame == np.asarray(rgb, dtype=np.uint8)).all(axis=-1)


def _object_of(spec: S.ClipSpec, q: S.Question) -> int:
    """The index of the one object a colour, shape, motion or "yes" question is about."""
    words = TEMPLATES[q.question_type].fullmatch(q.question).groups()
    match = {
        "colour": lambda o: o.shape == words[0],
        "shape": lambda o: o.colour == words[0],
        "motion": lambda o: (o.colour, o.shape) == words,
        "exists": lambda o: (o.colour, o.shape) == words,
    }[q.question_type]
    (index,) = [i for i, o in enumerate(spec.objects) if match(o)]
    return index


# ----------------------------------------------------------------------------- determinism and inputs


def test_same_seed_same_clip_pixels_questions_and_bytes():
    a, b = S.sample_clip(123, 4), S.sample_clip(123, 4)
    assert a == b
    frames = S.render(a)
    np.testing.assert_array_equal(frames, S.render(b))
    assert S.questions(a) == S.questions(b) and S.caption(a) == S.caption(b)
    assert S.encode_mp4(frames) == S.encode_mp4(S.render(b))
    assert S.sample_clip(124, 4) != a
    assert S.questions(a, seed=7) == S.questions(a, seed=7)


def test_bad_arguments_name_themselves():
    for call, name in [
        (lambda: S.sample_clip(0, frames=0), "frames"), (lambda: S.sample_clip(0, frames=9), "frames"),
        (lambda: S.sample_clip(-1), "seed"), (lambda: S.clip_seed("dev", 0), "split"),
        (lambda: S.clip_seed("train", -1), "index"), (lambda: S.object_patches(S.sample_clip(0), 99), "index"),
        (lambda: S.encode_mp4(np.zeros((2, 5, 6, 3), np.uint8)), "frames"),
    ]:
        with pytest.raises(ValueError, match=name):
            call()


# ----------------------------------------------------------------------------- the rules


def test_objects_follow_the_rules(clips):
    for spec, frames, _ in clips:
        objs = spec.objects
        assert S.MIN_OBJECTS <= len(objs) <= S.MAX_OBJECTS
        assert len({(o.shape, o.colour) for o in objs}) == len(objs)
        assert frames.shape == (spec.frames, S.SIZE, S.SIZE, 3) and frames.dtype == np.uint8
        for o in objs:
            assert o.shape in S.SHAPES and o.colour in S.COLOURS and o.direction in S.DIRECTIONS
            assert S.MIN_SIZE <= o.size <= S.MAX_SIZE
            assert np.abs(np.subtract(o.rgb, S.COLOURS[o.colour])).max() <= S.JITTER
            if o.direction == "still":
                assert o.speed == 0
            else:
                assert S.MIN_SPEED <= o.speed <= S.MAX_SPEED and spec.frames > 1
            for t in range(spec.frames):
                x, y = o.position(t)
                assert 0 <= x and x + o.size <= S.SIZE and 0 <= y and y + o.size <= S.SIZE
                # painted where its mask says, in exactly its colour (nothing drawn over it)
                box = _pixels_of(frames[t], o.rgb)[y : y + o.size, x : x + o.size]
                assert (box | ~S.shape_mask(o.shape, o.size)).all()


def test_objects_never_overlap_even_between_frames(clips):
    for spec, _, _ in clips:
        # boxes at 1/8 px steps of time: a crossing between frames would show here
        times = np.linspace(0, spec.frames - 1, 8 * S.MAX_SPEED * (spec.frames - 1) + 1)
        boxes = []
        for o in spec.objects:
            vx, vy = S._STEP[o.direction]
            x, y = o.x + vx * o.speed * times, o.y + vy * o.speed * times
            boxes.append((x, y, o.size))
        for i in range(len(boxes)):
            for j in range(i):
                (xi, yi, si), (xj, yj, sj) = boxes[i], boxes[j]
                overlap = (xi < xj + sj) & (xj < xi + si) & (yi < yj + sj) & (yj < yi + si)
                assert not overlap.any(), (spec.seed, i, j)


def test_collision_between_frames_is_caught():
    # frames 0 and 1 are apart, but at t = 0.6 the boxes overlap (the right mover cuts the down mover's corner)
    a = S.ShapeObject("square", "red", (220, 40, 40), 28, 0, 100, "right", 24)
    b = S.ShapeObject("square", "blue", (40, 80, 220), 28, 40, 110, "down", 24)
    assert S._collide(a, b, 2)
    assert S._collide(a, replace(b, y=115), 2)
    assert not S._collide(a, replace(b, y=116), 2)  # b leaves a's rows at t = 0.5, as a reaches its column
    assert not S._collide(a, replace(b, x=60), 2) and not S._collide(a, b, 1)
    still = replace(a, direction="still", speed=0)
    arriving = S.ShapeObject("star", "blue", (40, 80, 220), 28, 52, 100, "left", 24)  # touches `still` at t = 1
    assert not S._collide(still, arriving, 2) and S._collide(still, arriving, 3)
    touching = S.ShapeObject("square", "blue", (40, 80, 220), 28, 28, 100, "still", 0)
    assert not S._collide(replace(a, direction="still", speed=0), touching, 4)
    assert S._collide(replace(a, direction="still", speed=0), replace(touching, x=27), 1)


def test_object_colours_are_far_from_the_background(clips):
    for spec, _, _ in clips:
        pixels = S.render(replace(spec, objects=())).reshape(-1, 3).astype(np.int64)
        codes = np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2])  # each colour it takes, once
        background = np.stack([codes >> 16, codes >> 8 & 255, codes & 255], axis=1).astype(np.float64)
        for o in spec.objects:
            assert o.colour in S.allowed_colours(spec.background)
            distance = np.linalg.norm(background - np.asarray(o.rgb, dtype=np.float64), axis=1).min()
            assert distance >= 99, (spec.seed, o, distance)


def test_backgrounds_of_every_kind_and_panning_moves_them():
    specs = [S.sample_clip(seed) for seed in range(60)]
    assert {s.background.kind for s in specs} == {"solid", "gradient", "noise"}
    panned = next(s for s in specs if s.background.pan != (0, 0) and s.background.kind == "noise")
    frames = S.render(replace(panned, objects=()))
    dx, dy = panned.background.pan
    # frame 1 is frame 0 moved by (dx, dy)
    crop0 = frames[0, max(-dy, 0) : S.SIZE - max(dy, 0), max(-dx, 0) : S.SIZE - max(dx, 0)]
    crop1 = frames[1, max(dy, 0) : S.SIZE - max(-dy, 0), max(dx, 0) : S.SIZE - max(-dx, 0)]
    np.testing.assert_array_equal(crop0, crop1)
    assert not np.array_equal(frames[0], frames[1])


def test_splits_are_disjoint():
    seeds = {split: {S.clip_seed(split, i) for i in range(1000)} for split in S.SPLITS}
    assert not seeds["train"] & seeds["validation"] and not seeds["train"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    assert S.clip_seed("train", S.SPLIT_STRIDE - 1) < S.clip_seed("validation", 0)


# ----------------------------------------------------------------------------- labels against pixels


def test_every_object_covers_a_patch_wherever_it_is():
    for shape in S.SHAPES:
        for size in range(S.MIN_SIZE, S.MAX_SIZE + 1):
            for dx in range(S.PATCH):
                for dy in range(S.PATCH):
                    obj = S.ShapeObject(shape, "red", (220, 40, 40), size, S.PATCH + dx, S.PATCH + dy, "still", 0)
                    assert S._patches_at(obj, 0), (shape, size, dx, dy)


def test_listed_patches_hold_the_objects_colour(clips):
    for spec, frames, qs in clips:
        for q in qs:
            if q.question_type == "count" or q.answer == "no":
                continue
            o = spec.objects[_object_of(spec, q)]
            listed = {}
            for t, index in q.object_patches:
                listed.setdefault(t, []).append(index)
            assert sorted(listed) == list(range(spec.frames))
            for t, indices in listed.items():
                mine = _pixels_of(frames[t], o.rgb)
                counts = mine.reshape(S.GRID, S.PATCH, S.GRID, S.PATCH).sum(axis=(1, 3)).reshape(-1)
                assert indices == np.flatnonzero(counts >= COVER).tolist()  # exactly those it fills a quarter of


def test_answers_agree_with_pixels(clips):
    for spec, frames, qs in clips:
        for q in qs:
            if q.question_type == "count":
                shape = TEMPLATES["count"].fullmatch(q.question).group(1)
                ofs = [i for i, o in enumerate(spec.objects) if o.shape == shape]
                assert q.answer == str(len(ofs))
                expected = {(t, p) for i in ofs for t, ps in enumerate(S.object_patches(spec, i)) for p in ps}
                assert set(q.object_patches) == expected
                continue
            if q.answer == "no":
                colour, shape = TEMPLATES["exists"].fullmatch(q.question).groups()
                assert (shape, colour) not in {(o.shape, o.colour) for o in spec.objects}
                assert q.object_patches == ()
                continue
            o = spec.objects[_object_of(spec, q)]
            ys, xs = np.nonzero(_pixels_of(frames[0], o.rgb))
            if q.question_type == "colour":  # the painted colour is nearest the answer's nominal colour
                painted = frames[0, ys[0], xs[0]].astype(np.float64)
                nearest = list(S.COLOURS)[int(np.linalg.norm(NOMINAL - painted, axis=1).argmin())]
                assert q.answer == nearest
            elif q.question_type == "shape":
                height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
                fill = len(ys) / (height * width)
                bottom = (ys == ys.max()).sum() / width  # triangles stand on their base, stars on two points
                kind = ("square" if fill == 1 else "circle" if fill > 0.7 else
                        "triangle" if bottom > 0.8 else "star")
                assert q.answer == kind, (spec.seed, q, fill, bottom)
            elif q.question_type == "motion":
                centres = [np.argwhere(_pixels_of(frames[t], o.rgb)).mean(axis=0) for t in range(spec.frames)]
                step = np.diff(np.asarray(centres), axis=0)  # (T-1, 2) as (dy, dx)
                vx, vy = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[q.answer]
                np.testing.assert_allclose(step, np.tile([vy * o.speed, vx * o.speed], (spec.frames - 1, 1)))
                rows_cols = [np.mean([divmod(p, S.GRID) for t2, p in q.object_patches if t2 == t], axis=0)
                             for t in range(spec.frames)]
                moved = rows_cols[-1] - rows_cols[0]  # the listed patches move the stated way too
                if q.answer == "still":
                    assert (moved == 0).all()
                else:
                    along = moved[1] * vx + moved[0] * vy
                    across = moved[0] * vx + moved[1] * vy
                    assert along > 0 and abs(along - o.speed * (spec.frames - 1) / S.PATCH) <= 1
                    assert abs(across) <= 0.5
            else:
                assert q.answer == "yes"


def test_templates_types_and_balance(clips):
    qs = [q for spec, _, questions in clips for q in questions]
    for spec, _, questions in clips:
        per_clip = Counter(q.question_type for q in questions)
        assert all(per_clip[t] <= S.PER_TYPE[t] for t in per_clip)
        assert per_clip["exists"] == 2 and per_clip["count"] == 2
        assert per_clip["motion"] == (0 if spec.frames == 1 else 2)
    for q in qs:
        assert TEMPLATES[q.question_type].fullmatch(q.question), q
        assert q.answer == q.answer.lower() and q.answer.isalnum()
    types = Counter(q.question_type for q in qs)
    assert set(types) == set(S.QUESTION_TYPES)
    assert max(types.values()) <= 2 * min(types.values())  # no type dominates
    answers = {t: Counter(q.answer for q in qs if q.question_type == t) for t in S.QUESTION_TYPES}
    assert answers["exists"]["yes"] == answers["exists"]["no"]
    assert set(answers["motion"]) == set(S.DIRECTIONS)
    assert set(answers["shape"]) == set(S.SHAPES)
    assert {"0", "1", "2"} <= set(answers["count"])
    assert len(answers["colour"]) >= 6
    for q in qs:
        assert q.answer in {"yes", "no"} | set(S.COLOURS) | set(S.SHAPES) | set(S.DIRECTIONS) | set("0123456")


def test_one_and_eight_frames(clips):
    one = [(s, f, q) for s, f, q in clips if s.frames == 1]
    eight = [(s, f, q) for s, f, q in clips if s.frames == 8]
    assert one and eight
    for spec, frames, qs in one:
        assert frames.shape == (1, S.SIZE, S.SIZE, 3)
        assert all(o.direction == "still" for o in spec.objects)
        assert all(q.question_type != "motion" for q in qs)
        assert all(len(p) == 1 for p in (S.object_patches(spec, i) for i in range(len(spec.objects))))
    assert any(o.direction != "still" for spec, _, _ in eight for o in spec.objects)
    for spec, frames, _ in eight:
        assert frames.shape == (8, S.SIZE, S.SIZE, 3)


def test_caption_lists_every_object_left_to_right():
    for seed in range(10):
        spec = S.sample_clip(seed)
        parts = S.caption(spec).split(", ")
        ordered = sorted(spec.objects, key=lambda o: (o.x, o.y))
        assert len(parts) == len(spec.objects)
        for part, o in zip(parts, ordered):
            motion = "staying still" if o.direction == "still" else f"moving {o.direction}"
            assert part == f"a {o.colour} {o.shape} {motion}"
        vocabulary = {"a", "moving", "staying", *S.SHAPES, *S.COLOURS, *S.DIRECTIONS}
        assert set(S.caption(spec).replace(",", "").split()) <= vocabulary


# ----------------------------------------------------------------------------- files


def test_mp4_decodes_to_the_rendered_frames():
    av = pytest.importorskip("av")
    for frames_count in (1, 4, 8):
        frames = S.render(S.sample_clip(5, frames_count))
        with av.open(io.BytesIO(S.encode_mp4(frames))) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.frames == frames_count
            assert stream.average_rate == 4 or frames_count == 1  # 4 fps, one frame a tick
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        assert decoded.shape == frames.shape
        diff = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
        assert diff.mean() < 3, diff.mean()  # yuv420p halves chroma resolution: edges blur a little


def test_the_pipeline_decodes_every_frame():
    from pipeline.decode import Sampling, decode_bytes

    frames = S.render(S.sample_clip(6, 4))
    decoded, meta = decode_bytes(S.encode_mp4(frames), Sampling(frames=4, size=S.SIZE))
    assert meta["num_frames"] == 4 and meta["frame_indices"].tolist() == [0, 1, 2, 3]
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean() < 3


def test_write_split_is_read_by_the_pipeline(tmp_path):
    from pipeline.questions import questions_table, read_questions_file
    from pipeline.storage import normalize_uri

    path = S.write_split(tmp_path, "validation", 3, frames=2)
    folder = tmp_path / "validation"
    assert path == folder / "questions.jsonl"
    clips = sorted(folder.glob("*.mp4"))
    assert [c.name for c in clips] == ["clip_00000.mp4", "clip_00001.mp4", "clip_00002.mp4"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(set(r) == {"video_uri", "question", "answer", "question_type", "object_patches"} for r in rows)
    spec = S.sample_clip(S.clip_seed("validation", 1), 2)
    mine = [r for r in rows if r["video_uri"] == "clip_00001.mp4"]
    assert [(r["question"], r["answer"]) for r in mine] == [(q.question, q.answer) for q in S.questions(spec)]
    assert mine[0]["object_patches"] == [list(p) for p in S.questions(spec)[0].object_patches]
    assert (folder / "clip_00001.mp4").read_bytes() == S.encode_mp4(S.render(spec))

    table = read_questions_file(str(path))
    assert table.num_rows == len(rows)
    asked = questions_table(table, str(folder)).to_pylist()  # the job's input.uri is the split folder
    assert {r["video_uri"] for r in asked} == {normalize_uri(str(c)) for c in clips}
    assert [r["question"] for r in asked if r["video_uri"] == normalize_uri(str(clips[1]))] == [r["question"] for r in mine]

