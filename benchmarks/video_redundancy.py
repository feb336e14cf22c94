"""Visual redundancy of the clip rule against the image rule run frame by frame, on real clips.

    python benchmarks/video_redundancy.py [--videos ../shared/videos] [--frames 8] [--per-frame 64]

Features are model-free: every sampled frame (8 uniform frames, resized to 336x336 at decode) is cut
into 14x14 RGB patches (24 x 24 = 576 tokens a frame, LLaVA-1.5's grid), each patch normalised per
channel with CLIP's pixel mean and std, flattened (588 values) and L2-normalised. Two patches with cosine
> 0.95 look the same, so this measures redundancy in the pixels themselves. The same features serve as
`vision` and as `projected`.

- saliency: patch contrast, the standard deviation of the patch's normalised pixel values: flat sky and
  walls score low, edges and texture high, roughly what [CLS] attention favours.
- guide text, two settings: `none` (rank by saliency alone) and `centre`, a patch-derived query: the 2x2
  centre patches of the middle frame as 4 "text tokens" (a question about what is in the middle of the
  picture), so that relevance follows whatever looks like that across the clip.

For every clip, text setting and split, with the same budget (`--per-frame` x frames for the clip):
- dup: share of kept tokens that have a near-duplicate (cosine > 0.95) kept in ANOTHER frame;
- coverage: mean over all T*N tokens of the best cosine to any kept token.
The baseline is `select_tokens` applied to every frame with `--per-frame` tokens each.

Prints a table, then one JSON line with `duplicates_ratio` (video dup / frame-by-frame dup, worst row)
and `coverage_delta` (video coverage - frame-by-frame coverage, worst row) for the default split, and
the same for every split under `splits`. Targets: duplicates_ratio <= 0.5, coverage_delta >= 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

from flashvlm import select_tokens
from flashvlm.video import SPLITS, select_video_tokens

SIZE, PATCH = 336, 14
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])
DUPLICATE = 0.95
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


def metrics(features: torch.Tensor, kept: torch.Tensor) -> tuple[float, float]:
    """features (T, N, D) unit rows, kept (K,) flat indices -> (duplicate share, coverage)."""
    T, N, D = features.shape
    flat = features.reshape(T * N, D)
    chosen = flat[kept]  # (K, D)
    frame = kept // N
    sim = chosen @ chosen.T  # (K, K)
    other_frame = frame[:, None] != frame[None, :]
    dup = ((sim > DUPLICATE) & other_frame).any(dim=1).float().mean().item()
    coverage = (flat @ chosen.T).amax(dim=1).mean().item()
    return dup, coverage


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
        print(f"SKIP: sample clips not found at {videos} (see ../shared/videos/README.md)")
        print(json.dumps({"skipped": f"no clips at {videos}"}))
        return

    clips = sorted(p for p in videos.iterdir() if p.suffix.lower() in {".mp4", ".webm", ".mkv", ".mov", ".avi"})
    T, k = args.frames, args.per_frame
    budget = T * k
    splits_worst = {s: {"duplicates_ratio": 0.0, "coverage_delta": float("inf")} for s in SPLITS}
    ratios, deltas = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}  # every row, for the means
    header = f"{'clip':28} {'text':6} {'rule':10} {'dup':>6} {'coverage':>8} {'dup/base':>8} {'cov-base':>8} {'ms':>7}"
    lines = [header, "-" * len(header)]
    with mp.get_context("fork").Pool(1) as pool:
        for path in clips:
            frames, error = decode(pool, path, T)
            if frames is None:
                print(f"skip {path.name}: does not decode ({error})")
                continue
            features, saliency = patch_features(frames)  # (T, N, 588), (T, N)
            for text_name in ("none", "centre"):
                text = None if text_name == "none" else centre_query(features)
                start = time.perf_counter()
                base = select_tokens(features, features, saliency, None if text is None else text.expand(T, -1, -1), k)
                base_ms = 1e3 * (time.perf_counter() - start)
                base = (base + torch.arange(T)[:, None] * features.shape[1]).reshape(-1)  # flat frame-major
                base_dup, base_cov = metrics(features, base)
                lines.append(f"{path.name[:28]:28} {text_name:6} {'frames':10} {base_dup:6.3f} {base_cov:8.4f} {'':>8} {'':>8} {base_ms:7.0f}")
                for split in SPLITS:
                    start = time.perf_counter()
                    kept = select_video_tokens(
                        features[None], features[None], saliency[None], None if text is None else text[None], budget, split=split
                    )[0]
                    ms = 1e3 * (time.perf_counter() - start)
                    dup, cov = metrics(features, kept)
                    ratio = dup / base_dup if base_dup > 0 else (0.0 if dup == 0 else float("inf"))
                    delta = cov - base_cov
                    w = splits_worst[split]
                    w["duplicates_ratio"] = max(w["duplicates_ratio"], ratio)
                    w["coverage_delta"] = min(w["coverage_delta"], delta)
                    ratios[split].append(ratio)
                    deltas[split].append(delta)
                    lines.append(f"{'':28} {'':6} {split:10} {dup:6.3f} {cov:8.4f} {ratio:8.3f} {delta:+8.4f} {ms:7.0f}")
    print(f"{T} frames at {SIZE}px, {k} tokens a frame (clip budget {budget}); dup = share of kept tokens "
          f"with a cosine > {DUPLICATE} twin kept in another frame; coverage = mean best cosine to a kept token")
    print("\n".join(lines))
    default = select_video_tokens.__kwdefaults__["split"]
    result = {
        "split": default,
        **{key: round(v, 4) for key, v in splits_worst[default].items()},
        "splits": {
            s: {
                **{key: round(v, 4) for key, v in w.items()},
                "mean_duplicates_ratio": round(sum(ratios[s]) / max(len(ratios[s]), 1), 4),
                "mean_coverage_delta": round(sum(deltas[s]) / max(len(deltas[s]), 1), 4),
            }
            for s, w in splits_worst.items()
        },
        "targets_met": splits_worst[default]["duplicates_ratio"] <= 0.5 and splits_worst[default]["coverage_delta"] >= 0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
