"""Seeded random inputs of the selection rules, shared by the image, clip and comparison-selector tests."""

import torch
from hypothesis import strategies as st

from flashvlm import SelectionConfig
from flashvlm.selection import TEXT_WEIGHTINGS


def make_inputs(seed, B, N, Dv, D, L, dtype=torch.float64):
    """(B, N, Dv) vision, (B, N, D) projected, (B, N) saliency in [0, 1) and (B, L, D) text."""
    return make_clip(seed, B, None, N, Dv, D, L, dtype)


def make_clip(seed, B, T, N, Dv, D, L, dtype=torch.float64):
    """(B, T, N, Dv) vision, (B, T, N, D) projected, (B, T, N) saliency and (B, L, D) text; T None: no frame axis."""
    g = torch.Generator().manual_seed(seed)
    lead = (B, N) if T is None else (B, T, N)
    vision = torch.randn(*lead, Dv, generator=g, dtype=dtype)
    projected = torch.randn(*lead, D, generator=g, dtype=dtype)
    saliency = torch.rand(*lead, generator=g, dtype=dtype)
    text = torch.randn(B, L, D, generator=g, dtype=dtype)
    return vision, projected, saliency, text


def input_sizes(**ranges):
    """A strategy of dicts: a seed, a batch size B in 1..3 and each named size drawn from its (low, high)."""
    sizes = {name: st.integers(low, high) for name, (low, high) in ranges.items()}
    return st.fixed_dictionaries({"seed": st.integers(0, 2**31 - 1), "B": st.integers(1, 3), **sizes})


def selection_configs(**more):
    """A strategy of SelectionConfigs over the constants every rule reads, plus `more` (field: strategy)."""
    return st.builds(
        SelectionConfig,
        important_ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        diversity_step=st.integers(1, 9),
        text_weighting=st.sampled_from(TEXT_WEIGHTINGS),
        **more,
    )
