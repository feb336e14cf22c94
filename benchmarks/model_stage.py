"""The answer actor's work as the pipeline does it, per budget: what a device-hour buys with and without pruning.

    python benchmarks/model_stage.py [--device cpu|cuda] [--videos 2] [--frames 8] [--questions 5]
                                     [--new-tokens 16] [--budgets full,192,64,16] [--size full|cpu|tiny]

LLaVA-1.5-7B's architecture built from its config with random weights (timing does not depend on the
weights; nothing is downloaded): CLIP ViT-L/14-336 (24 layers, hidden 1024) and a Llama-7B decoder (32
layers, hidden 4096, vocabulary 32064), bfloat16 on CUDA. `--size cpu` (the default on a CPU) keeps the
architecture, image size and token counts (576 a frame) at a reduced width and depth (CLIP hidden 128,
Llama hidden 256 x 8 layers) so that a run fits in minutes; `--size tiny` is the smoke test's.

Per video, as `AnswerQuestions.answer_one` does it: the vision tower once for the clip (`encode_video`:
tower up to the feature layer, saliency hook, projector), then for its Q questions the guide embeddings,
`select_video_tokens` and the pruned prompts (`feature_batch`: "selection"), then one generate of Q rows
with 16 new tokens (timed as the prefill forward, and decoding as generate's time less one prefill).
`selection_batch_ms`: the same selections as ONE call for every (video, question) of the batch, per video.

Prints a table, then one JSON line: {"device", "dtype", "model", "frames", "questions", "results": [{"budget",
"videos_per_hour", "vision_ms", "selection_ms", "selection_batch_ms", "prefill_ms", "decode_ms"}]}, budget
null for full (every visual token).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch

import flashvlm
from flashvlm.selectors import select_video
from shapes.model import build_tokenizer, llava_1_5

# (vision tower, decoder, vocabulary) per --size; "full" is LLaVA-1.5-7B.
SIZES = {
    "full": (
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, projection_dim=768),
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=32, max_position_embeddings=8192),
        32064,
    ),
    "cpu": (
        dict(hidden_size=128, intermediate_size=512, num_hidden_layers=24, num_attention_heads=2, projection_dim=128),
        dict(hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=8192),
        32064,
    ),
    "tiny": (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, projection_dim=32),
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=8192),
        None,
    ),
}
QUESTIONS = [
    "What is the person holding?", "How many cars pass by?", "What colour is the dog?",
    "Which object moves first?", "Is it raining in the video?", "Where does the ball go?",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype):
    """Parameters created directly on `device` in `dtype`: a 7B model initialised on a CPU takes minutes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_adapter(size: str, device: torch.device, dtype: torch.dtype):
    """flashvlm.wrap around a random LLaVA-1.5 of `size`, on `device`, with its processor."""
    tokenizer = build_tokenizer()  # LLaVA's special tokens; the real vocabulary size is set below
    vision, text, vocab = SIZES[size]
    with building_on(device, dtype):
        model, processor = llava_1_5(tokenizer, vision, text, seed=0)
        if vocab is not None:  # the real vocabulary: the LM head's cost in every decoding step
            model.resize_token_embeddings(vocab, mean_resizing=False)
    return flashvlm.wrap(model.to(device=device, dtype=dtype).eval(), None, processor=processor)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - start) * 1e3


def prefill(adapter, batch) -> None:
    """The first step of generate: the decoder over the pruned prompts with a fresh cache, and the LM head."""
    pruned = batch.pruned
    adapter.model(inputs_embeds=pruned.inputs_embeds, attention_mask=pruned.attention_mask, use_cache=True,
                  logits_to_keep=1)


def batch_selection(adapter, features, prompts, budget: int) -> None:
    """The selections of every (video, question) of the batch as one `select_video` call."""
    texts, masks, rows = [], [], []
    device = adapter.model.device
    for p in prompts:
        text, text_mask = adapter.guide_embeddings(p.input_ids.to(device), p.attention_mask.to(device), p.questions, [adapter.image_token_id])
        texts.append(text)
        masks.append(text_mask)
        rows.append(len(p.questions))
    width = max(t.shape[1] for t in texts)  # guide texts padded to one length; the mask hides the padding
    text = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in texts])  # (sum Q, L, D)
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])  # (sum Q, L)

    def clips(name: str) -> torch.Tensor:  # (sum Q, T, N, ...) every question sees its own video
        return torch.cat([getattr(f, name)[None].expand(r, *getattr(f, name).shape) for f, r in zip(features, rows)])

    T = features[0].frames
    select_video("flashvlm", clips("vision"), clips("projected"), clips("saliency"), text, budget * T,
                 text_mask=mask, return_important=True, config=adapter.config)


def run_budget(adapter, videos, questions, budget, new_tokens: int, device: torch.device) -> dict:
    """Per-video milliseconds of each part of the answer stage at `budget` tokens a frame (None: all)."""
    totals = dict(vision_ms=0.0, selection_ms=0.0, prefill_ms=0.0, decode_ms=0.0)
    features, prompts = [], []
    for frames in videos:
        f, ms = timed(lambda: adapter.encode_video(frames), device)
        totals["vision_ms"] += ms
        prompt = adapter.feature_prompts(questions, f)
        batch, ms = timed(lambda: adapter.feature_batch(f, prompt, budget, "flashvlm", None), device)
        totals["selection_ms"] += ms
        with torch.no_grad():
            _, ms_prefill = timed(lambda: prefill(adapter, batch), device)
            _, ms_generate = timed(lambda: adapter.answer_batch(batch, new_tokens), device)
        totals["prefill_ms"] += ms_prefill
        totals["decode_ms"] += max(0.0, ms_generate - ms_prefill)
        features.append(f)
        prompts.append(prompt)
    out = {k: round(v / len(videos), 1) for k, v in totals.items()}
    if budget is not None:
        with torch.no_grad():
            _, ms = timed(lambda: batch_selection(adapter, features, prompts, budget), device)
        out["selection_batch_ms"] = round(ms / len(videos), 1)
    out["videos_per_hour"] = round(3.6e6 / sum(totals[k] / len(videos) for k in totals), 1)
    return {"budget": budget, **out}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=tuple(SIZES), default=None, help="default: full on CUDA, cpu on a CPU")
    parser.add_argument("--videos", type=int, default=None, help="videos a batch (default: 8 on CUDA, 2 on a CPU)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--budgets", default="full,192,64,16", help="tokens a frame; full: every token")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    size = args.size or ("full" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    n_videos = args.videos or (8 if cuda else 2)
    adapter = build_adapter(size, device, dtype)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (args.frames, 336, 336, 3), dtype=np.uint8) for _ in range(n_videos)]
    questions = (QUESTIONS * args.questions)[: args.questions]
    # New tokens are forced to their number: random weights would stop at an early EOS.
    adapter.model.generation_config.min_new_tokens = args.new_tokens
    run_budget(adapter, videos[:1], questions, None, 2, device)  # warm-up: kernels, allocator, caches
    budgets = [None if b == "full" else int(b) for b in args.budgets.split(",")]
    results = [run_budget(adapter, videos, questions, b, args.new_tokens, device) for b in budgets]

    print(f"device {device}, {dtype}, size {size}, {n_videos} videos x {args.frames} frames x {args.questions} questions, "
          f"{args.new_tokens} new tokens")
    print(f"  {'budget':>6s} {'vision':>9s} {'selection':>10s} {'sel. batch':>10s} {'prefill':>9s} {'decode':>9s} {'videos/h':>9s}")
    for r in results:
        print(f"  {str(r['budget'] or 'full'):>6s} {r['vision_ms']:9.1f} {r['selection_ms']:10.1f} "
              f"{r.get('selection_batch_ms', 0.0):10.1f} {r['prefill_ms']:9.1f} {r['decode_ms']:9.1f} {r['videos_per_hour']:9.1f}")
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "model": "llava-1.5-7b" if size == "full" else f"llava-1.5 architecture, {size} width (random weights)",
        "frames": args.frames,
        "questions": args.questions,
        "results": results,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
