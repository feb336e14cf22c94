"""Comparison selectors: the baselines FlashVLM is measured against, callable by name.

Every selector has the signature of `select_tokens` (images) or `select_video_tokens` (clips), the same
input checks and errors (it reuses theirs), and the same contract: exactly min(budget, N) (a clip:
min(budget, T*N)) distinct indices per row, ascending, batched, CPU or CUDA; a budget at least the
token count keeps everything. Clip indices are flat and frame-major (t * N + n).

    flashvlm   `select_tokens` / `select_video_tokens` themselves: text relevance, saliency, diversity.
    saliency   the same rule without text: saliency plus the diversity partition, FlashVLM's own no-text
               path (close to VisionZip's dominant tokens). Clips: `select_video_tokens` without text.
    diversity  max-min diversity of the vision features alone: greedy farthest-point selection
               (DivPrune's idea), see `farthest_points`. Clips: over all the clip's tokens at once.
    uniform    a regular spatial grid of positions in every frame (what pooling or a smaller input
               keeps), see `grid_positions`. Clips: per frame, `frame_budgets` of the clip budget.
    random     a seeded uniform sample, reproducible and independent of batching (`random_tokens`).
               Clips: over all the clip's tokens at once.

`return_important=True` gives, as for flashvlm, a bool tensor beside the indices. Only flashvlm and
saliency split the budget into important and background tokens; diversity, uniform and random have no
such split and return all-False flags (also when they keep everything).

The text-free selectors still take `text` and `text_mask` and check them as `select_tokens` does, so that
any selector can replace another in the same call; `config` is read by flashvlm and saliency only.
flashvlm also takes `text_weighting` ("none" or "norm", `flashvlm.selection.TEXT_WEIGHTINGS`) as an option
of its own: it replaces that field of `config`, so a sweep can vary it per setting.

    kept = select("diversity", vision, projected, saliency, text, 64)
    kept = select_video("random", vision, projected, saliency, text, 64 * T, seed=3)
    kept = select("flashvlm", vision, projected, saliency, text, 64, text_weighting="norm")
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from flashvlm.selection import SelectionConfig, check_finite, check_inputs, cosine_matrix, score_dtype, select_tokens
from flashvlm.video import select_video_tokens

Kept = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

# The largest cosine matrix (entries, per chunk of the batch) `farthest_points` builds: 128 MiB in float32.
# One LLaVA image (576 tokens) is 0.33 M entries; one clip of 8 such frames is 21 M.
MATRIX_ENTRIES = 2**25


def _flags(kept: torch.Tensor, return_important: bool) -> Kept:
    """The methods without an important/background split: all-False flags when asked for."""
    return (kept, torch.zeros_like(kept, dtype=torch.bool)) if return_important else kept


# --------------------------------------------------------------------------------------------------
# saliency: FlashVLM's rule without text
# --------------------------------------------------------------------------------------------------


def saliency_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """`select_tokens` with the text left out: the top saliency share of the budget plus the diversity
    partition's background. `text` is checked, never read."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=1, values=False)
    check_finite("text", text)
    return select_tokens(vision, projected, saliency, None, budget, config=config, return_important=return_important)


def saliency_video_tokens(
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
) -> Kept:
    """`select_video_tokens` with the text left out (its clip-wide background and repeat removal stay)."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2, values=False)
    check_finite("text", text)
    return select_video_tokens(
        vision, projected, saliency, None, budget,
        split=split, min_per_frame=min_per_frame, config=config, return_important=return_important,
    )


# --------------------------------------------------------------------------------------------------
# diversity: greedy max-min (farthest-point) selection on the vision features
# --------------------------------------------------------------------------------------------------


def _farthest(unit: torch.Tensor, count: int, sim: torch.Tensor | None) -> torch.Tensor:
    """The greedy rounds of `farthest_points` on (B, M, Dv) unit rows; `sim` their (B, M, M) cosines, or
    None to compute each pick's cosines when it is picked."""
    B, M, _ = unit.shape
    rows = torch.arange(B, device=unit.device)

    def cosines(pick: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, M): every token against each row's pick
        if sim is not None:
            return sim[rows, pick]
        return torch.bmm(unit, unit[rows, pick][:, :, None]).squeeze(-1)

    centroid = unit.mean(dim=1)  # (B, Dv)
    pick = torch.bmm(unit, centroid[:, :, None]).squeeze(-1).argmin(dim=1)  # (B,) least like the average token
    picks = [pick]
    taken = torch.zeros(B, M, dtype=torch.bool, device=unit.device)
    taken[rows, pick] = True
    nearest = cosines(pick)  # (B, M) each token's highest cosine to any pick so far
    for _ in range(count - 1):
        # The token farthest from everything picked: lowest highest-cosine (argmin: the first on ties).
        pick = nearest.masked_fill(taken, float("inf")).argmin(dim=1)
        taken[rows, pick] = True
        nearest = torch.maximum(nearest, cosines(pick))
        picks.append(pick)
    return torch.stack(picks, dim=1)


def farthest_points(unit: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy max-min diversity: (B, M, Dv) L2-normalised rows -> (B, count) indices in the order picked.

    Distance is cosine distance (1 - cosine). The first pick (the seed) is the token least similar to
    the mean of the unit features (the average token), so the seed does not depend on token order; every
    later pick is the token whose highest cosine to the tokens picked so far is the lowest, i.e. the one
    farthest from all of them. Ties go to the lower index. The cosine matrix of each item is computed
    once and read in every round when it has at most MATRIX_ENTRIES entries (the batch runs in chunks that
    fit); longer clips compute each pick's cosines in its round instead (same values up to rounding).
    """
    B, M, _ = unit.shape
    if not 0 <= count <= M:
        raise ValueError(f"count must be in [0, M = {M}], got {count}")
    if count == 0:
        return torch.zeros(B, 0, dtype=torch.long, device=unit.device)
    if M * M > MATRIX_ENTRIES:
        return _farthest(unit, count, None)
    chunk = MATRIX_ENTRIES // (M * M)
    return torch.cat([_farthest(part, count, cosine_matrix(part)) for part in unit.split(chunk)])


def _diverse(vision: torch.Tensor, budget: int, return_important: bool) -> Kept:
    """(B, M, Dv) features -> the min(budget, M) farthest points of every row, ascending."""
    B, M, _ = vision.shape
    if budget >= M:
        return _flags(torch.arange(M, device=vision.device).expand(B, M).clone(), return_important)
    unit = F.normalize(vision.to(score_dtype(vision)), dim=-1)
    return _flags(farthest_points(unit, budget).sort(dim=1).values, return_important)


def diversity_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """The `budget` most mutually distant tokens of each image by `farthest_points` on `vision`."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=1)
    return _diverse(vision, budget, return_important)


def diversity_video_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """`farthest_points` over all T*N tokens of each clip at once: a background repeated in every frame is
    one cluster and is kept about once, and frames get the tokens their diversity earns."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N, Dv = vision.shape
    return _diverse(vision.reshape(B, T * N, Dv), budget, return_important)


# --------------------------------------------------------------------------------------------------
# uniform: a regular grid of positions in every frame
# --------------------------------------------------------------------------------------------------


def token_grid(grid: tuple[int, int] | None, N: int) -> tuple[int, int]:
    """(rows, cols) of a frame's N tokens: `grid` when given (rows * cols must be N), else a square."""
    if grid is None:
        side = math.isqrt(N)
        if side * side != N:
            raise ValueError(f"grid: N = {N} tokens is not a square; pass grid=(rows, cols)")
        return side, side
    ok = isinstance(grid, (tuple, list)) and len(grid) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in grid
    )
    if not ok or grid[0] * grid[1] != N:
        raise ValueError(f"grid must be (rows, cols) of positive ints with rows * cols = N = {N}, got {grid!r}")
    return grid[0], grid[1]


def grid_positions(rows: int, cols: int, count: int) -> torch.Tensor:
    """`count` positions (0 <= count <= rows * cols) spread evenly over a rows x cols grid: (count,) raster
    indices y * cols + x, ascending.

    r grid rows are used, about sqrt(count * rows / cols) so that the spacing is about equal in both
    directions (at least ceil(count / cols), so that every used row has room). Row i of them takes
    count * (i+1) // r - count * i // r positions, so row counts differ by at most one and the total is
    exactly `count`. A row of c positions sits at y = (2i + 1) * rows // (2r) and its positions at
    x = (2j + 1) * cols // (2c): the centres of r equal bands and of c equal cells (24 x 24 at 64: the
    8 x 8 grid 1, 4, ..., 22 in both directions, a 3 x 3 pooling's centres).
    """
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    r = max(-(-count // cols), min(rows, count, round(math.sqrt(count * rows / cols))))
    i = torch.arange(r)
    counts = (i + 1) * count // r - i * count // r  # (r,) each >= 1 and <= cols
    row = torch.repeat_interleave(i, counts)  # (count,) which used row each position is in
    start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    j = torch.arange(count) - start  # (count,) its place within that row
    y = (2 * row + 1) * rows // (2 * r)
    x = (2 * j + 1) * cols // (2 * counts[row])
    return y * cols + x


def frame_budgets(budget: int, T: int) -> list[int]:
    """A clip budget split over T frames: budget // T each, the remainder one each to the first frames."""
    return [budget // T + (t < budget % T) for t in range(T)]


def uniform_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """`grid_positions` of each image's token grid: the same positions for every image.

    grid: (rows, cols) of the N tokens in raster order; None means a square (N must be one).
    """
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=1)
    B, N = saliency.shape
    rows, cols = token_grid(grid, N)
    kept = grid_positions(rows, cols, min(budget, N)).to(vision.device)
    return _flags(kept.expand(B, -1).clone(), return_important)


def uniform_video_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    grid: tuple[int, int] | None = None,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """`grid_positions` in every frame, with `frame_budgets` of the clip budget (a frame may get none)."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N = saliency.shape
    rows, cols = token_grid(grid, N)
    counts = frame_budgets(min(budget, T * N), T)
    kept = torch.cat([grid_positions(rows, cols, c) + t * N for t, c in enumerate(counts)]).to(vision.device)
    return _flags(kept.expand(B, -1).clone(), return_important)


# --------------------------------------------------------------------------------------------------
# random: a seeded sample, keyed by each image's own values
# --------------------------------------------------------------------------------------------------


def _is_seed(seed: object) -> bool:
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63


def _row_seeds(seed: int | Sequence[int], rows: int) -> list[int]:
    """One seed per row: `seed` for every row, or a sequence of `rows` seeds, one each."""
    if _is_seed(seed):
        return [seed] * rows  # type: ignore[list-item]
    if isinstance(seed, (list, tuple)) and len(seed) == rows and all(_is_seed(s) for s in seed):
        return list(seed)
    raise ValueError(f"seed must be an int in [0, 2**63) or a list of {rows} of them (one a row), got {seed!r}")


def _sample(saliency: torch.Tensor, budget: int, seed: int | Sequence[int], return_important: bool) -> Kept:
    """(B, M) saliency -> min(budget, M) tokens of every row drawn uniformly without replacement, ascending."""
    B, M = saliency.shape
    seeds = _row_seeds(seed, B)
    count = min(budget, M)
    data = saliency.detach().contiguous().cpu()
    picks = []
    for row, row_seed in zip(data, seeds):  # one generator per image: a loop over images, not tokens
        key = row_seed.to_bytes(8, "little")
        digest = hashlib.blake2b(row.view(torch.uint8).numpy().tobytes(), digest_size=8, key=key)
        generator = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little"))
        picks.append(torch.randperm(M, generator=generator)[:count])
    kept = torch.stack(picks).sort(dim=1).values if B else torch.zeros(0, count, dtype=torch.long)
    return _flags(kept.to(saliency.device), return_important)


def random_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    seed: int | Sequence[int] = 0,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """A uniform random sample of each image's tokens, reproducible from `seed` (an int in [0, 2**63), or
    a list of B of them, one per image).

    Each image's generator (CPU, torch's) is seeded with a hash of its seed and the image's saliency bytes:
    the draw is a function of the seed and the image alone, the same in any batch and on any device, and
    different images draw differently. Images with byte-identical saliency and the same seed draw the same
    tokens (the same values in another dtype are other bytes); a seed per row gives each row its own draw
    of one image (e.g. every question about a clip, as the evaluation asks them).
    """
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=1)
    return _sample(saliency, budget, seed, return_important)


def random_video_tokens(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    *,
    text_mask: torch.Tensor | None = None,
    seed: int | Sequence[int] = 0,
    config: SelectionConfig | None = None,
    return_important: bool = False,
) -> Kept:
    """A uniform random sample of all T*N tokens of each clip (frames get binomially many); `seed` as for
    `random_tokens` (a list: one seed per clip row)."""
    check_inputs(vision, projected, saliency, text, budget, text_mask, lead=2)
    B, T, N = saliency.shape
    return _sample(saliency.reshape(B, T * N), budget, seed, return_important)


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A selector by name: its image form (`select_tokens`' signature) and clip form (`select_video_tokens`').

    config_options: SelectionConfig fields the method also takes as options; each replaces that field of
    the `config` it is given (or of the defaults).
    """

    image: Callable[..., Kept]
    video: Callable[..., Kept]
    config_options: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    "flashvlm": Method(select_tokens, select_video_tokens, config_options=("text_weighting",)),
    "saliency": Method(saliency_tokens, saliency_video_tokens),
    "diversity": Method(diversity_tokens, diversity_video_tokens),
    "uniform": Method(uniform_tokens, uniform_video_tokens),
    "random": Method(random_tokens, random_video_tokens),
}


def method_options(method: str, video: bool = False) -> tuple[str, ...]:
    """The keyword options a method takes, e.g. ("text_mask", "seed", "config", "return_important"), then
    its `config_options` (flashvlm: "text_weighting")."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    fn = METHODS[method].video if video else METHODS[method].image
    keywords = tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)
    return keywords + METHODS[method].config_options


def _selector(method: str, video: bool, options: dict) -> tuple[Callable[..., Kept], dict]:
    """The method's function and the keywords it gets: `options` checked, config options folded into `config`."""
    known = method_options(method, video)
    for name in options:
        if name not in known:
            raise ValueError(f"method {method!r} has no option {name!r}; its options: {', '.join(known)}")
    fields = {k: options[k] for k in METHODS[method].config_options if k in options}
    if fields:
        config = options.get("config") or SelectionConfig()
        options = {k: v for k, v in options.items() if k not in fields}
        options["config"] = dataclasses.replace(config, **fields)  # validated by SelectionConfig
    return (METHODS[method].video if video else METHODS[method].image), options


def select(
    method: str,
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    **options,
) -> Kept:
    """Image selection by method name (one of METHODS): vision (B, N, Dv), projected (B, N, D), saliency
    (B, N), text (B, L, D) or None -> (B, min(budget, N)) ascending indices. `options` are the method's
    keywords (`method_options`); one it does not take is a ValueError naming it."""
    fn, options = _selector(method, False, options)
    return fn(vision, projected, saliency, text, budget, **options)


def select_video(
    method: str,
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    **options,
) -> Kept:
    """Clip selection by method name: vision (B, T, N, Dv), projected (B, T, N, D), saliency (B, T, N), text
    (B, L, D) or None, budget over the clip -> (B, min(budget, T*N)) ascending flat t * N + n indices."""
    fn, options = _selector(method, True, options)
    return fn(vision, projected, saliency, text, budget, **options)
