"""Cross-frame redundancy of the clip rule against the image rule run frame by frame, on real clips.

    python benchmarks/video_redundancy.py [--videos ../shared/videos] [--frames 8] [--per-frame 64]

Features are model-free: every sampled frame (8 uniform frames, resized to 336x336 at decode) is cut
into 14x14 RGB patches (24 x 24 = 576 tokens a frame, LLaVA-1.5's grid), each patch normalised per
channel with CLIP's pixel mean and std, flattened (588 values) and L2-normalised. Two patches with cosine
>= 0.95 look the same, so this measures redundancy in the pixels themselves. The same features serve as
`vision` and as `projected`.

- saliency: patch contrast, the standard deviation of the patch's normalised pixel values: flat sky and
  walls score low, edges and texture high, roughly what [CLS] attention favours.
- guide text, two settings: `none` (rank by saliency alone) and `centre`, a patch-derived query: the 2x2
  centre patches of the middle frame as 4 "text tokens" (a question about what is in the middle of the
  picture), so that relevance follows whatever looks like that across the clip.

For every clip, text setting and split, with the same budget (`--per-frame` x frames for the clip), against
`select_tokens` applied to every frame with `--per-frame` tokens each:
- bg dup: share of kept background (not important) tokens with a kept background token of ANOTHER frame
  at cosine >= 0.95. Question-relevant (important) tokens are not counted: a moving object kept in every
  frame is the rule, not waste.
- coverage: mean over all T*N tokens of the best cosine to any kept token.
And on planted clips (each real clip with a textured object of h x w patches pasted on the patch grid,
moving `speed` patches a frame; guide text: the object's patches): the share of the object's patches, over
all frames, that are kept or unchanged since the same place of the previous frame where they are kept.

Prints a table, then one JSON line for the default split, with the same figures for every split under
`splits`:
- `background_duplicates_ratio`: video bg dup / frame-by-frame bg dup, worst row; rows where the
  frame-by-frame share is under 1% are listed under `not_counted` instead. Target <= 0.5.
- `coverage_delta`: video coverage - frame-by-frame coverage, worst row. Target >= -0.001 (a nearly blank
  clip such as transparent.webm may lose a few faint patches). `mean_coverage_delta` over rows: target >= 0.
- `object_kept_share`: over every planted clip. Target 1.0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from flashvlm import select_tokens
from flashvlm.video import NEAR_IDENTICAL, SPLITS, covered, select_video_tokens, static_tokens

SIZE, PATCH = 336, 14
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])
DEFAULT_VIDEOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "videos"


# --------------------------------------------------------------------------------------------------
# Decoding: decord in a child process, with a timeout (decord can hang on some files)
# --------------------------------------------------------------------------------------------------


def _decode(path: str, frames: int):
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), width=SIZE, height=SIZE)
    n = len(reader)
    if n < 1:
        raise ValueError("no frames")
    index = torch.linspace(0, n - 1, frames).round().long().tolist()  # uniform, repeats if n < frames
    return reader.get_batch(index).asnumpy()  # (T, 336, 336, 3) uint8


def decode(pool, path: Path, frames: int, timeout: float = 30.0):
    """(T, 336, 336, 3) uint8 tensor, or the reason it could not be decoded."""
    try:
        return torch.from_numpy(pool.apply_async(_decode, (str(path), frames)).get(timeout)), None
    except mp.TimeoutError:
        return None, f"decoder timed out after {timeout:.0f} s"
    except Exception as e:  # decord raises its own error types; all mean "skip this clip"
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"


# --------------------------------------------------------------------------------------------------
# Features, metrics
# --------------------------------------------------------------------------------------------------


def patch_features(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frames (T, 336, 336, 3) uint8 -> features (T, 576, 588) unit rows, saliency (T, 576) contrast."""
    T = frames.shape[0]
    x = (frames.float() / 255 - CLIP_MEAN) / CLIP_STD  # (T, H, W, 3)
    g = SIZE // PATCH
    x = x.view(T, g, PATCH, g, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(T, g * g, PATCH * PATCH * 3)
    saliency = x.std(dim=-1)  # (T, 576) contrast inside the patch
    return torch.nn.functional.normalize(x, dim=-1), saliency


def centre_query(features: torch.Tensor) -> torch.Tensor:
    """(T, N, D) -> (4, D): the 2x2 centre patches of the middle frame."""
    T, N, _ = features.shape
    g = int(N**0.5)
    c = g // 2
    rows = [(c - 1) * g + c - 1, (c - 1) * g + c, c * g + c - 1, c * g + c]
    return features[T // 2, rows]


def background_duplicates(features: torch.Tensor, kept: torch.Tensor, important: torch.Tensor) -> float:
    """Share of kept background tokens with a near-identical kept background token of another frame.

    features (T, N, D) unit rows; kept (K,) flat indices; important (K,) bool flags.
    """
    T, N, D = features.shape
    background = kept[~important]  # (Kb,)
    if background.numel() == 0:
        return 0.0
    chosen = features.reshape(T * N, D)[background]
    frame = background // N
    near = (chosen @ chosen.T >= NEAR_IDENTICAL) & (frame[:, None] != frame[None, :])  # (Kb, Kb)
    return near.any(dim=1).float().mean().item()


def coverage(features: torch.Tensor, kept: torch.Tensor) -> float:
    """Mean over all tokens of the best cosine to a kept token. features (T, N, D) unit rows, kept (K,)."""
    flat = features.reshape(-1, features.shape[-1])
    return (flat @ flat[kept].T).amax(dim=1).mean().item()


# (rows, columns, speed) of the planted objects, in patches and patches a frame
PLANTED = [(2, 4, 3), (2, 4, 1), (1, 1, 2), (3, 3, 4)]


def plant(frames: torch.Tensor, h: int, w: int, speed: int, seed: int) -> tuple[torch.Tensor, list[list[int]]]:
    """Paste a textured h x w-patch object on the patch grid of every frame, `speed` patches further right each
    frame (wrapping at the edge). Returns the new frames and, per frame, the object's patch places."""
    g = torch.Generator().manual_seed(seed)
    grid = SIZE // PATCH
    # Every patch 2x2 cells of 7x7 pixels, each channel 255 in two random cells and 0 in the other two: 216
    # possible patches, all with about the highest contrast a patch can have, so that no patch of the object
    # is ever its frame's least salient token. Such a token is ranked last by the log fusion whatever its
    # relevance, so it is background, kept once across the clip (measured: on bitmap.mp4, whose frames are
    # high-contrast everywhere, random colour cells lost 5 of 64 patches this way, which the frame-by-frame
    # rule keeps by its per-frame diversity). That is the image rule's ranking, not the video rule's skip.
    halves = torch.tensor([255, 255, 0, 0], dtype=torch.uint8)
    cells = halves[torch.rand(h, w, 3, 4, generator=g).argsort(dim=-1)]  # (h, w, 3, 4): a shuffle per channel
    cells = cells.view(h, w, 3, 2, 2).permute(0, 3, 1, 4, 2).reshape(2 * h, 2 * w, 3)
    look = cells.repeat_interleave(PATCH // 2, 0).repeat_interleave(PATCH // 2, 1)  # (h*14, w*14, 3)
    row = int(torch.randint(0, grid - h + 1, (1,), generator=g))
    col = int(torch.randint(0, grid, (1,), generator=g))
    frames, places = frames.clone(), []
    for t in range(frames.shape[0]):
        where = []
        for j in range(w):
            c = (col + speed * t + j) % grid
            frames[t, row * PATCH : (row + h) * PATCH, c * PATCH : (c + 1) * PATCH] = look[:, j * PATCH : (j + 1) * PATCH]
            where += [(row + i) * grid + c for i in range(h)]
        places.append(where)
    return frames, places


def object_kept(features: torch.Tensor, kept: torch.Tensor, places: list[list[int]]) -> tuple[int, int]:
    """(object patches kept or covered at their place, object patches) over all frames."""
    T, N, _ = features.shape
    mask = torch.zeros(1, T, N, dtype=torch.bool)
    mask.view(-1)[kept] = True
    ok = covered(mask, static_tokens(features.reshape(1, T * N, -1), N))[0]  # (T, N)
    return sum(int(ok[t, where].sum()) for t, where in enumerate(places)), sum(len(w) for w in places)


def planted(frames: torch.Tensor, h: int, w: int, speed: int, seed: int, k: int) -> dict[str, tuple[int, int]]:
    """A moving object planted in a clip, the guide text its own patches in frame 0: for the frame-by-frame
    rule and each split, (object patches kept or covered, object patches), with k tokens a frame."""
    moved, places = plant(frames, h, w, speed, seed)
    features, saliency = patch_features(moved)  # (T, N, 588), (T, N)
    T, N, _ = features.shape
    text = features[0, places[0]][None]  # (1, h*w, 588)
    base = select_tokens(features, features, saliency, text.expand(T, -1, -1), k)  # (T, k)
    out = {"frames": object_kept(features, (base + torch.arange(T)[:, None] * N).reshape(-1), places)}
    for split in SPLITS:
        kept = select_video_tokens(features[None], features[None], saliency[None], text, T * k, split=split)[0]
        out[split] = object_kept(features, kept, places)
    return out


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--per-frame", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = args.videos.resolve()
    if not videos.is_dir():
        print(f"SKIP: sample clips not found at {videos} (the sample clips live beside the checkout)")
        print(json.dumps({"skipped": f"no clips at {videos}"}))
        return

    clips = sorted(p for p in videos.iterdir() if p.suffix.lower() in {".mp4", ".webm", ".mkv", ".mov", ".avi"})
    T, k = args.frames, args.per_frame
    budget = T * k
    ratios = {s: [] for s in SPLITS}  # (row, ratio) of every counted row
    deltas = {s: [] for s in SPLITS}  # (row, coverage delta) of every row
    objects = {s: [0, 0] for s in ("frames", *SPLITS)}  # object patches kept or covered, object patches
    not_counted = []  # rows whose frame-by-frame background duplicate share is under 1%
    header = f"{'clip':28} {'text':6} {'rule':10} {'bg dup':>6} {'coverage':>8} {'dup/base':>8} {'cov-base':>8} {'ms':>7}"
    lines = [header, "-" * len(header)]
    planted_lines = []
    with mp.get_context("fork").Pool(1) as pool:
        for i, path in enumerate(clips):
            frames, error = decode(pool, path, T)
            if frames is None:
                print(f"skip {path.name}: does not decode ({error})")
                continue
            features, saliency = patch_features(frames)  # (T, N, 588), (T, N)
            for text_name in ("none", "centre"):
                row = f"{path.stem}/{text_name}"
                text = None if text_name == "none" else centre_query(features)
                start = time.perf_counter()
                base, flags = select_tokens(
                    features, features, saliency, None if text is None else text.expand(T, -1, -1), k, return_important=True
                )
                base_ms = 1e3 * (time.perf_counter() - start)
                base = (base + torch.arange(T)[:, None] * features.shape[1]).reshape(-1)  # flat frame-major
                base_dup, base_cov = background_duplicates(features, base, flags.reshape(-1)), coverage(features, base)
                if base_dup < 0.01:
                    not_counted.append(row)
                lines.append(f"{path.name[:28]:28} {text_name:6} {'frames':10} {base_dup:6.3f} {base_cov:8.4f} {'':>8} {'':>8} {base_ms:7.0f}")
                for split in SPLITS:
                    start = time.perf_counter()
                    kept, important = select_video_tokens(
                        features[None], features[None], saliency[None], None if text is None else text[None], budget,
                        split=split, return_important=True,
                    )
                    ms = 1e3 * (time.perf_counter() - start)
                    dup, cov = background_duplicates(features, kept[0], important[0]), coverage(features, kept[0])
                    ratio = dup / base_dup if base_dup > 0 else (0.0 if dup == 0 else float("inf"))
                    if base_dup >= 0.01:
                        ratios[split].append((row, ratio))
                    deltas[split].append((row, cov - base_cov))
                    shown = f"{ratio:8.3f}" if base_dup >= 0.01 else f"{'(' + format(ratio, '.2f') + ')':>8}"
                    lines.append(f"{'':28} {'':6} {split:10} {dup:6.3f} {cov:8.4f} {shown} {cov - base_cov:+8.4f} {ms:7.0f}")
            h, w, speed = PLANTED[i % len(PLANTED)]
            for rule, (got, total) in planted(frames, h, w, speed, i, k).items():
                objects[rule][0] += got
                objects[rule][1] += total
                planted_lines.append(f"{path.name[:28]:28} {h}x{w} +{speed}/frame {rule:10} {got}/{total}")

    print(f"{T} frames at {SIZE}px, {k} tokens a frame (clip budget {budget}); bg dup = share of kept background "
          f"tokens with a cosine >= {NEAR_IDENTICAL} twin kept as background in another frame, in parentheses when "
          f"the frame-by-frame share is under 1% (not counted); coverage = mean best cosine to a kept token")
    print("\n".join(lines))
    print("planted moving objects: object patches kept or unchanged since a kept one at their place")
    print("\n".join(planted_lines))

    def worst(pairs, pick):
        return round(pick(v for _, v in pairs), 4) if pairs else None

    def figures(s: str) -> dict:
        got, total = objects[s]
        return {
            "background_duplicates_ratio": worst(ratios[s], max),
            "worst_duplicates_row": max(ratios[s], key=lambda p: p[1])[0] if ratios[s] else None,
            "mean_background_duplicates_ratio": round(sum(v for _, v in ratios[s]) / max(len(ratios[s]), 1), 4),
            "coverage_delta": worst(deltas[s], min),
            "worst_coverage_row": min(deltas[s], key=lambda p: p[1])[0] if deltas[s] else None,
            "mean_coverage_delta": round(sum(v for _, v in deltas[s]) / max(len(deltas[s]), 1), 4),
            "object_kept_share": round(got / total, 4) if total else None,
        }

    default = select_video_tokens.__kwdefaults__["split"]
    splits = {s: figures(s) for s in SPLITS}
    met = {
        s: {
            "background_duplicates_ratio": f["background_duplicates_ratio"] is not None and f["background_duplicates_ratio"] <= 0.5,
            "coverage_delta": f["coverage_delta"] is not None and f["coverage_delta"] >= -0.001,
            "mean_coverage_delta": f["mean_coverage_delta"] >= 0,
            "object_kept_share": f["object_kept_share"] == 1.0,
        }
        for s, f in splits.items()
    }
    for s in SPLITS:
        splits[s]["targets_met"] = met[s]
    got, total = objects["frames"]
    result = {"split": default, **{key: v for key, v in splits[default].items() if key != "targets_met"},
              "targets_met": all(met[default].values()), "not_counted": not_counted, "splits": splits,
              "frame_by_frame_object_kept_share": round(got / total, 4) if total else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
