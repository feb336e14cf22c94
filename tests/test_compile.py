"""The selection cores compile whole: `torch.compile(fullgraph=True)` of the image rule's `select_core` and the
clip rule's `clip_core` (all_pairs, the accelerator's way) has no graph break and returns exactly what the
eager code returns. Tiny shapes: compiling takes seconds a shape, and a graph break does not depend on size.
On CUDA, the same cores against the CPU (marked cuda, skipped here)."""

import dataclasses

import pytest
import torch

from flashvlm import SelectionConfig, select_tokens
from flashvlm.selection import first_identical, select_core
from flashvlm.video import _check_split, clip_backgrounds, clip_core, select_video_tokens


def clip_inputs(seed, B, T, N, Dv=6, D=8, L=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(B, T, N, Dv, generator=g, dtype=dtype)
    vision[:, 1:, : N // 2] = vision[:, :1, : N // 2]  # a static half: skipped tokens and repeats
    vision[:, :, -4:] = vision[:, :, -1:]  # identical rows in every frame
    projected = torch.randn(B, T, N, D, generator=g, dtype=dtype)
    saliency = torch.rand(B, T, N, generator=g, dtype=dtype)
    text = torch.randn(B, L, D, generator=g, dtype=dtype)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 2:] = False  # padded text
    return vision, projected, saliency, text, mask


def test_image_core_compiles_whole_and_equals_eager():
    vision, projected, saliency, text, mask = clip_inputs(0, 3, 1, 40)
    vision, projected, saliency = vision[:, 0], projected[:, 0], saliency[:, 0]  # images: one frame a clip
    config = SelectionConfig()
    explained = torch._dynamo.explain(select_core)(vision, projected, saliency, text, mask, 12, config, True)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(select_core, fullgraph=True, dynamic=False)
    kept, important, finite = compiled(vision, projected, saliency, text, mask, 12, config, True)
    eager = select_tokens(vision, projected, saliency, text, 12, text_mask=mask, return_important=True)
    assert bool(finite)
    assert torch.equal(kept, eager[0]) and torch.equal(important, eager[1])


def test_clip_core_compiles_whole_and_equals_eager():
    vision, projected, saliency, text, mask = clip_inputs(1, 2, 3, 16)
    config, budget = SelectionConfig(), 3 * 6
    k_imp, floor = _check_split("per_frame", None, budget, 3, 16, config)
    args = (vision, projected, saliency, text, mask, budget, k_imp, floor, config, True)
    explained = torch._dynamo.explain(clip_core)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    core = torch.compile(clip_core, fullgraph=True, dynamic=False)(*args)
    eager = clip_core(*args)
    # Fused kernels may round the scores differently in the last bits; every token choice is the same.
    for field in dataclasses.fields(eager):
        got, want = getattr(core, field.name), getattr(eager, field.name)
        assert torch.equal(got, want) if not want.is_floating_point() else torch.allclose(got, want), field.name
    kept = clip_backgrounds(core, budget, config.diversity_step)
    want = select_video_tokens(vision, projected, saliency, text, budget, text_mask=mask, return_important=True)
    assert torch.equal(kept[0], want[0]) and torch.equal(kept[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_first_identical_groups_exactly_like_unique(dtype):
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(2, 60, 5, generator=g).to(dtype)
    rows[:, 10:20] = rows[:, 3:4]  # a run of copies
    rows[:, 30] = rows[:, 31]
    rows[:, 40, 0] = 0.0
    rows[:, 41] = rows[:, 40]
    rows[:, 41, 0] = -0.0  # equal to row 40 (-0.0 == 0.0)
    rows[:, 50] = rows[:, 3]
    rows[:, 50, 4] = torch.nextafter(rows[0, 3, 4].float(), torch.tensor(9.0)).to(dtype)  # one element apart: distinct
    first = first_identical(rows)  # (2, 60)
    for b in range(2):
        _, group = torch.unique(rows[b].float(), dim=0, return_inverse=True)
        want = torch.tensor([int((group == group[i]).nonzero()[0]) for i in range(60)])
        assert torch.equal(first[b], want)


# ---------------------------------------------------------------- CUDA against CPU (skipped without a GPU)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a.cpu(), b.cpu())) / a.numel()


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_compiled_image_core_matches_cpu(dtype):
    g = torch.Generator().manual_seed(5)
    inputs = [torch.randn(4, 576, 64, generator=g), torch.randn(4, 576, 96, generator=g),
              torch.rand(4, 576, generator=g), torch.randn(4, 12, 96, generator=g)]
    inputs = [x.to(dtype) for x in inputs]
    config = SelectionConfig()
    cpu, cpu_important = select_tokens(*inputs, 64, return_important=True)
    compiled = torch.compile(select_core, mode="reduce-overhead", fullgraph=True, dynamic=False)
    gpu, gpu_important, finite = compiled(*[x.cuda() for x in inputs], None, 64, config, True)
    eager = select_tokens(*[x.cuda() for x in inputs], 64, return_important=True)
    assert bool(finite)
    assert torch.equal(gpu, eager[0]) and torch.equal(gpu_important, eager[1]), "compiled equals eager on CUDA"
    if dtype == torch.float32:  # low precision ties often; one tie the other way cascades through the rounds
        important = [(a[f], b[f2]) for a, f, b, f2 in zip(cpu, cpu_important, gpu.cpu(), gpu_important.cpu())]
        assert all(torch.equal(a, b) for a, b in important), "the important half is the CPU's"
        assert overlap(cpu, gpu) >= 0.99


@pytest.mark.cuda
@cuda
def test_cuda_clip_rule_matches_cpu():
    inputs = clip_inputs(7, 3, 8, 576, Dv=64, D=96, L=12)
    cpu = select_video_tokens(*inputs[:4], 8 * 64, text_mask=inputs[4])
    gpu = select_video_tokens(*[x.cuda() for x in inputs[:4]], 8 * 64, text_mask=inputs[4].cuda())
    assert overlap(cpu, gpu) >= 0.99
