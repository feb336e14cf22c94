"""The clip rule: the spec's properties for both splits, static background kept once, moving objects kept
in every frame, equivalence with the image rule at T = 1, errors and precision; and the image rule frame by
frame (split="frame_by_frame"), the baseline."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from flashvlm import SelectionConfig, select_tokens, select_video_tokens
from flashvlm.selection import TEXT_WEIGHTINGS, fused_scores
from flashvlm.video import NEAR_IDENTICAL, SPLITS, VIDEO_SPLITS
from random_inputs import input_sizes, make_clip, selection_configs


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


clips = input_sizes(T=(1, 5), N=(1, 24), Dv=(1, 6), D=(1, 6), L=(1, 4))
configs = selection_configs()


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
        bound = int(budget * config.important_ratio)
        if split == "frame_by_frame":  # the image rule on each frame's share: one that covers its frame keeps it all, important
            shares = [budget // s["T"] + (t < budget % s["T"]) for t in range(s["T"])]
            bound = sum(b if b >= s["N"] else int(b * config.important_ratio) for b in shares)
        assert (important.sum(dim=1) <= bound).all()


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


@pytest.mark.parametrize("split", VIDEO_SPLITS)
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


@pytest.mark.parametrize("split", VIDEO_SPLITS)
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
def covered_oracle(kept: torch.Tensor, vision: torch.Tensor, N: int) -> torch.Tensor:
    """(T, N) bool for one clip: token (t, n) is kept, or unchanged (cosine >= 0.95) since (t-1, n) and that
    token is covered in turn: its content is kept at the same place of an earlier frame.

    kept: (K,) flat indices; vision: (T, N, Dv).
    """
    T = vision.shape[0]
    unit = F.normalize(vision, dim=-1)
    ok = torch.zeros(T, N, dtype=torch.bool)
    ok.view(-1)[kept] = True
    for t in range(1, T):
        unchanged = (unit[t] * unit[t - 1]).sum(dim=-1) >= NEAR_IDENTICAL
        ok[t] |= unchanged & ok[t - 1]
    return ok


def scene(seed, T, H, W, Dv, D, L, places, looks):
    """A clip of T frames of H x W patches: a static background and an object that matches the guide text.

    places: T lists of the object's patch places (row * W + col), one per frame; looks: (P, Dv) the
    object's patch features. Every object patch's projection is text token 0, so the object is the
    question's answer; saliency is uniform in [0.2, 1] on the object and [0, 1] elsewhere.
    """
    N = H * W
    vision, projected, saliency, text = make_clip(seed, 1, 1, N, Dv, D, L)
    vision, projected, saliency = vision.repeat(1, T, 1, 1), projected.repeat(1, T, 1, 1), saliency.repeat(1, T, 1)
    g = torch.Generator().manual_seed(seed + 1)
    for t, where in enumerate(places):
        where = torch.tensor(where)
        vision[0, t, where] = looks
        projected[0, t, where] = text[0, 0]
        saliency[0, t, where] = 0.2 + 0.8 * torch.rand(len(where), generator=g, dtype=saliency.dtype)
    return vision, projected, saliency, text


def box(row, col, h, w, W):
    """The h x w patches whose top-left patch is (row, col), wrapping around the frame's width."""
    return [(row + i) * W + (col + j) % W for i in range(h) for j in range(w)]


@pytest.mark.parametrize("split", VIDEO_SPLITS)
@pytest.mark.parametrize("h, w, speed", [(2, 4, 3), (2, 4, 1), (1, 1, 2), (3, 3, 4)])
@pytest.mark.parametrize("uniform", [False, True])
def test_moving_object_matching_the_text_is_kept_in_every_frame(split, h, w, speed, uniform):
    # An object that matches the text moves `speed` patches a frame over a static background, 8 frames. Every
    # one of its patches in every frame is kept, or is unchanged since the same place of the previous frame
    # where it is kept (a uniform object overlapping its last position); a patch that changed is important.
    T, H, W, Dv = 8, 12, 16, 8
    g = torch.Generator().manual_seed(7)
    looks = torch.randn(1 if uniform else h * w, Dv, generator=g, dtype=torch.float64).expand(h * w, Dv)
    places = [box(4, 2 + speed * t, h, w, W) for t in range(T)]
    vision, projected, saliency, text = scene(3, T, H, W, Dv, 8, 3, places, looks)
    N = H * W
    for budget in (160, 256):  # room for the object in every frame's important share, both splits
        kept, important = select_video_tokens(vision, projected, saliency, text, budget, split=split, return_important=True)
        ok = covered_oracle(kept[0], vision[0], N)
        flags = dict(zip(kept[0].tolist(), important[0].tolist()))
        unit = F.normalize(vision[0], dim=-1)
        for t, where in enumerate(places):
            for n in where:
                assert ok[t, n], f"object patch {n} of frame {t} neither kept nor covered (budget {budget})"
                changed = t == 0 or float(unit[t, n] @ unit[t - 1, n]) < NEAR_IDENTICAL
                if changed:
                    assert flags.get(t * N + n) is True, f"object patch {n} of frame {t} not important (budget {budget})"


@pytest.mark.parametrize("split", VIDEO_SPLITS)
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_static_object_matching_the_text_is_kept_once(split, noise):
    # An object that matches the text and does not move: kept, as important, in the first frame; never
    # again (its later copies are unchanged since the same place, where it is kept).
    T, H, W, Dv = 8, 12, 16, 8
    g = torch.Generator().manual_seed(8)
    where = box(5, 6, 2, 4, W)
    looks = torch.randn(len(where), Dv, generator=g, dtype=torch.float64)
    vision, projected, saliency, text = scene(4, T, H, W, Dv, 8, 3, [where] * T, looks)
    vision = vision + noise * torch.randn(vision.shape, generator=g, dtype=vision.dtype)
    N = H * W
    for budget in (128, 160):
        kept, important = select_video_tokens(vision, projected, saliency, text, budget, split=split, return_important=True)
        flags = dict(zip(kept[0].tolist(), important[0].tolist()))
        assert all(flags.get(n) is True for n in where), f"object not important in frame 0 (budget {budget})"
        again = [(t, n) for t in range(1, T) for n in where if t * N + n in flags]
        assert not again, f"object repeated at {again} (budget {budget})"


@settings(max_examples=40, deadline=None)
@given(clips, st.integers(1, 130), configs, st.booleans(), st.sampled_from([None, 0, 1, 2]))
def test_the_image_rules_important_tokens_are_kept_or_covered(s, budget, config, with_text, floor):
    # Whatever the image rule calls important in a frame (per_frame: the frame's own important share of
    # budget // T; global: each frame's floor best and the clip's best others) is kept, or is unchanged since
    # the same place of the previous frame where it is kept: a skip is always covered at its place.
    vision, projected, saliency, text = static_clip(**s)
    text = text if with_text else None
    B, T, N = s["B"], s["T"], s["N"]
    if budget >= T * N:
        return
    for b in range(B):
        clip = [x[b : b + 1] for x in (vision, projected, saliency)] + [None if text is None else text[b : b + 1]]
        frame_text = None if text is None else text[b : b + 1].expand(T, -1, -1)
        if budget >= T:  # per_frame: every frame has budget // T tokens
            kept = select_video_tokens(*clip, budget, split="per_frame", config=config)[0]
            ok = covered_oracle(kept, vision[b], N)
            image_kept, important = select_tokens(
                vision[b], projected[b], saliency[b], frame_text, budget // T, config=config, return_important=True
            )
            for t in range(T):
                assert ok[t, image_kept[t][important[t]]].all(), f"frame {t}: an important token neither kept nor covered"

        k_imp = int(budget * config.important_ratio)
        floor_t = k_imp // (2 * T) if floor is None else min(floor, k_imp // T)
        kept = select_video_tokens(*clip, budget, split="global", min_per_frame=floor_t, config=config)[0]
        ok = covered_oracle(kept, vision[b], N).view(-1)
        score = fused_scores(projected[b], saliency[b], frame_text, config=config)  # (T, N)
        best = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :floor_t]  # (T, floor)
        chosen = torch.zeros(T, N, dtype=torch.bool)
        chosen.scatter_(1, best, True)
        rest = torch.sort(torch.where(chosen, score - 2, score).view(-1), descending=True, stable=True).indices
        chosen.view(-1)[rest[: k_imp - T * floor_t]] = True
        assert ok[chosen.view(-1)].all(), "global: an important token neither kept nor covered"


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


@settings(max_examples=40, deadline=None)
@given(clips, st.integers(1, 130), configs, st.booleans())
def test_frame_by_frame_is_the_image_rule_on_every_frame(s, budget, config, with_text):
    # budget // T tokens a frame, one more for the first budget % T frames, each frame's exactly as
    # select_tokens picks them alone; T = 1 is the image rule itself.
    vision, projected, saliency, text = static_clip(**s)
    text = text if with_text else None
    B, T, N = s["B"], s["T"], s["N"]
    kept, important = select_video_tokens(
        vision, projected, saliency, text, budget, split="frame_by_frame", config=config, return_important=True
    )
    if budget >= T * N:
        assert torch.equal(kept, torch.arange(T * N).expand(B, -1))
        return
    for t in range(T):
        k = budget // T + (t < budget % T)
        in_frame = (kept // N == t)
        if k == 0:
            assert not in_frame.any()
            continue
        own, flags = select_tokens(vision[:, t], projected[:, t], saliency[:, t], text, k, config=config, return_important=True)
        assert torch.equal(kept[in_frame].view(B, -1) - t * N, own)
        assert torch.equal(important[in_frame].view(B, -1), flags)


def test_frame_by_frame_keeps_repeated_background_in_every_frame():
    # The baseline the clip rule is measured against: identical frames, each keeps its own copy.
    T, N = 4, 40
    vision, projected, saliency, text = make_clip(0, 1, 1, N, 8, 8, 3)
    vision, projected, saliency = vision.expand(1, T, N, 8), projected.expand(1, T, N, 8), saliency.expand(1, T, N)
    kept = select_video_tokens(vision, projected, saliency, text, 4 * 7, split="frame_by_frame")[0]
    positions = (kept % N).view(T, 7)
    assert (positions == positions[0]).all(), "every frame keeps the same places, again"


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


@pytest.mark.parametrize("text_weighting", TEXT_WEIGHTINGS)
def test_padded_text_with_mask_equals_unpadded(text_weighting):
    vision, projected, saliency, text = static_clip(5, 2, 3, 20, 4, 6, 3)
    config = SelectionConfig(text_weighting=text_weighting)
    padded = torch.cat([text, torch.randn(2, 2, 6, dtype=text.dtype) * 5], dim=1)  # padding with larger norms
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 2 + [False] * 3])
    kept = select_video_tokens(vision, projected, saliency, padded, 17, text_mask=mask, config=config)
    for b, length in enumerate((3, 2)):
        one = select_video_tokens(
            vision[b : b + 1], projected[b : b + 1], saliency[b : b + 1], text[b : b + 1, :length], 17, config=config
        )
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
        (dict(split="frame_by_frame", min_per_frame=1), "min_per_frame"),
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
