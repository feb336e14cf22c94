"""Seeded random inputs of the selection rules, shared by the image, clip and comparison-selector tests."""

import torch


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
