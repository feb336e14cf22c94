"""FlashVLM text-guided visual token selection for images (the rule of docs/algorithm.md), batched.

Shapes used throughout:
    B  images (or frames) in the batch
    N  visual tokens per image (LLaVA-1.5: 576)
    Dv vision-encoder width (CLIP ViT-L/14: 1024)
    D  language-model embedding width (LLaVA-1.5-7B: 4096)
    L  guide-text tokens
    K  budget: visual tokens kept per image

Everything here is pure torch: no Python loop over tokens or images. The only loop is over the
rounds of the diversity partition, and every round handles the whole batch at once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

# The spec's fixed denominators for min-max normalisation (not the fusion clamp, which is configurable).
_MINMAX_EPS = 1e-6

# How the guide-text tokens weigh in the relevance (docs/algorithm.md, "Text weighting"): "none" (the
# paper), or "norm": each token's cosines scaled by its raw embedding norm over the row's largest.
TEXT_WEIGHTINGS = ("none", "norm")


@dataclass(frozen=True)
class SelectionConfig:
    """Every constant of the selection rule, with the paper's defaults."""

    token_temperature: float = 0.05  # tau_tok: soft maximum over guide-text tokens
    temperature: float = 0.01  # tau: sharpening softmax over visual tokens
    gamma: float = 2.5  # power applied to the sharpened relevance
    top_p: float = 0.005  # the top quantile (at 1 - p) kept undamped
    damping: float = 0.1  # factor applied to relevance below that quantile
    eta: float = 0.5  # fusion weight of relevance against saliency
    eps: float = 1e-6  # clamp before the logarithm in the fusion
    important_ratio: float = 0.5  # alpha: share of the budget given to the top-ranked tokens
    diversity_step: int = 8  # tokens dropped per round of the diversity partition
    text_weighting: str = "none"  # one of TEXT_WEIGHTINGS: how guide-text tokens weigh in the relevance

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"SelectionConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        check("text_weighting", self.text_weighting in TEXT_WEIGHTINGS, f"one of {TEXT_WEIGHTINGS}")
        for f in fields(self):
            if f.name == "text_weighting":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"SelectionConfig.{f.name} must be a number, got {value!r}")
        check("token_temperature", self.token_temperature > 0, "> 0")
        check("temperature", self.temperature > 0, "> 0")
        check("gamma", self.gamma > 0, "> 0")
        check("top_p", 0 <= self.top_p < 1, "in [0, 1)")
        check("damping", 0 <= self.damping <= 1, "in [0, 1]")
        check("eta", 0 <= self.eta <= 1, "in [0, 1]")
        check("eps", self.eps > 0, "> 0")
        check("important_ratio", 0 <= self.important_ratio <= 1, "in [0, 1]")
        check(
            "diversity_step",
            isinstance(self.diversity_step, int) and self.diversity_step >= 1,
            "an integer >= 1",
        )


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def score_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64 (so the rule can be checked exactly), else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def check_finite(name: str, x: torch.Tensor | None) -> None:
    """ValueError if x holds NaN or Inf.

    A finite sum of x proves every element finite (NaN and Inf propagate into it), so only a non-finite
    one, which large finite values can also cause, pays for the exact elementwise check.
    """
    if x is None or not x.is_floating_point():
        return
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_inputs(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    text_mask: torch.Tensor | None,
    lead: int,
    values: bool = True,
) -> None:
    """Validate shapes shared by the image rule (lead=1: B) and the video rule (lead=2: B, T), and with
    values=True also that no input holds NaN or Inf (callers that read the inputs anyway check as they go).

    Every error is a ValueError that names the offending argument.
    """
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ValueError(f"budget must be an int, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    dims = "(B, N" if lead == 1 else "(B, T, N"
    for name, x, ndim in (("vision", vision, lead + 2), ("projected", projected, lead + 2), ("saliency", saliency, lead + 1)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != ndim:
            want = dims + (", Dv)" if name == "vision" else ", D)" if name == "projected" else ")")
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    tokens = vision.shape[: lead + 1]
    if projected.shape[: lead + 1] != tokens:
        raise ValueError(f"projected leading dims {tuple(projected.shape[: lead + 1])} do not match vision {tuple(tokens)}")
    if saliency.shape != tokens:
        raise ValueError(f"saliency shape {tuple(saliency.shape)} does not match vision's leading dims {tuple(tokens)}")
    if tokens[-1] < 1:
        raise ValueError("vision has no tokens (N = 0)")
    batch = vision.shape[0]
    if text is not None:
        if not isinstance(text, torch.Tensor) or text.ndim != 3 or not text.is_floating_point():
            raise ValueError(f"text must be a floating-point tensor of shape (B, L, D) or None, got {getattr(text, 'shape', text)}")
        if text.shape[0] != batch:
            raise ValueError(f"text batch size {text.shape[0]} does not match vision batch size {batch}")
        if text.shape[2] != projected.shape[-1]:
            raise ValueError(f"text width {text.shape[2]} does not match projected width {projected.shape[-1]}")
    if text_mask is not None:
        if text is None:
            raise ValueError("text_mask was given without text")
        if not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be a bool tensor, got {getattr(text_mask, 'dtype', type(text_mask).__name__)}")
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask shape {tuple(text_mask.shape)} does not match text's (B, L) {tuple(text.shape[:2])}")
    if values:
        check_values(vision, projected, saliency, text)


def check_values(vision: torch.Tensor, projected: torch.Tensor, saliency: torch.Tensor, text: torch.Tensor | None) -> None:
    """ValueError naming the first input that holds NaN or Inf (shapes already checked)."""
    for name, x in (("vision", vision), ("projected", projected), ("saliency", saliency), ("text", text)):
        check_finite(name, x)


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise along the last dim, denominator + 1e-6 as the spec says."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return (x - lo) / (hi - lo + _MINMAX_EPS)


def relevance(
    projected: torch.Tensor,
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    config: SelectionConfig,
    projected_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sharpened text relevance of every visual token (steps 1-2). projected (B, N, D) -> (B, N).

    Rows without guide text (text None, or an all-False mask) get zero relevance, so the fusion's clamp
    at eps leaves them ranked by saliency alone. `projected_norms` (B, N): the row norms of projected,
    when the caller has them. With config.text_weighting "norm", token j's cosines are scaled by
    ||E_j|| / max_k ||E_k|| over the row's real (unmasked) tokens, before the soft maximum.
    """
    B, N, _ = projected.shape
    if text is None:
        return projected.new_zeros(B, N)
    text = text.to(projected.dtype)
    E = F.normalize(text, dim=-1)  # (B, L, D)
    if config.text_weighting == "norm":
        # Scaling E's rows scales S's rows; equal norms give a weight of exactly 1, so "none"'s exact result.
        norms = torch.linalg.vector_norm(text, dim=-1)  # (B, L) raw, before normalisation
        if text_mask is not None:
            norms = norms.masked_fill(~text_mask, 0.0)  # padding neither sets the maximum nor counts
        E = E * (norms / norms.amax(dim=1, keepdim=True).clamp_min(1e-12))[:, :, None]
    # Divide by the row norms of P instead of normalising P: P is the largest input (B x 576 x 4096).
    if projected_norms is None:
        projected_norms = torch.linalg.vector_norm(projected, dim=-1)
    # (B, L, N): text rows against visual columns, the faster layout for a short text and a long P.
    S = (E @ projected.transpose(1, 2)) / projected_norms.clamp_min(1e-12)[:, None, :]  # cosine similarities
    logits = S / config.token_temperature
    has_text = torch.ones(B, dtype=torch.bool, device=projected.device)
    if text_mask is not None:
        logits = logits.masked_fill(~text_mask[:, :, None], float("-inf"))
        has_text = text_mask.any(dim=1)  # (B,)
        # An all-masked row would softmax to NaN; give it a harmless mask and zero it below.
        logits = torch.where(has_text[:, None, None], logits, torch.zeros_like(logits))
    r = (S * logits.softmax(dim=1)).sum(dim=1)  # (B, N) soft maximum over text tokens

    # softmax(r / tau) ** gamma, in the log domain so that float32 underflows later and more gracefully.
    r = torch.exp(config.gamma * torch.log_softmax(r / config.temperature, dim=-1))
    r = minmax(r)
    if config.top_p > 0:
        q = torch.quantile(r, 1 - config.top_p, dim=-1, keepdim=True, interpolation="linear")  # (B, 1)
        r = torch.where(r >= q, r, r * config.damping)
    else:
        r = r * config.damping  # no quantile above 1: everything is damped, and min-max undoes it
    r = minmax(r)
    return torch.where(has_text[:, None], r, torch.zeros_like(r))


def fused_scores(
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None = None,
    config: SelectionConfig | None = None,
    projected_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The importance score of every visual token (steps 1-4): (B, N) in [0, 1], in the score dtype.

    Inputs are assumed validated and already cast to the score dtype.
    """
    config = config or SelectionConfig()
    r = relevance(projected, text, text_mask, config, projected_norms)  # (B, N)
    a = minmax(saliency)  # (B, N)
    eps = config.eps
    log_s = (1 - config.eta) * torch.log(a.clamp_min(eps)) + config.eta * torch.log(r.clamp_min(eps))
    return minmax(torch.exp(log_s))


# --------------------------------------------------------------------------------------------------
# Diversity-preserving partition (step 6)
# --------------------------------------------------------------------------------------------------


# Each token's most similar other tokens, looked up before any pair is read: in the early rounds, where B is
# half of the list, the first of them that is in B is almost always among these few.
NEIGHBOURS = 8


def bmm_into(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
    """out = x @ y for a block view `out`: written in place eagerly (no block-sized temporary); assigned when
    compiling, since dynamo cannot trace `out=` into a non-contiguous view. The same product either way."""
    if torch.compiler.is_compiling():
        out.copy_(torch.bmm(x, y))
    else:
        torch.bmm(x, y, out=out)


def cosine_matrix(unit: torch.Tensor) -> torch.Tensor:
    """(B, M, Dv) unit rows -> (B, M, M) their cosines, unit @ unit^T.

    The matrix is symmetric, so it is computed as three of its four blocks and the fourth is the
    transpose of its mirror: a quarter of the products saved, each entry still one dot product.
    """
    B, M, _ = unit.shape
    h = M // 2
    sim = unit.new_empty(B, M, M)
    top, bottom = unit[:, :h], unit[:, h:]  # (B, h, Dv), (B, M - h, Dv)
    bmm_into(sim[:, :h, :h], top, top.transpose(1, 2))
    bmm_into(sim[:, :h, h:], top, bottom.transpose(1, 2))
    bmm_into(sim[:, h:, h:], bottom, bottom.transpose(1, 2))
    sim[:, h:, :h] = sim[:, :h, h:].transpose(1, 2)
    return sim


def row_keys(unit: torch.Tensor) -> torch.Tensor:
    """(B, M, Dv) float rows -> (B, M, 2) float64 integer keys, equal for equal rows wherever they sit.

    A key is a weighted sum of the rows' bit patterns cut into 16-bit halves, with integer weights small
    enough that every partial sum stays below 2^53: the float64 product is then exact in any summation
    order, so a row's key does not depend on its position (unlike its cosines). Distinct rows share both
    keys only if two independent weighted sums of their difference vanish, which no caller relies on
    (`first_identical` compares rows exactly after sorting by key).
    """
    x = unit.float() if unit.element_size() < 4 else unit  # 16-bit rows widen exactly (equal stays equal)
    x = torch.where(x == 0, torch.zeros_like(x), x)  # -0.0 == 0.0, as torch.unique treats them
    bits = x.contiguous().view(torch.int32)  # (B, M, W): float64 rows give two words an element
    W = bits.shape[-1]
    halves = torch.cat([bits & 0xFFFF, (bits >> 16) & 0xFFFF], dim=-1).to(torch.float64)  # (B, M, 2W) in [0, 2^16)
    weight_bits = min(21, 52 - 16 - (2 * W).bit_length())  # sum of 2W products < 2^52
    d = torch.arange(2 * W, device=unit.device, dtype=torch.int64)[:, None]  # (2W, 1)
    mix = torch.tensor([2654435761, 2246822519], device=unit.device, dtype=torch.int64)  # odd multipliers
    weights = ((d * mix + 12345) % (2**weight_bits) + 1).to(torch.float64)  # (2W, 2) integers in [1, 2^bits]
    return halves @ weights


def first_identical(unit: torch.Tensor) -> torch.Tensor:
    """(B, M, Dv) rows -> (B, M) int64: each row's lowest-index exactly equal row of its image (itself if none).

    Static shapes and no host sync: rows are sorted by their keys (`row_keys`), ties by index, so copies of
    one vector stand together with their first copy at the head; neighbours in that order are then compared
    exactly, element by element, so a key shared by distinct rows never joins them.
    """
    B, M, _ = unit.shape
    keys = row_keys(unit)  # (B, M, 2)
    order = torch.sort(keys[..., 1], dim=1, stable=True).indices  # (B, M)
    order = order.gather(1, torch.sort(keys[..., 0].gather(1, order), dim=1, stable=True).indices)  # by (key0, key1, index)
    rows = unit.gather(1, order[:, :, None].expand_as(unit))  # (B, M, Dv) in that order
    same = (rows[:, 1:] == rows[:, :-1]).all(dim=-1)  # (B, M-1): equal to the row before
    start = torch.cat([torch.ones_like(same[:, :1]), ~same], dim=1)  # (B, M) first of its run
    position = torch.arange(M, device=unit.device).expand(B, M)
    head = torch.where(start, position, torch.zeros_like(position)).cummax(dim=1).values  # (B, M) run's start
    return torch.empty_like(order).scatter_(1, order, order.gather(1, head))


def identical_rows_as_one(unit: torch.Tensor, sim: torch.Tensor, flagged: torch.Tensor | None = None) -> None:
    """In place: identical rows of `unit` read as one vector in `sim`, in every image or only in `flagged`.

    unit: (B, M, Dv) unit rows; sim: (B, M, M) their cosine matrix; flagged: (F,) the images that may hold
    identical rows (None: every image, with no host sync). A matrix product rounds each entry by where it
    sits in the matrix, so two copies of one vector get cosines that differ in the last bits, and a sort
    then orders them by rounding instead of by position. Here every row and column of a copy is replaced by
    those of its first copy, and copies' cosine to each other is exactly 1: ties between copies are exact,
    and stable sorts break them by position, as the spec says. An image without copies is left as it was
    (its diagonal aside, which every caller overwrites).
    """
    rows, s = (unit, sim) if flagged is None else (unit[flagged], sim[flagged])  # (F, M, Dv), (F, M, M)
    count, M, _ = rows.shape
    first = first_identical(rows)  # (F, M)
    s = s.gather(1, first[:, :, None].expand(count, M, M)).gather(2, first[:, None, :].expand(count, M, M))
    s.masked_fill_(first[:, :, None] == first[:, None, :], 1.0)
    if flagged is None:
        sim.copy_(s)
    else:
        sim[flagged] = s


def neighbour_lists(unit: torch.Tensor, sim: torch.Tensor, k: int) -> torch.Tensor:
    """(B*M, k) each token's k most similar other tokens, most similar first; in place, `sim` (B, M, M) gets
    identical rows as one and its diagonal at -inf, as the partition reads it.

    Identical rows compute a cosine within 2 (Dv + 8) eps of 1 (worst-case rounding of their normalisation and
    of a Dv-term dot product): only images with such a pair are searched for identical rows (the host learns
    which), and their lists are sorted again.
    """
    B, M, _ = sim.shape
    sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # a token is never its own neighbour
    nearest, neighbours = sim.view(B * M, M).topk(k, dim=1)  # (B*M, k)
    maybe_identical = 1 - 2 * (unit.shape[-1] + 8) * torch.finfo(unit.dtype).eps
    flagged = (nearest[:, 0] >= maybe_identical).view(B, M).any(dim=1).nonzero().squeeze(1)  # (F,)
    if flagged.numel():
        identical_rows_as_one(unit, sim, flagged)
        sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        neighbours.view(B, M, k)[flagged] = sim[flagged].topk(k, dim=2).indices
    return neighbours


def most_similar_in_b(sim: torch.Tensor, rows: torch.Tensor, Bo: torch.Tensor, M: int) -> torch.Tensor:
    """(B, a) each A token's highest cosine to any token of B, reading every (a, b) pair.

    sim: (B*M*M,) the flat cosine matrices; rows: (B, a) the A tokens' rows in them; Bo: (B, b) positions of
    the B tokens.
    """
    B, a = rows.shape
    pairs = (rows[:, :, None] * M + Bo[:, None, :]).reshape(-1)  # (B*a*b,)
    return sim.index_select(0, pairs).view(B, a, -1).amax(dim=-1)


def most_similar_in_b_by_neighbours(
    sim: torch.Tensor, neighbours: torch.Tensor, rows: torch.Tensor, Bo: torch.Tensor, M: int
) -> torch.Tensor:
    """`most_similar_in_b` from the neighbour lists (B*M, k): the cosine of each A token's first neighbour
    in B; only rows with none of their neighbours in B read every pair (the host learns which)."""
    B, a = rows.shape
    b, k = Bo.shape[1], neighbours.shape[1]
    rows = rows.reshape(B * a)
    in_b = torch.zeros(B, M, dtype=torch.bool, device=rows.device)
    in_b.scatter_(1, Bo, True)
    near = neighbours.index_select(0, rows)  # (B*a, k)
    hit = in_b.gather(1, near.view(B, a * k)).view(B * a, k)
    first = near.gather(1, hit.to(torch.uint8).argmax(dim=1, keepdim=True)).squeeze(1)  # first in B
    best = sim.index_select(0, rows * M + first).view(B, a)
    miss = ~hit.any(dim=1)
    if bool(miss.any()):  # no neighbour in B: every (a, b) pair of those rows
        idx = miss.nonzero().squeeze(1)  # (n_miss,) into B*a
        pairs = (rows[idx, None] * M + Bo[idx // a]).reshape(-1)
        best.view(-1)[idx] = sim.index_select(0, pairs).view(-1, b).amax(dim=1)
    return best


def diversity_partition(
    features: torch.Tensor,
    residual: torch.Tensor,
    keep: int,
    step: int,
    *,
    normalised: bool = False,
    all_pairs: bool | None = None,
) -> torch.Tensor:
    """Shrink each row's residual list to `keep` tokens that stay visually diverse (step 6 of the spec).

    features: (B, M, Dv) features of the residual tokens, in residual order; L2-normalised here, unless
        normalised=True says the caller already did.
    residual: (B, M) token indices, in descending score order.
    Returns (B, keep) token indices, in the partition's final order (not sorted).

    The cosine matrix of the residual tokens is computed once per row and only read afterwards: a
    round needs, for every token a of A, max over b in B of cos(a, b). Each token's NEIGHBOURS most
    similar other tokens are sorted once (topk), so that max is the cosine of the first of them that is
    in B; rows whose neighbours are all outside B, and the late rounds where B is small, read every
    (a, b) pair directly. Both give exactly the maximum. Every row has the same M, so every round has
    the same shapes across the batch. Identical unit rows are one vector (`identical_rows_as_one`): their
    cosine to each other is exactly 1 and each copy reads the same cosines, so their ties are exact.

    all_pairs: read every (a, b) pair in every round, and search every image for identical rows (default: on
        an accelerator). The neighbour lists save reads on a CPU, but their fallback for rows with no neighbour
        in B asks the host whether there are any, once a round, and only images with a near-1 cosine are
        searched for identical rows, which asks the host which those are; on a GPU those host syncs, not the
        reads, bound the time. With all_pairs every round has the same operations on static shapes and
        nothing waits for the device: the partition can be captured whole (`torch.compile(fullgraph=True)`,
        CUDA graphs). Both ways give exactly the same maximum, so the same tokens.
    """
    B, M = residual.shape
    if keep >= M:
        return residual
    if keep == 0:
        return residual[:, :0]
    device = residual.device
    unit = features if normalised else features / torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-12)
    sim = cosine_matrix(unit)  # (B, M, M)
    k = min(NEIGHBOURS, M - 1)
    if all_pairs is None:
        all_pairs = device.type != "cpu"
    if all_pairs:
        identical_rows_as_one(unit, sim)  # every image: no branch on what the device computed
        # A token is never in B with itself (no round reads the diagonal).
        sim.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
        neighbours = None
    else:
        neighbours = neighbour_lists(unit, sim, k)  # (B*M, k)
    sim = sim.view(B * M * M)  # flat: one gather a read
    offset = torch.arange(B, device=device)[:, None] * M  # (B, 1): row b's tokens are b*M .. b*M + M-1
    R = torch.arange(M, device=device).expand(B, M)  # positions into the residual list
    while R.shape[1] > keep:  # shapes only: the rounds are the same for every input of these shapes
        m = min(step, R.shape[1] - keep)
        A, Bo = R[:, 0::2], R[:, 1::2]  # even and odd positions of the current list
        if A.shape[1] == 0 or Bo.shape[1] == 0:
            break
        rows = A + offset  # (B, a) row of each A token in the stacked matrix
        if all_pairs or Bo.shape[1] <= 2 * k:  # a small B (or an accelerator): read every (a, b) pair
            best = most_similar_in_b(sim, rows, Bo, M)
        else:
            best = most_similar_in_b_by_neighbours(sim, neighbours, rows, Bo, M)
        order = torch.sort(best, dim=1, descending=True, stable=True).indices  # most redundant first
        R = torch.cat([A.gather(1, order[:, m:]), Bo], dim=1)
    R = R[:, :keep]  # only reached past `keep` when keep == 0 stops on an empty B
    return residual.gather(1, R)


# --------------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------------


def split_budget(budget: int, config: SelectionConfig) -> tuple[int, int]:
    """(important, diverse) token counts for a budget: K_imp = floor(K * alpha), K_div = K - K_imp."""
    important = int(budget * config.important_ratio)
    return important, budget - important


def select_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Indices of the visual tokens FlashVLM keeps for each image.

    Args:
        vision: (B, N, Dv) vision-encoder features at the layer the projector reads.
        projected: (B, N, D) the same tokens after the projector (language-model input space).
        saliency: (B, N) intrinsic saliency, e.g. [CLS] attention averaged over heads.
        text: (B, L, D) input embeddings of the guide text, or None to rank by saliency alone.
        budget: tokens kept per image; budget >= N keeps all of them.
        text_mask: (B, L) bool, True for real tokens, for guide texts of different lengths.
        config: the rule's constants; the paper's defaults when None.
        return_important: also return which kept tokens were chosen as important (the rest are the
            diverse background), e.g. to draw them in two colours.

    Returns:
        (B, min(budget, N)) int64 indices, distinct and ascending in every row; with return_important,
        also a bool tensor of the same shape, True where the kept token is an important one.

    Ties keep the lower index first (stable sorts). Tied saliency and identical vision rows tie exactly;
    identical `projected` rows get relevances that may differ in their last bits (the products round by
    position), so with a guide text their order can follow that rounding.
    """
    config = config or SelectionConfig()
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=1, values=False)
    B, N, Dv = vision.shape
    if budget >= N:
        check_values(vision, projected, saliency, text)  # bad values are an error even when nothing is pruned
        kept = torch.arange(N, device=vision.device).expand(B, N).clone()
        return (kept, torch.ones_like(kept, dtype=torch.bool)) if return_important else kept

    kept, important, finite = select_core(vision, projected, saliency, text, text_mask, budget, config)
    if not bool(finite):  # a reduction overflowed or an input holds NaN/Inf: the exact check names it
        check_values(vision, projected, saliency, text)
    return (kept, important) if return_important else kept


def all_finite(*reductions: torch.Tensor | None) -> torch.Tensor:
    """() bool: True when every given reduction (norms, sums) is finite, which proves its inputs finite."""
    finite = [torch.isfinite(x).all() for x in reductions if x is not None]
    return torch.stack(finite).all()


def select_core(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    budget: int,
    config: SelectionConfig,
    all_pairs: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rule on checked inputs with budget < N: (B, K) kept indices ascending, (B, K) important flags, and
    a () bool that is False when an input may hold NaN or Inf (the caller checks it, exactly, on the host).

    With all_pairs (default: on an accelerator) nothing here waits for the device or branches on its values:
    for given shapes, dtypes, budget and config every call runs the same operations, so
    `torch.compile(select_core, fullgraph=True)` captures it whole.
    """
    B, N, Dv = vision.shape
    dtype = score_dtype(vision, projected, saliency, text)
    projected, vision, saliency = projected.to(dtype), vision.to(dtype), saliency.to(dtype)
    text = None if text is None else text.to(dtype)
    # The two large inputs are read for their row norms first; those norms also prove them finite.
    projected_norms = torch.linalg.vector_norm(projected, dim=-1)  # (B, N)
    vision_norms = torch.linalg.vector_norm(vision, dim=-1)  # (B, N)
    finite = all_finite(projected_norms, vision_norms, saliency.sum(), None if text is None else text.sum())
    score = fused_scores(projected, saliency, text, text_mask, config, projected_norms)  # (B, N)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # (B, N), ties by position
    k_imp, k_div = split_budget(budget, config)
    important, residual = order[:, :k_imp], order[:, k_imp:]  # (B, K_imp), (B, M = N - K_imp)

    # The residual tokens' unit features: gathered into a fresh tensor and normalised in place.
    rows = (residual + torch.arange(B, device=vision.device)[:, None] * N).reshape(-1)  # (B*M,) into B*N
    unit = vision.reshape(B * N, Dv).index_select(0, rows)  # (B*M, Dv)
    unit /= vision_norms.reshape(B * N).index_select(0, rows).clamp_min(1e-12)[:, None]
    diverse = diversity_partition(
        unit.view(B, -1, Dv), residual, k_div, config.diversity_step, normalised=True, all_pairs=all_pairs
    )  # (B, K_div)
    kept, position = torch.cat([important, diverse], dim=1).sort(dim=1)  # (B, K) ascending
    return kept, position < k_imp, finite  # the first K_imp entries before sorting were the important ones
