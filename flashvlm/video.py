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
import torch.nn.functional as F

from flashvlm.selection import (
    SelectionConfig,
    check_inputs,
    diversity_partition,
    fused_scores,
    relevance,
    score_dtype,
    split_budget,
)

SPLITS = ("global", "per_frame")

# Two tokens are "near-identical" at this cosine of their vision features: a token that repeats the same
# place of the previous frame is static, and a background token that looks like a kept token of another
# frame is a repeat. 0.95 is the level the redundancy benchmark calls a near-duplicate; it is a property
# of the feature space (measured on normalised pixel patches), not part of the paper's rule.
NEAR_IDENTICAL = 0.95


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


def static_tokens(vision: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, T, N, Dv) -> (B, T, N) bool: True where a token repeats the same place of the previous frame."""
    prev, cur = vision[:, :-1], vision[:, 1:]
    cos = (prev * cur).sum(-1) / (
        torch.linalg.vector_norm(prev, dim=-1) * torch.linalg.vector_norm(cur, dim=-1)
    ).clamp_min(1e-12)  # (B, T-1, N)
    first = torch.zeros_like(vision[:, :1, :, 0], dtype=torch.bool)  # frame 0 repeats nothing
    return torch.cat([first, cos >= threshold], dim=1)


def select_video_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    split: str = "per_frame",
    min_per_frame: int | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Indices of the visual tokens FlashVLM keeps for each clip: importance per frame, background per clip.

    The rule, per clip (ALGORITHM.md, video section):
    1. Importance (steps 1-4) of every token from its own frame: `fused_scores` on the (B*T, N) view, the
       guide text shared by all frames. A token "matches the question" when its relevance is at or above
       its frame's top-p quantile (the tokens step 2 leaves undamped).
    2. Static tokens: a token whose vision feature has cosine >= NEAR_IDENTICAL to the same place of the
       previous frame repeats what that frame already shows. Seen tokens: a non-static token with a
       near-identical non-static token in an EARLIER frame repeats content the clip already shows (first
       occurrence wins); question matches are exempt, since where they are in each frame is information
       (a moving object the question asks about is kept in every frame).
    3. Candidates: the clip's new content (non-static, not seen) when it holds at least `budget` tokens;
       otherwise every non-static token (repeats are then unavoidable and are spent on each frame's own
       important tokens). So a frame whose best tokens only repeat other frames leaves its importance
       quota unused, and the budget goes to the clip-wide background.
    4. Important tokens among the candidates, by `split`:
       - "per_frame": every frame gets up to floor((budget // T) * important_ratio) of its best candidates;
         everything else of the budget is background.
       - "global": floor(budget * important_ratio) important tokens ranked across the clip, each frame
         first getting its `min_per_frame` best candidates (default: half an equal share,
         important // (2 T)). Frames are scored separately (each min-max normalised), so ranks compare.
    5. Background: the remaining candidates of ALL frames form one residual list (descending score).
       A token that looks like (cosine >= NEAR_IDENTICAL) an important token or a better-ranked residual
       token of ANOTHER frame is a repeat and is set aside; the spec's diversity partition (step 6) then
       runs over the rest, dropping diversity_step * T tokens a round (the image rule's rounds per frame).
       Short of tokens, the budget is filled with repeats, then non-candidates (seen before static), by score.
    6. Kept indices ascending: (frame, position) order.
    With T = 1 there is nothing static or seen and nothing to repeat, and both splits return exactly
    `select_tokens(...)` of that frame with the same budget.

    Default split: "per_frame". On the sample clips (benchmarks/video_redundancy.py, 8 frames, 64 tokens
    a frame, 11 clips x 2 guide texts) against the image rule frame by frame, worst row: "per_frame"
    duplicate ratio 0.98, coverage -0.011; "global" 0.98, -0.017 (both worst ratios on transparent.webm
    with the centre query, where question-matched flat patches repeat; without text every clip keeps
    no cross-frame duplicate at all). "per_frame" has the better worst coverage and the lower duplicate
    ratio on the changing clips (fire2 0.15 vs 0.54, pancake 0.14 vs 0.34 with the centre query), and it
    guarantees every frame its share of question-relevant tokens, which temporal questions need.

    Args:
        vision: (B, T, N, Dv) vision-encoder features of every frame.
        projected: (B, T, N, D) the same tokens after the projector.
        saliency: (B, T, N) intrinsic saliency of every token within its frame.
        text: (B, L, D) guide-text embeddings shared by all frames of a clip, or None (saliency alone).
        budget: tokens kept for the whole clip; budget >= T * N keeps all of them.
        text_mask: (B, L) bool, True for real text tokens.
        split: "per_frame" or "global", see above.
        min_per_frame: the per-frame floor of important tokens for split="global" (an error with
            "per_frame", which fixes it); at most floor(budget * important_ratio) // T.
        config: the rule's constants (SelectionConfig); the paper's defaults when None.
        return_important: also return which kept tokens were chosen as important.

    Returns:
        (B, min(budget, T * N)) int64 flat frame-major indices (t * N + n), distinct and ascending; with
        return_important also a bool tensor of that shape, True for important tokens.

    Only steps 2-5 loop, over clips (each clip has its own number of non-static tokens); one cosine matrix
    of a clip's non-static tokens serves the seen and repeat checks. Nothing loops over frames or tokens.
    """
    config = config or SelectionConfig()
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N, Dv = vision.shape
    D = projected.shape[-1]
    k_imp, floor = _check_split(split, min_per_frame, budget, T, N, config)
    if budget >= T * N:
        kept = torch.arange(T * N, device=vision.device).expand(B, T * N).clone()
        return (kept, torch.ones_like(kept, dtype=torch.bool)) if return_important else kept
    K = budget

    # 1-4. Importance of every token from its own frame: frames folded into the batch, text shared.
    dtype = score_dtype(vision, projected, saliency, text)
    frame_text = frame_mask = None
    if text is not None:
        L = text.shape[1]
        frame_text = text.to(dtype)[:, None].expand(B, T, L, D).reshape(B * T, L, D)
        if text_mask is not None:
            frame_mask = text_mask[:, None].expand(B, T, L).reshape(B * T, L)
    frame_projected = projected.reshape(B * T, N, D).to(dtype)
    score = fused_scores(
        frame_projected, saliency.reshape(B * T, N).to(dtype), frame_text, frame_mask, config
    ).view(B, T, N)  # each frame min-max normalised to [0, 1]
    # Tokens that match the question: at or above their frame's top-p relevance quantile (the tokens step 2
    # leaves undamped). Where they are in each frame is the answer's information, so they may repeat.
    matched = torch.zeros(B, T, N, dtype=torch.bool, device=vision.device)
    if text is not None:
        r = relevance(frame_projected, frame_text, frame_mask, config)  # (B*T, N), zero without text
        q = torch.quantile(r, 1 - config.top_p, dim=-1, keepdim=True, interpolation="linear")
        matched = ((r >= q) & (r > 0)).view(B, T, N)
    vision = vision.to(dtype)
    static = static_tokens(vision, NEAR_IDENTICAL)  # (B, T, N)
    flat = vision.reshape(B, T * N, Dv)
    unit = F.normalize(flat, dim=-1)  # for cosines; the partition gets the features as the image rule does
    frame_of = torch.arange(T * N, device=vision.device) // N  # (T*N,)
    # The clip pool is about T frames' worth of residual: drop `step` tokens per frame per round, so the
    # partition takes as many rounds as the image rule does for one frame (same cost shape, not T x).
    step = config.diversity_step * T
    rows, flags = [], []
    for b in range(B):  # each clip has its own number of non-static tokens, so its own matrix sizes
        # 2. Seen content: a non-static token with a near-identical non-static token in an EARLIER frame
        # repeats content the clip already shows (first occurrence wins); question matches excepted.
        eligible = (~static[b]).reshape(T * N).nonzero().squeeze(1)  # (E,) ascending: frame order
        sim = unit[b, eligible] @ unit[b, eligible].T  # (E, E) cosine, computed once per clip
        frame = frame_of[eligible]
        seen = ((sim >= NEAR_IDENTICAL) & (frame[None, :] < frame[:, None])).any(dim=1)  # (E,)
        new = ~seen | matched[b].reshape(T * N)[eligible]
        # Candidates for importance and background: new content when the clip has enough of it to fill
        # the budget; otherwise every non-static token (repeats are then unavoidable, and are better
        # spent as each frame's own important tokens than as background).
        candidates = eligible[new] if int(new.sum()) >= K else eligible
        cand = torch.zeros(T * N, dtype=torch.bool, device=vision.device)
        cand[candidates] = True
        cand = cand.view(T, N)
        position = torch.full((T * N,), -1, dtype=torch.long, device=vision.device)
        position[eligible] = torch.arange(eligible.numel(), device=vision.device)  # row of sim

        # 3. Partition. Candidates rank above other non-static tokens, which rank above static ones
        # (scores are in [0, 1], so +-2 moves a whole class); each frame's `floor` best candidates first.
        s = score[b]
        key = torch.where(cand, s, torch.where(static[b], s - 4, s - 2))
        rank = torch.sort(key, dim=1, descending=True, stable=True).indices.argsort(dim=1)  # (T, N) in frame
        forced = (rank < floor) & cand
        priority = torch.where(forced, s + 2, key).reshape(T * N)
        order = torch.sort(priority, descending=True, stable=True).indices  # (T*N,), ties frame-major
        n_cand = candidates.numel()
        n_imp = int(forced.sum()) if split == "per_frame" else min(k_imp, n_cand)
        important = order[:n_imp]
        pool = order[n_imp:n_cand]  # residual candidates, descending score
        k_div = K - n_imp
        # 4. Background repeats: pool tokens that look like an important token or a better-ranked pool
        # token of ANOTHER frame are set aside (within a frame the partition judges redundancy).
        both = torch.cat([important, pool])
        sub = sim[position[pool]][:, position[both]]  # (M, n_imp + M)
        before = torch.arange(both.numel(), device=sim.device)[None, :] < (
            n_imp + torch.arange(pool.numel(), device=sim.device)[:, None]
        )  # important tokens and pool tokens ranked above
        repeat = ((sub >= NEAR_IDENTICAL) & before & (frame_of[pool][:, None] != frame_of[both][None, :])).any(dim=1)
        fresh, repeats = pool[~repeat], pool[repeat]
        if fresh.numel() >= k_div:
            # 6. Diversity partition over the pooled residual of the whole clip.
            diverse = diversity_partition(flat[b, fresh][None], fresh[None], k_div, step)[0]
        else:
            # Fewer fresh tokens than the budget: keep them all, then repeats, then the rest by class and score.
            diverse = torch.cat([fresh, repeats, order[n_cand:]])[:k_div]
        kept, where = torch.cat([important, diverse]).sort()
        rows.append(kept)
        flags.append(where < n_imp)
    kept = torch.stack(rows)
    return (kept, torch.stack(flags)) if return_important else kept
