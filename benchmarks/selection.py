"""Cost of FlashVLM selection: batched against a per-image loop, and against the vision tower it prunes.

    python benchmarks/selection.py [--batch 64] [--frames 8] [--repeats 3] [--device cpu|cuda] [--profile]

1. Batched `select_tokens` at B images of LLaVA-1.5-7B size (N=576, Dv=1024, D=4096, budget 64) against
   `reference_select_tokens`, the straightforward rule one image at a time with the diversity products
   recomputed every round. Target: >= 10x.
2. Selection time for F frames as a fraction of one float32 forward of a real-size CLIP ViT-L/14-336
   vision tower (random weights, 24 layers, hidden 1024) on the same frames. Target: <= 2%.

3. Readiness for a captured graph: `compiled_equals_eager` (`torch.compile(select_core, fullgraph=True)` at
   B=4 images of N=576 returns the eager indices), `graph_breaks` (torch._dynamo.explain of the same core),
   `ops_per_call` (ATen operations one eager `select_tokens` call of B images dispatches at budgets 16, 64
   and 192) and `ops_per_call_all_pairs` (the same with the accelerator's all_pairs partition, the one a
   graph captures). On CUDA also `compiled_ms`: the core compiled with mode="reduce-overhead" (CUDA graphs).

Prints a table, then one JSON line with the keys `batched_vs_loop`, `selection_vs_vision_tower` and those
of 3. With --profile, first the torch profiler's table of the batched call's operators (where its time goes).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from torch.utils._python_dispatch import TorchDispatchMode

from flashvlm import SelectionConfig, select_tokens
from flashvlm.reference import reference_select_tokens
from flashvlm.selection import select_core

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


class CountOps(TorchDispatchMode):
    """Counts the ATen operations dispatched inside it (each is at least one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_call(inputs, all_pairs: bool | None) -> dict[str, int]:
    """ATen operations of one eager call of the core (checks included) at budgets 16, 64 and 192."""
    out = {}
    for budget in (16, 64, 192):
        with CountOps() as counter:
            kept, _, finite = select_core(*inputs[:4], None, budget, SelectionConfig(), all_pairs)
            bool(finite)
        out[str(budget)] = counter.count
    return out


def compiled_figures(device: torch.device, repeats: int) -> dict[str, object]:
    """Graph breaks of the image core, whether its compiled indices equal eager ones (B=4, N=576, budget 64),
    and on CUDA the time of the core compiled with CUDA graphs (mode="reduce-overhead")."""
    inputs = features(4, device, seed=2)
    args = (*inputs, None, BUDGET, SelectionConfig(), True)
    explained = torch._dynamo.explain(select_core)(*args)
    mode = "reduce-overhead" if device.type == "cuda" else None
    compiled = torch.compile(select_core, fullgraph=True, dynamic=False, mode=mode)
    start = time.perf_counter()
    kept, important, _ = compiled(*args)
    sync(device)
    compile_s = time.perf_counter() - start
    eager = select_tokens(*inputs, BUDGET, return_important=True)
    out = {
        "graph_breaks": explained.graph_break_count,
        "compiled_equals_eager": bool(torch.equal(kept, eager[0]) and torch.equal(important, eager[1])),
        "compile_s": round(compile_s, 1),
    }
    if device.type == "cuda":
        for batch in (1, 64):
            x = features(batch, device, seed=3)
            compiled(*x, None, BUDGET, SelectionConfig(), True)  # capture this shape
            out[f"compiled_ms_b{batch}"] = round(best_time(lambda: compiled(*x, None, BUDGET, SelectionConfig(), True), device, repeats) * 1e3, 3)
            out[f"eager_ms_b{batch}"] = round(best_time(lambda: select_tokens(*x, BUDGET), device, repeats) * 1e3, 3)
    return out


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

    # 3. readiness for a captured graph
    counted = features(4, device, seed=4)
    graph = compiled_figures(device, args.repeats)

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
        "compiled_equals_eager": graph.pop("compiled_equals_eager"),
        "graph_breaks": graph.pop("graph_breaks"),
        "ops_per_call": ops_per_call(counted, None),
        "ops_per_call_all_pairs": ops_per_call(counted, True),
        **graph,
    }
    print(f"  batched vs loop: {result['batched_vs_loop']}x (target >= 10x)")
    print(f"  selection / vision tower: {100 * result['selection_vs_vision_tower']:.2f}% (target <= 2%)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
