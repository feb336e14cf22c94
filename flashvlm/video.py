"""FlashVLM for video: importance per frame, background (diverse) tokens chosen across the clip.

Shapes used throughout:
    B  clips in the batch
    T  frames per clip
    N  visual tokens per frame (LLaVA-1.5: 576)
    Dv vision-encoder width, D language-model width, L guide-text tokens
    K  budget: visual tokens kept for the whole clip

Indices are flat and frame-major: token n of frame t is t * N + n, so ascending indices keep the
(frame, position) order that the language model's positions (and Qwen2.5-VL's MRoPE ids) expect.
"""

from __future__ import annotations

import torch

from flashvlm.selection import (
    SelectionConfig,
    check_inputs,
    diversity_partition,
    fused_scores,
    score_dtype,
    split_budget,
)

SPLITS = ("global", "per_frame")

# Experiment knobs (temporary).
_STEP_SCALE = False


def _check_split(split: str, min_per_frame: int | None, budget: int, T: int, N: int, config: SelectionConfig):
    """Validate the split arguments and return (important tokens for the clip, per-frame floor)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if min_per_frame is not None and (isinstance(min_per_frame, bool) or not isinstance(min_per_frame, int)):
        raise ValueError(f"min_per_frame must be an int or None, got {type(min_per_frame).__name__}")
    if min_per_frame is not None and min_per_frame < 0:
        raise ValueError(f"min_per_frame must be >= 0, got {min_per_frame}")
    kept = min(budget, T * N)
    if split == "per_frame":
        if min_per_frame is not None:
            raise ValueError('min_per_frame applies to split="global" only; per_frame fixes it')
        # Every frame gets the image rule's important share of an equal slice of the clip budget.
        per_frame, _ = split_budget(kept // T, config)
        return T * per_frame, per_frame
    k_imp, _ = split_budget(kept, config)
    floor = k_imp // (2 * T) if min_per_frame is None else min_per_frame
    if floor * T > k_imp:
        raise ValueError(
            f"min_per_frame={floor} needs {floor * T} important tokens for {T} frames, but the budget "
            f"{budget} has only {k_imp} (important_ratio={config.important_ratio})"
        )
    return k_imp, floor


def select_video_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    split: str = "global",
    min_per_frame: int | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Indices of the visual tokens FlashVLM keeps for each clip."""
    config = config or SelectionConfig()
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N, Dv = vision.shape
    D = projected.shape[-1]
    k_imp, floor = _check_split(split, min_per_frame, budget, T, N, config)
    if budget >= T * N:
        kept = torch.arange(T * N, device=vision.device).expand(B, T * N).clone()
        return (kept, torch.ones_like(kept, dtype=torch.bool)) if return_important else kept

    # 1-4. Importance of every token from its own frame: frames folded into the batch, text shared.
    dtype = score_dtype(vision, projected, saliency, text)
    frame_text = frame_mask = None
    if text is not None:
        L = text.shape[1]
        frame_text = text.to(dtype)[:, None].expand(B, T, L, D).reshape(B * T, L, D)
        if text_mask is not None:
            frame_mask = text_mask[:, None].expand(B, T, L).reshape(B * T, L)
    score = fused_scores(
        projected.reshape(B * T, N, D).to(dtype), saliency.reshape(B * T, N).to(dtype), frame_text, frame_mask, config
    ).view(B, T, N)  # each frame min-max normalised to [0, 1]

    # 5. Partition. The `floor` best tokens of every frame are important whatever the other frames hold;
    # the rest of the important share goes to the best remaining tokens of the whole clip.
    rank = torch.sort(score, dim=2, descending=True, stable=True).indices.argsort(dim=2)  # (B, T, N) rank in frame
    priority = torch.where(rank < floor, score + 2, score).reshape(B, T * N)  # scores are <= 1: floor first
    order = torch.sort(priority, dim=1, descending=True, stable=True).indices  # (B, T*N), ties frame-major
    important, residual = order[:, :k_imp], order[:, k_imp:]  # (B, K_imp), (B, M) residual by score

    # 6. Diversity partition over the pooled residual of the whole clip: a background repeated in several
    # frames is one cluster of near-identical tokens there, so it survives about once, not once per frame.
    k_div = min(budget, T * N) - k_imp
    flat = vision.reshape(B, T * N, Dv)
    features = flat.gather(1, residual[:, :, None].expand(-1, -1, Dv)).to(dtype)  # (B, M, Dv)
    step = config.diversity_step * (T if _STEP_SCALE else 1)
    diverse = diversity_partition(features, residual, k_div, step)  # (B, K_div)

    # 7. Frame-major order.
    kept, position = torch.cat([important, diverse], dim=1).sort(dim=1)
    if return_important:
        return kept, position < k_imp
    return kept
