"""The clip rule: the spec's properties for both splits, static background kept once, moving objects kept
in every frame, equivalence with the image rule at T = 1, errors and precision."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flashvlm import SelectionConfig, select_tokens, select_video_tokens
from flashvlm.video import SPLITS


def make_clip(seed, B, T, N, Dv, D, L, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(B, T, N, Dv, generator=g, dtype=dtype)
    projected = torch.randn(B, T, N, D, generator=g, dtype=dtype)
    saliency = torch.rand(B, T, N, generator=g, dtype=dtype)
    text = torch.randn(B, L, D, generator=g, dtype=dtype)
    return vision, projected, saliency, text


def static_clip(seed, B, T, N, Dv, D, L, dtype=torch.float64):
    """Random clip whose frames partly repeat the previous one, so static tokens and repeats occur."""
    vision, projected, saliency, text = make_clip(seed, B, T, N, Dv, D, L, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    same = torch.rand(B, T, N, generator=g) < 0.5  # (B, T, N) where frame t copies frame t-1
    for t in range(1, T):
        keep = same[:, t, :, None]
        vision[:, t] = torch.where(keep, vision[:, t - 1], vision[:, t])
        projected[:, t] = torch.where(keep, projected[:, t - 1], projected[:, t])
    return vision, projected, saliency, text


clips = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "B": st.integers(1, 3),
        "T": st.integers(1, 5),
        "N": st.integers(1, 24),
        "Dv": st.integers(1, 6),
        "D": st.integers(1, 6),
        "L": st.integers(1, 4),
    }
)
configs = st.builds(
    SelectionConfig,
    important_ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    diversity_step=st.integers(1, 9),
)


# ---------------------------------------------------------------- the spec's properties, both splits


@settings(max_examples=60, deadline=None)
@given(clips, st.integers(1, 130), configs, st.booleans(), st.sampled_from(SPLITS), st.booleans())
def test_exactly_min_budget_distinct_ascending(s, budget, config, with_text, split, repeats):
    inputs = (static_clip if repeats else make_clip)(**s)
    text = inputs[3] if with_text else None
    kept, important = select_video_tokens(
        *inputs[:3], text, budget, split=split, config=config, return_important=True
    )
    TN = s["T"] * s["N"]
    assert kept.dtype == torch.long and important.dtype == torch.bool
    assert kept.shape == important.shape == (s["B"], min(budget, TN))
    assert (kept >= 0).all() and (kept < TN).all()
    if kept.shape[1] > 1:
        assert (kept[:, 1:] > kept[:, :-1]).all(), "indices must be strictly ascending (hence distinct)"
    if budget < TN:  # never more important tokens than the important share of the budget
        assert (important.sum(dim=1) <= int(budget * config.important_ratio)).all()


@settings(max_examples=20, deadline=None)
@given(clips, st.integers(0, 20), st.sampled_from(SPLITS))
def test_budget_at_least_all_tokens_keeps_everything(s, extra, split):
    vision, projected, saliency, text = make_clip(**s)
    TN = s["T"] * s["N"]
    kept = select_video_tokens(vision, projected, saliency, text, TN + extra, split=split)
    assert torch.equal(kept, torch.arange(TN).expand(s["B"], -1))


@settings(max_examples=20, deadline=None)
@given(clips, st.integers(1, 130), st.sampled_from(SPLITS))
def test_deterministic(s, budget, split):
    inputs = static_clip(**s, dtype=torch.float32)
    assert torch.equal(select_video_tokens(*inputs, budget, split=split), select_video_tokens(*inputs, budget, split=split))


# ---------------------------------------------------------------- what the clip rule is for


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_identical_frames_keep_no_more_background_than_one_frame(split, noise):
    # Five (nearly) identical frames: every token of frames 1-4 repeats frame 0 at the same place, so the
    # clip keeps each piece of content once, as one frame would (in frame 0 when the frames are exact copies).
    T, N = 5, 40
    vision, projected, saliency, text = make_clip(0, 1, 1, N, 8, 8, 3)
    g = torch.Generator().manual_seed(1)
    vision = vision.expand(1, T, N, 8) + noise * torch.randn(1, T, N, 8, generator=g, dtype=vision.dtype)
    projected, saliency = projected.expand(1, T, N, 8), saliency.expand(1, T, N)
    for budget in (1, 7, 20, N):
        kept = select_video_tokens(vision, projected, saliency, text, budget, split=split)[0]
        positions = (kept % N).tolist()
        assert len(set(positions)) == len(positions) == budget, "a piece of content was kept twice"
        if noise == 0:
            assert (kept < N).all(), "tokens of frames 1-4 only repeat frame 0"
    # More than one frame's worth: every piece of content, then repeats only to fill the exact budget.
    kept = select_video_tokens(vision, projected, saliency, text, N + 6, split=split)[0]
    assert set((kept % N).tolist()) == set(range(N))


@pytest.mark.parametrize("split", SPLITS)
def test_background_repeated_at_other_places_is_kept_once(split):
    # A panning camera: frame t is frame 0 rolled by t places, so nothing is unchanged at its place, but every
    # token of a later frame repeats one of frame 0. Important tokens are each frame's own and may repeat
    # (what moved is new content where it now is); background repeats nothing kept while the clip has content
    # not yet kept, and all of it is kept before anything repeats.
    T, N = 4, 48
    vision, projected, saliency, _ = make_clip(2, 1, 1, N, 16, 8, 1)
    vision = torch.stack([vision[0, 0].roll(t, dims=0) for t in range(T)])[None]  # (1, T, N, 16)
    projected = torch.stack([projected[0, 0].roll(t, dims=0) for t in range(T)])[None]
    saliency = torch.stack([saliency[0, 0].roll(t, dims=0) for t in range(T)])[None]
    for budget in (12, 30, N, N + 12, 2 * N):
        kept, important = select_video_tokens(vision, projected, saliency, None, budget, split=split, return_important=True)
        content = (kept[0] % N - kept[0] // N) % N  # which token of frame 0 each kept token shows
        shown = set(content[important[0]].tolist())
        background = content[~important[0]].tolist()
        fresh = [c for c in background if c not in shown]
        assert len(set(fresh)) == min(len(background), N - len(shown)), f"budget {budget}: background kept twice"
        # The most salient content is important in every frame it is in: not skipped for repeating elsewhere.
        assert len(shown) < int(important[0].sum()), f"budget {budget}: important tokens never repeat"
@pytest.mark.parametrize("split", SPLITS)
def test_moving_object_matching_the_text_is_kept_in_every_frame(split):
    # A static background (identical in every frame) and one object that moves one place a frame; the
    # object's projection is the question's text, its saliency is the lowest of the frame.
    T, N, D = 6, 36, 8
    vision, projected, saliency, text = make_clip(3, 1, 1, N, 8, D, 3)
    vision, projected, saliency = (x.repeat(1, T, *([1] * (x.ndim - 2))) for x in (vision, projected, saliency))
    g = torch.Generator().manual_seed(4)
    look = torch.randn(8, generator=g, dtype=vision.dtype)
    place = [5 + 4 * t for t in range(T)]
    for t, n in enumerate(place):
        vision[0, t, n] = look  # the same object, at a new place every frame
        projected[0, t, n] = text[0, 1]
        saliency[0, t, n] = 0.0
    for budget in (T * 2, T * 8, 100):
        kept, important = select_video_tokens(vision, projected, saliency, text, budget, split=split, return_important=True)
        flat = {i: imp for i, imp in zip(kept[0].tolist(), important[0].tolist())}
        for t, n in enumerate(place):
            assert flat.get(t * N + n) is True, f"object in frame {t} not kept as important (budget {budget})"


# ---------------------------------------------------------------- equivalences


@settings(max_examples=40, deadline=None)
@given(clips, st.integers(1, 40), configs, st.booleans(), st.sampled_from([None, 0, 1, 3]))
def test_one_frame_is_the_image_rule(s, budget, config, with_text, floor):
    # T = 1: nothing is static and nothing repeats another frame, the floor only reorders tokens that are
    # important anyway, and the partition's step is diversity_step * 1: both splits equal select_tokens.
    s = {**s, "T": 1}
    vision, projected, saliency, text = make_clip(**s)
    text = text if with_text else None
    expected = select_tokens(vision[:, 0], projected[:, 0], saliency[:, 0], text, budget, config=config)
    assert torch.equal(select_video_tokens(vision, projected, saliency, text, budget, split="per_frame", config=config), expected)
    k_imp = int(min(budget, s["N"]) * config.important_ratio)
    floor = None if floor is None else min(floor, k_imp)
    got = select_video_tokens(vision, projected, saliency, text, budget, split="global", min_per_frame=floor, config=config)
    assert torch.equal(got, expected)


@settings(max_examples=20, deadline=None)
@given(clips, st.integers(1, 130), st.booleans(), st.sampled_from(SPLITS))
def test_batched_equals_one_by_one(s, budget, with_text, split):
    vision, projected, saliency, text = static_clip(**s, dtype=torch.float32)
    text = text if with_text else None
    batched = select_video_tokens(vision, projected, saliency, text, budget, split=split)
    for b in range(s["B"]):
        one = select_video_tokens(
            vision[b : b + 1], projected[b : b + 1], saliency[b : b + 1],
            None if text is None else text[b : b + 1], budget, split=split,
        )
        assert torch.equal(batched[b : b + 1], one)


def test_padded_text_with_mask_equals_unpadded():
    vision, projected, saliency, text = static_clip(5, 2, 3, 20, 4, 6, 3)
    padded = torch.cat([text, torch.randn(2, 2, 6, dtype=text.dtype) * 5], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 2 + [False] * 3])
    kept = select_video_tokens(vision, projected, saliency, padded, 17, text_mask=mask)
    for b, length in enumerate((3, 2)):
        one = select_video_tokens(vision[b : b + 1], projected[b : b + 1], saliency[b : b + 1], text[b : b + 1, :length], 17)
        assert torch.equal(kept[b : b + 1], one)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@settings(max_examples=10, deadline=None)
@given(s=clips, budget=st.integers(1, 130), split=st.sampled_from(SPLITS))
def test_half_precision_equals_its_float32_upcast(half, s, budget, split):
    inputs = [x.to(half) for x in static_clip(**s, dtype=torch.float32)]
    upcast = [x.float() for x in inputs]
    assert torch.equal(select_video_tokens(*inputs, budget, split=split), select_video_tokens(*upcast, budget, split=split))


def test_global_floor_gives_every_frame_important_tokens():
    vision, projected, saliency, text = make_clip(6, 1, 4, 30, 4, 6, 2)
    # Peaky saliency in frames 1-3: after per-frame min-max most of their tokens score near 0, so a plain
    # global ranking gives frame 0 most of the important share (here 13, 3, 2, 2 of 20).
    saliency[0, 1:] = saliency[0, 1:] ** 8
    counts = {}
    for floor in (0, 3):
        kept, important = select_video_tokens(
            vision, projected, saliency, None, 40, split="global", min_per_frame=floor, return_important=True
        )
        counts[floor] = (kept[0][important[0]] // 30).bincount(minlength=4)
    assert counts[0].min() < 3, "the case must need the floor"
    assert (counts[3] >= 3).all() and counts[3].sum() == 20


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(budget=0), "budget"),
        (dict(budget=3.0), "budget"),
        (dict(vision=torch.randn(2, 10, 4)), "vision"),
        (dict(projected=torch.randn(2, 3, 9, 6)), "projected"),
        (dict(saliency=torch.rand(2, 10)), "saliency"),
        (dict(text=torch.randn(3, 3, 6)), "text"),
        (dict(text_mask=torch.ones(2, 4, dtype=torch.bool)), "text_mask"),
        (dict(split="clip"), "split"),
        (dict(split="global", min_per_frame=-1), "min_per_frame"),
        (dict(split="global", min_per_frame=1.5), "min_per_frame"),
        (dict(split="global", min_per_frame=True), "min_per_frame"),
        (dict(split="global", min_per_frame=3), "min_per_frame"),  # 3 frames x 3 > 4 important tokens
        (dict(split="per_frame", min_per_frame=1), "min_per_frame"),
    ],
)
def test_bad_input_is_a_value_error_naming_it(change, match):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_clip(0, 2, 3, 10, 4, 6, 3)))
    inputs["budget"] = 8
    inputs.update(change)
    with pytest.raises(ValueError, match=match):
        select_video_tokens(**inputs)


@pytest.mark.parametrize("name", ["vision", "projected", "saliency", "text"])
def test_nan_is_an_error_naming_the_input(name):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_clip(0, 2, 3, 10, 4, 6, 3)))
    inputs[name].view(-1)[5] = float("nan")
    for budget in (8, 1000):  # also when nothing would be pruned
        with pytest.raises(ValueError, match=name):
            select_video_tokens(**inputs, budget=budget)


# ---------------------------------------------------------------- devices


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("split", SPLITS)
def test_cuda_matches_cpu(split):
    inputs = list(static_clip(11, 2, 8, 576, 64, 96, 12, dtype=torch.float32))
    cpu = select_video_tokens(*inputs, 512, split=split)
    gpu = select_video_tokens(*[x.cuda() for x in inputs], 512, split=split)
    assert gpu.device.type == "cuda"
    # Rounding differs between devices, so near-ties may flip; nearly all kept tokens must agree.
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(cpu, gpu.cpu())) / cpu.numel()
    assert overlap > 0.9
    assert torch.equal(gpu, select_video_tokens(*[x.cuda() for x in inputs], 512, split=split))
