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

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flashvlm.selection import (
    SelectionConfig,
    check_inputs,
    diversity_partition,
    fused_scores,
    score_dtype,
    select_tokens,
    split_budget,
)

# The clip rule's two splits, and "frame_by_frame": the image rule on each frame alone (no cross-frame step),
# the baseline the clip rule is measured against, a split so that a job can choose it like the others.
VIDEO_SPLITS = ("global", "per_frame")
SPLITS = (*VIDEO_SPLITS, "frame_by_frame")

# A token is UNCHANGED when its vision feature has at least this cosine to the same place of the previous
# frame, and two tokens are near-identical (one REPEATS the other) at this cosine. 0.95 is the level the
# redundancy benchmark calls a near-duplicate; it is a property of the feature space (measured on normalised
# pixel patches), not part of the paper's rule.
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
    if split in ("per_frame", "frame_by_frame"):
        if min_per_frame is not None:
            raise ValueError(f'min_per_frame applies to split="global" only; {split} fixes it')
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


def static_tokens(unit: torch.Tensor, N: int) -> torch.Tensor:
    """(B, T*N, Dv) unit features -> (B, T, N) bool: True where a token is unchanged since the same place of
    the previous frame (cosine >= NEAR_IDENTICAL); frame 0 has no previous frame."""
    B, TN, _ = unit.shape
    frames = unit.view(B, TN // N, N, -1)
    cos = (frames[:, 1:] * frames[:, :-1]).sum(dim=-1)  # (B, T-1, N)
    first = torch.zeros_like(cos[:, :1], dtype=torch.bool)
    return torch.cat([first, cos >= NEAR_IDENTICAL], dim=1)


def covered(kept: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
    """(B, T, N) bool: True where a token is kept, or unchanged since the same place of the previous frame
    where it was kept or is itself covered, so its content is kept at that place in an earlier frame.

    kept, static: (B, T, N) bool, `static` from `static_tokens`. The loop is over frames (each depends on the
    one before); every step is batched over clips and places.
    """
    out = kept.clone()
    for t in range(1, kept.shape[1]):
        out[:, t] |= static[:, t] & out[:, t - 1]
    return out


def repeats(unit: torch.Tensor, frame_of: torch.Tensor, kept: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
    """(R,) bool: True where a token of `ranked` (R,) repeats a token of ANOTHER frame, taking `ranked`
    greedily in its order: a token repeats when it is near-identical to a token of `kept` or to an earlier
    token of `ranked` that does not repeat. Within a frame, the partition judges redundancy.

    unit: (T*N, Dv) unit features of one clip; frame_of: (T*N,) each token's frame.
    """
    R, K = ranked.numel(), kept.numel()
    both = torch.cat([kept, ranked])
    x = unit[ranked]  # (R, Dv)
    near = (x @ unit[both].T >= NEAR_IDENTICAL) & (frame_of[ranked][:, None] != frame_of[both][None, :])  # (R, K+R)
    of_kept = near[:, :K].any(dim=1)  # (R,)
    near = near[:, K:] & torch.ones(R, R, dtype=torch.bool, device=unit.device).tril(-1)  # earlier tokens only
    # Greedy in order, solved as a fixed point: each pass settles at least one more leading token, and
    # chains of near-identical tokens are short, so this takes a few passes of (R, R) boolean work.
    taken = ~of_kept
    while True:
        now = ~of_kept & ~(near & taken[None, :]).any(dim=1)
        if torch.equal(now, taken):
            return ~taken
        taken = now


def best_cosine(unit: torch.Tensor, tokens: torch.Tensor, kept: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(len(tokens),) each token's highest cosine to a token of `kept` (-1 when nothing is kept), in chunks."""
    if kept.numel() == 0:
        return torch.full(tokens.shape, -1.0, dtype=unit.dtype, device=unit.device)
    return torch.cat([(unit[part] @ unit[kept].T).amax(dim=1) for part in tokens.split(chunk)])


def take_fresh(unit: torch.Tensor, frame_of: torch.Tensor, kept: torch.Tensor, ranked: torch.Tensor, need: int) -> torch.Tensor:
    """The first `need` tokens of `ranked` that repeat nothing: no near-identical token of another frame
    among `kept` or the tokens taken before them. Reads `ranked` in chunks of 2 * need (most tokens repeat
    nothing) and stops once it has `need`, so a long clip never builds its whole cosine matrix."""
    chunk = max(2 * need, 256)
    taken: list[torch.Tensor] = []
    count = 0
    for start in range(0, ranked.numel(), chunk):
        part = ranked[start : start + chunk]
        fresh = part[~repeats(unit, frame_of, torch.cat([kept, *taken]), part)][: need - count]
        taken.append(fresh)
        count += fresh.numel()
        if count >= need:
            break
    return torch.cat(taken) if taken else ranked[:0]


def _frame_by_frame(vision, projected, saliency, text, budget, text_mask, config, return_important):
    """split="frame_by_frame": `select_tokens` on every frame alone, budget // T tokens a frame and one more
    for the first budget % T frames. Same arguments and return as `select_video_tokens`."""
    B, T, N, Dv = vision.shape
    per, extra = divmod(budget, T)
    kept, flags = [], []
    for frames, k in ((slice(0, extra), per + 1), (slice(extra, T), per)):
        n = len(range(T)[frames])
        if n == 0 or k == 0:
            continue
        frame_text = None if text is None else text[:, None].expand(B, n, *text.shape[1:]).reshape(B * n, *text.shape[1:])
        frame_mask = None if text_mask is None else text_mask[:, None].expand(B, n, -1).reshape(B * n, -1)
        idx, imp = select_tokens(
            vision[:, frames].reshape(B * n, N, Dv), projected[:, frames].reshape(B * n, N, -1),
            saliency[:, frames].reshape(B * n, N), frame_text, k,
            text_mask=frame_mask, config=config, return_important=True,
        )  # (B*n, k) each
        offset = (torch.arange(frames.start, frames.start + n, device=vision.device) * N)[None, :, None]  # (1, n, 1)
        kept.append((idx.view(B, n, k) + offset).reshape(B, n * k))
        flags.append(imp.view(B, n * k))
    # Frames in order, and each frame's indices ascending: the rows are already ascending.
    kept_all, flags_all = torch.cat(kept, dim=1), torch.cat(flags, dim=1)  # (B, budget)
    return (kept_all, flags_all) if return_important else kept_all


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

    The rule, per clip (docs/algorithm.md, "The clip rule"). A token is UNCHANGED when its vision feature has cosine
    >= NEAR_IDENTICAL to the same place of the previous frame; it REPEATS when it has that cosine to a kept
    token of ANOTHER frame, at any place.
    1. Scores (steps 1-4) of every token from its own frame: `fused_scores` on the (B*T, N) view, the guide
       text shared by all frames; each frame is min-max normalised, so scores compare across frames.
    2. Important tokens, as the image rule ranks them: with split="per_frame", each frame's `floor` best
       tokens, floor = floor((budget // T) * important_ratio), the image rule's important share of an equal
       slice of the budget; with split="global", each frame's `min_per_frame` best, then the clip's
       best-scoring others up to floor(budget * important_ratio). Of these, a token is skipped only when it
       is unchanged since the same place of the previous frame and that token is important or skipped
       itself (`covered`): its content is already kept at that place. A token that resembles one at another
       place is never skipped: a moving object that matches the question is new content in every frame
       (where it is, is what a motion question needs). The slots skipped tokens free go to the background.
    3. Background, per frame first: the spec's diversity partition (step 6) of each frame's tokens after
       its `floor` best, batched over all frames, exactly as the image rule runs it with a per-frame
       background of (budget - important) // T: each frame's SHARE; the same rounds, stopped earlier,
       give a RESERVE of about twice that, which contains the share.
    4. Across the clip: the shares, in descending score, less skipped tokens and the tokens that repeat an
       important token or an earlier share token. A background shown in several frames is kept once.
    5. The slots those repeats and the skipped important tokens freed: the reserve tokens of every frame
       that repeat nothing kept, thinned to the free slots by the spec's partition over that pooled
       residual of the whole clip. Short of them (a nearly static clip), tokens that repeat nothing kept,
       least covered by the kept ones first (best cosine to a kept token, unchanged tokens last); only then
       repeats, and skipped tokens last of all.
    6. Kept indices ascending: (frame, position) order.
    With T = 1 a clip is an image: both splits return exactly `select_tokens(...)` of that frame.

    Default split: "per_frame". On the sample clips (benchmarks/video_redundancy.py: 8 frames, 64 tokens a
    frame, 11 clips x 2 guide texts, against the image rule frame by frame with the same budget) both splits
    keep every patch of a planted moving object (or cover it at its place) and no background token that
    repeats another frame's; worst coverage change: per_frame -0.0001 (transparent.webm, nearly blank),
    global -0.0326 (fire2.mp4 without text, whose clip-wide saliency ranking puts the important tokens in two
    frames of flames). Means +0.025 / +0.022. The evaluation (docs/evaluation.md) compares the splits'
    answers on the shapes model.

    Args:
        vision: (B, T, N, Dv) vision-encoder features of every frame.
        projected: (B, T, N, D) the same tokens after the projector.
        saliency: (B, T, N) intrinsic saliency of every token within its frame.
        text: (B, L, D) guide-text embeddings shared by all frames of a clip, or None (saliency alone).
        budget: tokens kept for the whole clip; budget >= T * N keeps all of them.
        text_mask: (B, L) bool, True for real text tokens.
        split: "per_frame" or "global", see above; "frame_by_frame" is the image rule on each frame alone
            (`select_tokens` with budget // T tokens a frame, one more for the first budget % T frames): the
            baseline, which keeps repeated background in every frame.
        min_per_frame: the per-frame floor of important tokens for split="global" (an error with
            "per_frame", which fixes it); at most floor(budget * important_ratio) // T. Default:
            floor(budget * important_ratio) // (2 * T).
        config: the rule's constants (SelectionConfig); the paper's defaults when None.
        return_important: also return which kept tokens were chosen as important.

    Returns:
        (B, min(budget, T * N)) int64 flat frame-major indices (t * N + n), distinct and ascending; with
        return_important also a bool tensor of that shape, True for important tokens.

    Loops: over frames for the skip chain (each frame depends on the one before; every step is batched over
    clips and places), and over clips in steps 4-5 (each has its own count of important and repeating
    tokens). Step 3, the bulk of the work, is one batched partition over every frame. Nothing loops over
    tokens.
    """
    config = config or SelectionConfig()
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N, _ = vision.shape
    k_imp, floor = _check_split(split, min_per_frame, budget, T, N, config)
    if budget >= T * N:
        kept = torch.arange(T * N, device=vision.device).expand(B, T * N).clone()
        return (kept, torch.ones_like(kept, dtype=torch.bool)) if return_important else kept
    if T == 1:  # one frame is an image: nothing can repeat another frame
        return select_tokens(
            vision[:, 0], projected[:, 0], saliency[:, 0], text, budget,
            text_mask=text_mask, config=config, return_important=return_important,
        )
    if split == "frame_by_frame":
        return _frame_by_frame(vision, projected, saliency, text, budget, text_mask, config, return_important)
    core = clip_core(vision, projected, saliency, text, text_mask, budget, k_imp, floor, config)
    kept, flags = clip_backgrounds(core, budget, config.diversity_step)
    return (kept, flags) if return_important else kept


@dataclass
class ClipCandidates:
    """Steps 1-3 of the clip rule for B clips of T frames of N tokens, shapes fixed by (B, T, N, budget).

    score (B, T, N) each token's importance within its frame; flat (B, T*N, Dv) the features in the score
    dtype and unit their unit rows; static (B, T, N) unchanged since the same place of the previous frame;
    important / skipped (B, T, N) the important tokens kept and those skipped as covered; shares
    (B, T*k_frame) every frame's background, reserved (B, T*reserve) its reserve, both in partition order.
    """

    score: torch.Tensor
    flat: torch.Tensor
    unit: torch.Tensor
    static: torch.Tensor
    important: torch.Tensor
    skipped: torch.Tensor
    shares: torch.Tensor
    reserved: torch.Tensor


def clip_core(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    budget: int,
    k_imp: int,
    floor: int,
    config: SelectionConfig,
    all_pairs: bool | None = None,
) -> ClipCandidates:
    """Steps 1-3 of `select_video_tokens` on checked inputs, batched over clips and frames: the bulk of the
    work. With all_pairs (default: on an accelerator) nothing here waits for the device or branches on its
    values, so `torch.compile(clip_core, fullgraph=True)` captures it whole."""
    score, flat, unit = clip_scores(vision, projected, saliency, text, text_mask, config)
    N = score.shape[2]
    static = static_tokens(unit, N)  # (B, T, N)
    selected, skipped = important_tokens(score, static, k_imp, floor)
    shares, reserved = frame_backgrounds(flat, score, selected, budget - k_imp, floor, config.diversity_step, all_pairs)
    return ClipCandidates(score, flat, unit, static, selected & ~skipped, skipped, shares, reserved)


def clip_scores(vision, projected, saliency, text, text_mask, config):
    """Step 1: importance of every token from its own frame (steps 1-4 of the image rule), frames folded into
    the batch and the text shared. Returns score (B, T, N), each frame min-max normalised to [0, 1] so scores
    compare across frames; flat (B, T*N, Dv) the features in the score dtype; unit, their unit rows."""
    B, T, N, Dv = vision.shape
    D = projected.shape[-1]
    dtype = score_dtype(vision, projected, saliency, text)
    frame_text = frame_mask = None
    if text is not None:
        L = text.shape[1]
        frame_text = text.to(dtype)[:, None].expand(B, T, L, D).reshape(B * T, L, D)
        if text_mask is not None:
            frame_mask = text_mask[:, None].expand(B, T, L).reshape(B * T, L)
    score = fused_scores(
        projected.reshape(B * T, N, D).to(dtype), saliency.reshape(B * T, N).to(dtype), frame_text, frame_mask, config
    ).view(B, T, N)
    flat = vision.to(dtype).reshape(B, T * N, Dv)
    return score, flat, F.normalize(flat, dim=-1)  # cosines read unit rows; the partitions get `flat`, as the image rule


def important_tokens(score: torch.Tensor, static: torch.Tensor, k_imp: int, floor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: (B, T, N) bool the image rule's important tokens (each frame's `floor` best, then for
    split="global" the clip's best others up to k_imp), and (B, T, N) those of them skipped: unchanged since
    the same place of the previous frame, where the token is kept (or skipped in turn, back to a kept one)."""
    B, T, N = score.shape
    frame_order = torch.sort(score, dim=2, descending=True, stable=True).indices  # (B, T, N)
    selected = torch.zeros(B, T, N, dtype=torch.bool, device=score.device)
    selected.scatter_(2, frame_order[:, :, :floor], True)
    if k_imp > T * floor:  # split="global": scores in [0, 1], so the floors' picks rank last here
        key = torch.where(selected, score - 2, score).view(B, T * N)
        extra = torch.sort(key, dim=1, descending=True, stable=True).indices[:, : k_imp - T * floor]
        selected.view(B, T * N).scatter_(1, extra, True)
    chain = covered(selected, static)  # (B, T, N)
    skipped = selected & static & torch.cat([torch.zeros_like(chain[:, :1]), chain[:, :-1]], dim=1)
    return selected, skipped


def frame_backgrounds(flat, score, selected, background: int, floor: int, step: int, all_pairs=None):
    """Step 3: every frame's own background, as the image rule picks it: the spec's partition (step 6) of the
    frame's tokens after its `floor` best (selected first, then descending score), batched over all frames,
    first down to a reserve of about twice its share, then on to its share k_frame = background // T. The
    second call continues the rounds of the first, so the share is exactly the image rule's background and
    the reserve holds it. Returns shares (B, T*k_frame) and reserved (B, T*reserve), flat token indices."""
    B, T, N = score.shape
    Dv = flat.shape[-1]
    M = N - floor
    k_frame = min(M, background // T)  # the frame-by-frame rule's background per frame
    reserve = min(M, k_frame + (M - k_frame) % step + step * -(-k_frame // step))  # ~2 k_frame, on a round
    frame_order = torch.sort(torch.where(selected, score + 2, score), dim=2, descending=True, stable=True).indices
    rest = (frame_order[:, :, floor:] + (torch.arange(T, device=flat.device) * N)[None, :, None]).reshape(B, T * M)
    features = flat.gather(1, rest[:, :, None].expand(-1, -1, Dv)).view(B * T, M, Dv)
    reserved = diversity_partition(features, rest.view(B * T, M), reserve, step, all_pairs=all_pairs)  # (B*T, reserve)
    features = flat.gather(1, reserved.view(B, -1, 1).expand(-1, -1, Dv)).view(B * T, reserve, Dv)
    shares = diversity_partition(features, reserved, k_frame, step, all_pairs=all_pairs).reshape(B, T * k_frame)
    return shares, reserved.reshape(B, T * reserve)


def clip_backgrounds(core: ClipCandidates, budget: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-6 for every clip: (B, budget) kept indices ascending and (B, budget) important flags.

    One clip at a time: clips differ in how many important and repeating tokens they have, so these steps
    have data-dependent sizes (the part of the clip rule that a compiled graph does not capture).
    """
    B, T, N = core.score.shape
    by_score = torch.sort(core.score.view(B, T * N), dim=1, descending=True, stable=True).indices  # (B, T*N)
    frame_of = torch.arange(T * N, device=core.score.device) // N  # (T*N,)
    rows, flags = [], []
    for b in range(B):
        clip = OneClip(
            unit=core.unit[b], flat=core.flat[b], frame_of=frame_of, by_score=by_score[b],
            chosen=core.important[b].reshape(T * N).clone(), skipped=core.skipped[b].reshape(T * N),
            static=core.static[b].reshape(T * N), frames=T,
        )
        imp = clip.by_score[clip.chosen[clip.by_score]]  # important tokens, best score first
        diverse = clip.background(imp, core.shares[b], core.reserved[b], budget - imp.numel(), step)
        kept, where = torch.cat([imp, diverse]).sort()
        rows.append(kept)
        flags.append(where < imp.numel())
    return torch.stack(rows), torch.stack(flags)


@dataclass
class OneClip:
    """One clip's tokens for steps 4-5, flat over its T*N tokens: unit (T*N, Dv) unit rows, flat (T*N, Dv)
    features, frame_of / by_score (T*N,) each token's frame and the tokens by descending score, and (T*N,)
    bool: chosen (kept so far, updated here), skipped (covered important tokens), static (unchanged); frames: T."""

    unit: torch.Tensor
    flat: torch.Tensor
    frame_of: torch.Tensor
    by_score: torch.Tensor
    chosen: torch.Tensor
    skipped: torch.Tensor
    static: torch.Tensor
    frames: int

    def ranked(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` neither chosen yet nor skipped, best score first."""
        mask = torch.zeros_like(self.chosen)
        mask[tokens] = True
        return self.by_score[(mask & ~self.chosen & ~self.skipped)[self.by_score]]

    def fresh(self, kept: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
        """The tokens of `ranked` that repeat no token of another frame among `kept` or the earlier ones."""
        return ranked[~repeats(self.unit, self.frame_of, kept, ranked)]

    def background(self, imp: torch.Tensor, shares: torch.Tensor, reserved: torch.Tensor, k_div: int, step: int) -> torch.Tensor:
        """Steps 4-5: the clip's k_div background tokens, given its important tokens `imp` (best first)."""
        # 4. Each frame's share, less the tokens that repeat a kept token of another frame: background shown
        # in several frames is kept once.
        share = self.fresh(imp, self.ranked(shares))
        if share.numel() >= k_div:  # the shares alone fill the budget: the pooled partition thins them
            return diversity_partition(self.flat[share][None], share[None], k_div, step * self.frames)[0]
        # 5. The slots the repeats and skips freed go to the clip's pooled reserve: the reserve tokens of every
        # frame that repeat nothing kept, thinned by the spec's partition over the whole clip.
        self.chosen[share] = True
        spare = self.fresh(torch.cat([imp, share]), self.ranked(reserved))
        need = k_div - share.numel()
        if spare.numel() >= need:
            return torch.cat([share, diversity_partition(self.flat[spare][None], spare[None], need, step)[0]])
        self.chosen[spare] = True
        return torch.cat([share, spare, self.last_resort(imp, torch.cat([share, spare]), need - spare.numel())])

    def last_resort(self, imp: torch.Tensor, background: torch.Tensor, need: int) -> torch.Tensor:
        """Short of reserve tokens (a nearly static clip): `need` more, first those that repeat nothing kept,
        least covered by the kept ones first (unchanged tokens last); only then repeats, first those that
        repeat no kept BACKGROUND token of another frame (they repeat an important token, or only their own
        frame), so a nearly blank clip keeps its blank background in one frame; skipped tokens last of all."""
        kept_so_far = torch.cat([imp, background])
        rest = self.ranked(self.by_score)
        cover = best_cosine(self.unit, rest, kept_so_far) + 3 * self.static[rest]
        rest = rest[torch.sort(cover, stable=True).indices]
        more = take_fresh(self.unit, self.frame_of, kept_so_far, rest, need)
        self.chosen[more] = True
        last = torch.cat([rest, self.by_score[self.skipped[self.by_score]]])
        last = last[~self.chosen[last]]
        again = take_fresh(self.unit, self.frame_of, torch.cat([background, more]), last, need - more.numel())
        self.chosen[again] = True
        return torch.cat([more, again, last[~self.chosen[last]]])[:need]
