"""The selection rule written the straightforward way: one image at a time, one round at a time.

This is the oracle the tests check `select_tokens` against and the baseline `benchmarks/selection.py`
measures the batched code against. It follows docs/algorithm.md line by line and recomputes the similarity
products in every diversity round, as the authors' release does; identical feature rows are one vector
(cosine 1 to each other, one set of products), so that their ties are exact. Do not use it in production code.
"""

from __future__ import annotations

import torch

from flashvlm.selection import SelectionConfig


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


def reference_select_one(
    vision: torch.Tensor,
    projected: torch.Tensor,
    saliency: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    config: SelectionConfig | None = None,
) -> torch.Tensor:
    """vision (N, Dv), projected (N, D), saliency (N,), text (L, D) or None -> ascending kept indices."""
    c = config or SelectionConfig()
    N = vision.shape[0]
    if budget >= N:
        return torch.arange(N, device=vision.device)
    dtype = torch.float64 if torch.float64 in (vision.dtype, projected.dtype, saliency.dtype) else torch.float32
    V, P, a = vision.to(dtype), projected.to(dtype), saliency.to(dtype)

    # 1-2. relevance, sharpened
    if text is None or text.shape[0] == 0:
        r = torch.zeros(N, dtype=dtype, device=P.device)  # on the inputs' device, as every other tensor here
    else:
        E = text.to(dtype)
        S = (P / P.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
        if c.text_weighting == "norm":  # each text token's column scaled by its raw norm over the largest
            S = S * (E.norm(dim=1) / E.norm(dim=1).max().clamp_min(1e-12))[None, :]
        w = torch.softmax(S / c.token_temperature, dim=1)
        r = (S * w).sum(dim=1)
        r = torch.softmax(r / c.temperature, dim=0) ** c.gamma
        r = _minmax(r)
        if c.top_p > 0:
            q = torch.quantile(r, 1 - c.top_p)
            r = torch.where(r >= q, r, r * c.damping)
        else:
            r = r * c.damping
        r = _minmax(r)

    # 3-4. saliency and log-domain fusion
    a = _minmax(a)
    s = torch.exp((1 - c.eta) * torch.log(a.clamp_min(c.eps)) + c.eta * torch.log(r.clamp_min(c.eps)))
    s = _minmax(s)

    # 5. partition
    order = torch.sort(s, descending=True, stable=True).indices
    k_imp = int(budget * c.important_ratio)
    k_div = budget - k_imp
    important = order[:k_imp].tolist()
    R = order[k_imp:].tolist()

    # 6. diversity-preserving partition, products recomputed every round
    Vn = V / V.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # Identical rows are one vector: its cosine to itself is 1, and every copy reads the same cosines.
    distinct, group = torch.unique(Vn, dim=0, return_inverse=True)  # (G, Dv), (N,)
    while len(R) > k_div:
        m = min(c.diversity_step, len(R) - k_div)
        A, B = R[0::2], R[1::2]
        if not A or not B:
            break
        if len(distinct) == N:
            cos = Vn[A] @ Vn[B].T
        else:  # each pair of distinct vectors computed once
            ga, ia = group[A].unique(return_inverse=True)
            gb, ib = group[B].unique(return_inverse=True)
            cos = (distinct[ga] @ distinct[gb].T)[ia][:, ib]
            cos[group[A][:, None] == group[B][None, :]] = 1.0
        best = cos.max(dim=1).values
        keep_order = torch.sort(best, descending=True, stable=True).indices[m:].tolist()
        R = [A[i] for i in keep_order] + B
    R = R[:k_div]

    # 7. original order
    return torch.tensor(sorted(important + R), dtype=torch.long)


def reference_select_tokens(vision, projected, saliency, text, budget, *, text_mask=None, config=None):
    """Per-image loop over `reference_select_one`, same signature and result as `select_tokens`."""
    rows = []
    for b in range(vision.shape[0]):
        t = None
        if text is not None:
            t = text[b] if text_mask is None else text[b][text_mask[b]]
        rows.append(reference_select_one(vision[b], projected[b], saliency[b], t, budget, config))
    return torch.stack(rows).to(vision.device)
