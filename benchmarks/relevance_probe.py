"""Does the text-relevance term find the object a question names? Object recall of the top-k patches by
FlashVLM's relevance term alone against saliency alone, on the shapes test split.

    python benchmarks/relevance_probe.py                       # the committed model (flashvlm-tiny/shapes)
    python benchmarks/relevance_probe.py --model PATH          # another checkpoint

For every test clip (the clips `jobs/train_shapes.py` scores: `shapes.clip_seed("test", i)`, rendered at
the split's 4 frames) and every question whose object is in the clip (`object_patches` non-empty), the
adapter's own feature path (`adapter.encode_video`: vision, projection, saliency) and guide text
(`adapter.guide_embeddings` of the question, as the selection gets it) give per frame
    relevance   flashvlm.selection.relevance(projected, question embeddings) with the adapter's constants
    saliency    the tower's [CLS] attention (the saliency the selection fuses with it)
and the top k patches of each frame by each are kept; object recall is the share of the question's object
patches kept (pipeline.scoring.object_recall, as the evaluation computes it), averaged over questions.
Ties (the relevance term can underflow to equal values) go to the lower index, the same for both.
Prints one JSON line per k: {"model", "k", "relevance_object_recall", "saliency_object_recall"}, plus
"questions", "clips", "relevance_ties" (the share of a frame's patches tied at its k-th relevance) and
"random_object_recall" (k / N: what a uniform draw of k patches keeps in expectation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# The repository first: `python benchmarks/x.py` puts benchmarks/ on the path, whose pipeline.py would
# shadow the pipeline package.
sys.path.insert(0, str(ROOT))

import flashvlm  # noqa: E402
from flashvlm.selection import relevance  # noqa: E402
from pipeline.scoring import object_recall  # noqa: E402
from shapes.clips import clip_seed, questions, render, sample_clip  # noqa: E402

MODEL = "flashvlm-tiny/shapes"


def top_k_per_frame(scores: torch.Tensor, k: int) -> list[list[int]]:
    """(T, N) scores -> per frame the k highest positions; ties to the lower index (a stable sort)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]  # (T, k)
    return order.tolist()


def tied_at_k(scores: torch.Tensor, k: int) -> float:
    """Share of each frame's patches whose score equals its k-th highest, averaged over frames."""
    kth = torch.sort(scores, dim=-1, descending=True).values[:, k - 1 : k]  # (T, 1)
    return float((scores == kth).float().mean(dim=-1).mean())


@torch.no_grad()
def probe(model: str, ks: tuple[int, ...], clips: int, frames: int) -> list[dict]:
    loaded, processor = flashvlm.load(model, dtype=torch.float32, device="cpu")
    adapter = flashvlm.wrap(loaded, None, processor=processor)
    tokens = adapter.tokens_per_image  # N: a uniform draw of k keeps k / N of an object in expectation
    recall = {(k, source): [] for k in ks for source in ("relevance", "saliency")}
    ties = {k: [] for k in ks}
    for index in range(clips):
        spec = sample_clip(clip_seed("test", index), frames)
        features = adapter.encode_video(render(spec))  # projected (T, N, D), saliency (T, N)
        asked = [q for q in questions(spec) if q.object_patches]
        if not asked:
            continue
        text, text_mask = adapter.guide_embeddings(None, None, [q.question for q in asked], [])  # (Q, L, D), (Q, L)
        T = features.frames
        for q, (words, mask) in enumerate(zip(text, text_mask)):
            rel = relevance(
                features.projected.float(), words[None].expand(T, -1, -1).float(), mask[None].expand(T, -1), adapter.config,
            )  # (T, N)
            patches = [list(p) for p in asked[q].object_patches]
            for k in ks:
                recall[k, "relevance"].append(object_recall(top_k_per_frame(rel, k), patches))
                recall[k, "saliency"].append(object_recall(top_k_per_frame(features.saliency.float(), k), patches))
                ties[k].append(tied_at_k(rel, k))
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    return [
        {"model": model, "k": k, "relevance_object_recall": mean(recall[k, "relevance"]),
         "saliency_object_recall": mean(recall[k, "saliency"]), "questions": len(recall[k, "relevance"]),
         "clips": clips, "relevance_ties": mean(ties[k]), "random_object_recall": min(k, tokens) / tokens}
        for k in ks
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL, help=f"a checkpoint flashvlm.load takes (default {MODEL})")
    parser.add_argument("--clips", type=int, default=60, help="test clips (default 60: the ones training scores)")
    parser.add_argument("--frames", type=int, default=4, help="frames a clip (default 4: the split's)")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64], help="patches kept a frame (default 16 64)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for line in probe(args.model, tuple(args.k), args.clips, args.frames):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
