"""Prefill time of a real-size VLM decoder: all visual tokens against FlashVLM's kept ones.

    python benchmarks/prefill.py [--model llava-1.5-7b] [--layers 2] [--repeats 3] [--device cpu|cuda] [--dtype D] [--threads T]

For each model shape (a function below per model; `--model` picks one) the decoder is built at its real
width with random weights and a slice of `--layers` layers (float32 on CPU, bfloat16 on CUDA by default,
`--dtype` to choose; on CPU a 2-layer slice keeps the run short, and prefill time grows linearly with
layers, so the ratios hold for the full depth). One prompt holds one image's visual tokens plus a realistic ~40 text tokens. Timed:

- full: prefill of the prompt with all N visual tokens;
- pruned K: `select_tokens` on that image's real-size features (vision Dv, projected D, saliency, the
  question's embeddings) + gathering the kept rows + prefill of the prompt with K visual tokens.

On CPU the decoder's linear layers run with their weights prepacked once for oneDNN
(`torch.utils.mkldnn.to_mkldnn`, `--weights prepacked`, the default), as a CPU inference server would
(IPEX, inductor's freezing): plain `nn.Linear` re-lays out every weight matrix on every call, a fixed cost
per layer that does not shrink with the prompt and so hides part of what pruning saves. Outputs match plain
`nn.Linear` to float32 rounding. `--weights plain` measures the unprepacked model.

Prefill is the decoder stack's forward (layers and final norm) with a fresh KV cache, as in the first
step of `generate`. The LM head is left out: it runs on the last position only, a constant that is well under
1% of the full 32-layer model's prefill but that a 2-layer slice would weigh 16 times more. The selection's
cost is NOT scaled that way: against a 2-layer slice it weighs 16 times more than against the full model,
so the speedups here are conservative.

Prints a table, then one JSON line with `speedup_<K>` for every budget (target: speedup_64 >= 5 on CPU; the token ratio bounds it near 9x for LLaVA-1.5).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flashvlm import select_tokens


@dataclass
class DecoderShape:
    """What the benchmark needs to know about one VLM: its decoder and one image's visual tokens."""

    name: str
    build: Callable[[int], torch.nn.Module]  # layers -> decoder with random weights, eval mode
    tokens_per_image: int  # N
    vision_width: int  # Dv: features the diversity step compares
    width: int  # D: the decoder's input embedding width
    text_tokens: int = 40  # prompt text around the image (chat template + question)
    question_tokens: int = 12  # the guide text: the question alone
    budgets: tuple[int, ...] = (64, 128, 192)
    frames: int = 1  # a clip's temporal patches; budgets are then per frame (tokens_per_image per frame)
    runner: Callable[..., dict] | None = None  # its own timing loop, for shapes run() does not cover
    target: float | None = 5.0  # speedup_<first budget> to reach; None: report the token-ratio bound instead


# --------------------------------------------------------------------------------------------------
# Model shapes (add one function per model)
# --------------------------------------------------------------------------------------------------


def hub_config(name: str):
    """The stored `config.json` of a hub checkpoint (model_configs/<name>/, see its README), read by the
    same `AutoConfig.from_pretrained` as the hub id itself."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(Path(__file__).resolve().parent / "model_configs" / name)


def llava_1_5_7b() -> DecoderShape:
    """LLaVA-1.5-7B: Vicuna-7B decoder (Llama: hidden 4096, 32 heads, MLP 11008) fed by CLIP ViT-L/14-336."""
    from transformers import LlamaModel

    hub = hub_config("llava-1.5-7b")  # llava-hf/llava-1.5-7b-hf

    def build(layers: int) -> torch.nn.Module:
        config = copy.deepcopy(hub.text_config)  # vocab unused: the prompt comes in as embeddings
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        return LlamaModel(config).eval()

    vision = hub.vision_config
    return DecoderShape("llava-1.5-7b", build, tokens_per_image=(vision.image_size // vision.patch_size) ** 2,
                        vision_width=vision.hidden_size, width=hub.text_config.hidden_size)


# ---- Qwen2.5-VL section (owned by the Qwen2.5-VL adapter) ----

QWEN_FRAMES, QWEN_SIDE = 8, 448  # decoded frames of the clip and their side in pixels


def qwen2_5_vl_7b() -> DecoderShape:
    """Qwen2.5-VL-7B on an 8-frame 448x448 clip: Qwen2 decoder (hidden 3584, 28 heads, 4 KV heads, MLP 18944)
    with 3-D MRoPE, fed by the 32-block, 1280-wide, 16-head window-attention tower.

    Geometry: 448 / 14 = 32 patches a side, 2x2 merge -> 16 x 16 = 256 tokens per temporal patch, and
    temporal patch 2 -> 8 frames are T = 4 temporal patches: 1024 visual tokens. Budgets are per temporal
    patch (the adapter's video budget), so 256 keeps everything and the adapter then skips saliency and
    selection altogether (its row is the full prefill, not timed twice). As for LLaVA, the decoder stack
    runs without the LM head, and the vocabulary is cut to 32k (the prompt comes in as embeddings: the
    real 152k table would only add 2.2 GB of unused float32 weights). The vision tower is built tiny: only
    its last block's shape matters here, and the saliency is timed on real-size queries and keys of it.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    hub = hub_config("qwen2.5-vl-7b")  # Qwen/Qwen2.5-VL-7B-Instruct

    def build(layers: int) -> torch.nn.Module:
        # The real ids lie outside the cut vocabulary (generation is not run): the placeholders move inside it.
        text = {k: v for k, v in hub.text_config.to_dict().items() if k != "layer_types"}  # derived again from the layers
        text |= dict(num_hidden_layers=layers, vocab_size=32000, bos_token_id=None, eos_token_id=None)
        tower = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=hub.vision_config.out_hidden_size)
        ids = dict(image_token_id=31990, video_token_id=31991, vision_start_token_id=31992, vision_end_token_id=31993)
        config = Qwen2_5_VLConfig(text_config=text, vision_config=tower, **ids)
        torch.manual_seed(0)
        return Qwen2_5_VLModel(config).eval()  # no LM head; get_rope_index gives the real 3-D ids

    side = QWEN_SIDE // 28  # merged tokens a side: 16
    return DecoderShape(
        "qwen2.5-vl-7b", build, tokens_per_image=side * side, vision_width=hub.vision_config.hidden_size, width=hub.text_config.hidden_size,
        budgets=(64, 128, 256), frames=(QWEN_FRAMES + 1) // 2, runner=run_qwen2_5_vl_video, target=None,
    )


def run_qwen2_5_vl_video(shape: DecoderShape, layers: int, repeats: int, device: torch.device, weights: str) -> dict:
    """Full clip against kept tokens, each pruned case timed end to end as the adapter runs it:

    saliency (received attention of the last vision block, one full-attention window per temporal patch, on
    real-size queries and keys: 16 heads x 80) + pooling over the merge window + `select_video_tokens`
    (budget x T for the clip) + gathering kept rows and their ORIGINAL MRoPE ids + prefill with those ids.
    """
    from flashvlm import select_video_tokens
    from flashvlm.models.qwen2_5_vl import received_attention

    model = shape.build(layers).to(device)
    prepack(model.language_model, device, weights)
    cfg = model.config  # Qwen2_5_VLConfig: the placeholder id and the vision geometry get_rope_index reads
    g = torch.Generator().manual_seed(1)
    T, N, D, Dv = shape.frames, shape.tokens_per_image, shape.width, shape.vision_width
    heads, head_dim, patches = 16, Dv // 16, 4 * N  # the real tower's last block: 1024 patch rows per frame
    vision = torch.randn(1, T, N, Dv, generator=g).to(device)  # (1, T, N, Dv) pooled last-block features
    projected = torch.randn(1, T, N, D, generator=g).to(device)  # (1, T, N, D) merged tokens
    query = torch.randn(T * patches, heads, head_dim, generator=g).to(device)  # (T*4N, 16, 80)
    key = torch.randn(T * patches, heads, head_dim, generator=g).to(device)
    cu_seqlens = torch.arange(T + 1, dtype=torch.int32, device=device) * patches  # one window per frame
    restore = torch.randperm(T * N, generator=g).to(device)  # the tower's window order -> token order
    question = torch.randn(1, shape.question_tokens, D, generator=g).to(device)  # (1, Lq, D)
    text = torch.randn(1, shape.text_tokens, D, generator=g).to(device)  # (1, Lt, D)
    half = shape.text_tokens // 2  # chat template before the clip; the question and the rest after it

    # The full prompt's ids and 3-D positions, from the model's own get_rope_index.
    grid = torch.tensor([[T, 2 * QWEN_SIDE // 28, 2 * QWEN_SIDE // 28]], device=device)
    ids = torch.cat([
        torch.zeros(half, dtype=torch.long), torch.full((T * N,), cfg.video_token_id), torch.zeros(shape.text_tokens - half, dtype=torch.long)
    ])[None].to(device)
    positions, _ = model.get_rope_index(
        ids, mm_token_type_ids=(ids == cfg.video_token_id).int() * 2, video_grid_thw=grid,
        second_per_grid_ts=torch.tensor([2 / 2.0]),
    )  # (3, 1, S)
    visual_columns = torch.arange(half, half + T * N, device=device)

    def prompt(rows: torch.Tensor) -> torch.Tensor:  # (1, S', D): text, visual rows, text
        return torch.cat([text[:, :half], rows, text[:, half:]], dim=1)

    def prefill_at(embeds: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # decoder stack, fresh KV cache
        return model.language_model(inputs_embeds=embeds, position_ids=pos, use_cache=True).last_hidden_state

    def select(budget: int) -> torch.Tensor:  # (1, K) flat frame-major kept indices
        if budget >= N:  # nothing to prune: the adapter computes neither saliency nor a selection
            return torch.arange(T * N, device=device)[None]
        received = received_attention(query, key, cu_seqlens, head_dim**-0.5)  # (T*4N,)
        saliency = received.view(T * N, 4).mean(dim=1)[restore].view(1, T, N)  # pooled over 2x2, token order
        return select_video_tokens(vision, projected, saliency, question, budget * T)

    def pruned(budget: int) -> torch.Tensor:
        kept = select(budget)[0]  # (K,)
        rows = projected.reshape(1, T * N, D)[:, kept]  # (1, K, D)
        columns = torch.cat([torch.arange(half, device=device), visual_columns[kept],
                             torch.arange(half + T * N, ids.shape[1], device=device)])
        return prefill_at(prompt(rows), positions[:, :, columns])  # kept tokens keep their (t, h, w) ids

    cases: dict[str, Callable[[], object]] = {
        "full": lambda: prefill_at(prompt(projected.reshape(1, T * N, D)), positions),
        "saliency": lambda: received_attention(query, key, cu_seqlens, head_dim**-0.5),
    }
    for budget in shape.budgets:
        cases[f"select_{budget}"] = lambda budget=budget: select(budget)
        if budget < N:  # a budget that keeps every token runs exactly the full prompt: not timed twice
            cases[f"pruned_{budget}"] = lambda budget=budget: pruned(budget)
    results = {name: float("inf") for name in cases}
    with torch.inference_mode():
        prefill_at(prompt(projected[0, 0][None]), positions[:, :, : shape.text_tokens + N])  # warm-up
        select(shape.budgets[0])
        for _ in range(repeats):  # interleaved rounds, best time per case (see run)
            for name, fn in cases.items():
                results[name] = min(results[name], timed(fn, device))
    for budget in shape.budgets:
        results.setdefault(f"pruned_{budget}", results["full"] + results[f"select_{budget}"])
    print(
        f"  clip: {QWEN_FRAMES} frames {QWEN_SIDE}x{QWEN_SIDE} -> T={T} temporal patches x {N} tokens = {T * N}; "
        f"saliency alone (last block, {T} windows x {patches} rows x {heads} heads): {results['saliency'] * 1e3:.0f} ms"
    )
    return results


MODELS: dict[str, Callable[[], DecoderShape]] = {
    "llava-1.5-7b": llava_1_5_7b,
    "qwen2.5-vl-7b": qwen2_5_vl_7b,
}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call (seconds)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def prepack(model: torch.nn.Module, device: torch.device, weights: str) -> torch.nn.Module:
    """On CPU with weights="prepacked": every nn.Linear becomes a oneDNN linear with its weight laid out
    once (in place). Elsewhere the model is returned as it is."""
    if weights == "prepacked" and device.type == "cpu":
        from torch.utils.mkldnn import to_mkldnn

        return to_mkldnn(model)
    return model


def prefill(model: torch.nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    """The first step of generate: the whole prompt through the decoder stack, filling a fresh KV cache."""
    return model(inputs_embeds=embeds, use_cache=True).last_hidden_state  # (1, S, D)


def run(shape: DecoderShape, layers: int, repeats: int, device: torch.device, weights: str) -> dict:
    if shape.runner is not None:
        return shape.runner(shape, layers, repeats, device, weights)
    model = prepack(shape.build(layers).to(device), device, weights)
    g = torch.Generator().manual_seed(1)
    N, D = shape.tokens_per_image, shape.width
    vision = torch.randn(1, N, shape.vision_width, generator=g).to(device)  # (1, N, Dv)
    projected = torch.randn(1, N, D, generator=g).to(device)  # (1, N, D) the one projection
    saliency = torch.rand(1, N, generator=g).to(device)  # (1, N)
    question = torch.randn(1, shape.question_tokens, D, generator=g).to(device)  # (1, Lq, D)
    text = torch.randn(1, shape.text_tokens, D, generator=g).to(device)  # (1, Lt, D) prompt text
    half = shape.text_tokens // 3  # system/USER text before the image, the question after it

    def prompt(image_rows: torch.Tensor) -> torch.Tensor:  # (1, S, D): text, image rows, text
        return torch.cat([text[:, :half], image_rows, text[:, half:]], dim=1)

    def pruned(budget: int) -> torch.Tensor:
        kept = select_tokens(vision, projected, saliency, question, budget)  # (1, K)
        rows = projected.gather(1, kept[:, :, None].expand(-1, -1, D))  # (1, K, D)
        return prefill(model, prompt(rows))

    cases: dict[str, Callable[[], object]] = {"full": lambda: prefill(model, prompt(projected))}
    for budget in shape.budgets:
        cases[f"select_{budget}"] = lambda budget=budget: select_tokens(vision, projected, saliency, question, budget)
        cases[f"pruned_{budget}"] = lambda budget=budget: pruned(budget)
    results = {name: float("inf") for name in cases}
    with torch.inference_mode():
        prefill(model, prompt(projected[:, :64]))  # warm-up: kernels, allocator
        select_tokens(vision, projected, saliency, question, shape.budgets[0])
        # Rounds interleave every case, and each keeps its best time: on a shared machine, load that comes
        # and goes then hits all cases alike instead of whichever happened to run during it.
        for _ in range(repeats):
            for name, fn in cases.items():
                results[name] = min(results[name], timed(fn, device))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="llava-1.5-7b")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers in the slice")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each case keeps its best time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 is steadier on a machine shared with other jobs")
    parser.add_argument("--weights", choices=["prepacked", "plain"], default="prepacked",
                        help="CPU only: decoder linears with oneDNN-prepacked weights, or plain nn.Linear")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="weights and activations (default: float32 on CPU, bfloat16 on CUDA)")
    args = parser.parse_args()
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    torch.set_default_dtype(getattr(torch, dtype))  # every weight and random input below is built in it
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = MODELS[args.model]()
    print(
        f"{shape.name}: decoder width {shape.width}, {args.layers}-layer slice, {dtype}, device {device}, "
        f"weights {args.weights if device.type == 'cpu' else 'plain'}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}"
    )
    results = run(shape, args.layers, args.repeats, device, args.weights)

    N, text = shape.tokens_per_image * shape.frames, shape.text_tokens
    full = results["full"]
    print(f"\n  {'visual tokens':>14} {'prompt':>7} {'selection ms':>13} {'prefill+sel ms':>15} {'speedup':>8}")
    print(f"  {N:>14} {N + text:>7} {'-':>13} {full * 1e3:>15.1f} {1.0:>7.2f}x")
    summary: dict[str, object] = {"model": shape.name, "layers": args.layers, "device": str(device), "dtype": dtype,
                                  "weights": args.weights if device.type == "cpu" else "plain",
                                  "full_ms": round(full * 1e3, 1)}
    for budget in shape.budgets:
        total, sel = results[f"pruned_{budget}"], results[f"select_{budget}"]
        kept = min(budget, shape.tokens_per_image) * shape.frames  # budgets are per frame for a clip
        print(f"  {kept:>14} {kept + text:>7} {sel * 1e3:>13.1f} {total * 1e3:>15.1f} {full / total:>7.2f}x")
        summary[f"pruned_{budget}_ms"] = round(total * 1e3, 1)
        summary[f"selection_{budget}_ms"] = round(sel * 1e3, 2)
    for budget in shape.budgets:
        summary[f"speedup_{budget}"] = round(full / results[f"pruned_{budget}"], 2)
    first = shape.budgets[0]
    if shape.target is not None:
        print(f"  speedup at {first}: {summary[f'speedup_{first}']}x (target >= {shape.target:g}x)")
    else:  # prefill is about linear in prompt length: the prompt-length ratio bounds the speedup
        bound = (N + text) / (min(first, shape.tokens_per_image) * shape.frames + text)
        print(f"  speedup at {first}: {summary[f'speedup_{first}']}x (prompt-length ratio {bound:.2f}x)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
