"""Cost of FlashVLM selection: batched against a per-image loop, and against the vision tower it prunes.

    python benchmarks/selection.py [--batch 64] [--frames 8] [--repeats 3] [--device cpu|cuda] [--profile]

1. Batched `select_tokens` at B images of LLaVA-1.5-7B size (N=576, Dv=1024, D=4096, budget 64) against
   `reference_select_tokens`, the straightforward rule one image at a time with the diversity products
   recomputed every round. Target: >= 10x.
2. Selection time for F frames as a fraction of one float32 forward of a real-size CLIP ViT-L/14-336
   vision tower (random weights, 24 layers, hidden 1024) on the same frames. Target: <= 2%.

Prints a table, then one JSON line with the keys `batched_vs_loop` and `selection_vs_vision_tower`.
With --profile, first the torch profiler's table of the batched call's operators (where its time goes).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from flashvlm import select_tokens
from flashvlm.reference import reference_select_tokens

N, DV, D, TEXT_TOKENS, BUDGET = 576, 1024, 4096, 20, 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call (seconds)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def features(batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(batch, N, DV, generator=g)  # (B, 576, 1024)
    projected = torch.randn(batch, N, D, generator=g)  # (B, 576, 4096)
    saliency = torch.rand(batch, N, generator=g)  # (B, 576)
    text = torch.randn(batch, TEXT_TOKENS, D, generator=g)  # (B, L, 4096)
    return [x.to(device) for x in (vision, projected, saliency, text)]


def clip_vit_l14_336(device: torch.device) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return CLIPVisionModel(config).eval().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images for batched vs loop")
    parser.add_argument("--frames", type=int, default=8, help="frames for the vision-tower comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", action="store_true", help="print the batched call's operator profile")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")

    # 1. batched against the per-image loop
    inputs = features(args.batch, device)
    batched = best_time(lambda: select_tokens(*inputs, BUDGET), device, args.repeats)
    if args.profile:
        with torch.profiler.profile() as profile:
            select_tokens(*inputs, BUDGET)
            sync(device)
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    loop = best_time(lambda: reference_select_tokens(*inputs, BUDGET), device, max(1, args.repeats - 1))
    agree = torch.equal(select_tokens(*[x.double() for x in inputs[:3]], None, BUDGET),
                        reference_select_tokens(*[x.double() for x in inputs[:3]], None, BUDGET))

    # 2. selection against the vision tower on the same frames
    frames = args.frames
    tower = clip_vit_l14_336(device)
    pixels = torch.randn(frames, 3, 336, 336, device=device)
    with torch.inference_mode():
        tower_time = best_time(lambda: tower(pixel_values=pixels), device, 1)
    frame_inputs = [x[:frames] for x in features(frames, device, seed=1)]
    selection_time = best_time(lambda: select_tokens(*frame_inputs, BUDGET), device, args.repeats)

    rows = [
        (f"select_tokens batched, B={args.batch}", batched * 1e3),
        (f"reference loop, B={args.batch}", loop * 1e3),
        (f"CLIP ViT-L/14-336 float32 forward, {frames} frames", tower_time * 1e3),
        (f"select_tokens, {frames} frames", selection_time * 1e3),
    ]
    print(f"\nN={N} Dv={DV} D={D} text={TEXT_TOKENS} budget={BUDGET}")
    for name, ms in rows:
        print(f"  {name:48s} {ms:10.1f} ms")
    result = {
        "device": str(device),
        "batched_ms": round(batched * 1e3, 1),
        "loop_ms": round(loop * 1e3, 1),
        "batched_vs_loop": round(loop / batched, 2),
        "float64_batched_equals_loop": agree,
        "vision_tower_ms": round(tower_time * 1e3, 1),
        "selection_ms": round(selection_time * 1e3, 2),
        "selection_vs_vision_tower": round(selection_time / tower_time, 4),
    }
    print(f"  batched vs loop: {result['batched_vs_loop']}x (target >= 10x)")
    print(f"  selection / vision tower: {100 * result['selection_vs_vision_tower']:.2f}% (target <= 2%)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
