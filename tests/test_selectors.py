"""The comparison selectors: select_tokens' contract for every method, images and clips, each method's own
property (max-min greedy, an even grid, the no-text rule, a seeded sample), errors and the registry."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flashvlm
from flashvlm import SelectionConfig, select_tokens, select_video_tokens
from flashvlm.selectors import (
    METHODS,
    farthest_points,
    frame_budgets,
    grid_positions,
    method_options,
    select,
    select_video,
)
from random_inputs import input_sizes, make_clip, make_inputs

COMPARISONS = ["saliency", "diversity", "uniform", "random"]
# Methods without an important/background split: their flags are all False.
UNSPLIT = ["diversity", "uniform", "random"]


def options(method, rows, cols):
    """uniform needs the token grid unless it is square; the hypothesis grids are any rows x cols."""
    return {"grid": (rows, cols)} if method == "uniform" else {}


images = input_sizes(rows=(1, 7), cols=(1, 7), Dv=(1, 8), D=(1, 8), L=(1, 5))
clips = input_sizes(T=(1, 4), rows=(1, 5), cols=(1, 5), Dv=(1, 6), D=(1, 6), L=(1, 4))


def image_inputs(s, dtype=torch.float64):
    return make_inputs(s["seed"], s["B"], s["rows"] * s["cols"], s["Dv"], s["D"], s["L"], dtype)


def clip_inputs(s, dtype=torch.float64):
    return make_clip(s["seed"], s["B"], s["T"], s["rows"] * s["cols"], s["Dv"], s["D"], s["L"], dtype)


def assert_contract(kept, flags, B, count, total):
    assert kept.dtype == torch.long and flags.dtype == torch.bool
    assert kept.shape == flags.shape == (B, count)
    assert (kept >= 0).all() and (kept < total).all()
    if count > 1:
        assert (kept[:, 1:] > kept[:, :-1]).all(), "indices must be strictly ascending (hence distinct)"


# ---------------------------------------------------------------- the contract, every method


# Images and clips: (selector, strategy of sizes, inputs from sizes, largest budget drawn).
KINDS = {"images": (select, images, image_inputs, 60), "clips": (select_video, clips, clip_inputs, 110)}


def draw_case(data, kind):
    """(selector, sizes, total tokens of an image or clip, budget) drawn for `kind`."""
    selector, sizes, _, max_budget = KINDS[kind]
    s = data.draw(sizes)
    return selector, s, s.get("T", 1) * s["rows"] * s["cols"], data.draw(st.integers(1, max_budget))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", list(METHODS))
@settings(max_examples=30, deadline=None)
@given(data=st.data(), with_text=st.booleans())
def test_exactly_min_budget_tokens_distinct_ascending(kind, method, data, with_text):
    selector, s, total, budget = draw_case(data, kind)
    vision, projected, saliency, text = KINDS[kind][2](s)
    opts = options(method, s["rows"], s["cols"])
    kept, flags = selector(method, vision, projected, saliency, text if with_text else None, budget, return_important=True, **opts)
    assert_contract(kept, flags, s["B"], min(budget, total), total)
    if method in UNSPLIT:
        assert not flags.any()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", COMPARISONS)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_batched_equals_one_by_one(kind, method, data):
    selector, s, _, budget = draw_case(data, kind)
    inputs = KINDS[kind][2](s, torch.float32)
    opts = options(method, s["rows"], s["cols"])
    batched = selector(method, *inputs, budget, **opts)
    for b in range(s["B"]):
        one = selector(method, *(x[b : b + 1] for x in inputs), budget, **opts)
        assert torch.equal(batched[b : b + 1], one)


@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("extra", [0, 7])
def test_budget_at_least_all_tokens_keeps_everything_in_order(method, extra):
    vision, projected, saliency, text = make_inputs(1, 2, 16, 4, 6, 3)
    kept = select(method, vision, projected, saliency, text, 16 + extra)
    assert torch.equal(kept, torch.arange(16).expand(2, -1))
    vision, projected, saliency, text = make_clip(1, 2, 3, 16, 4, 6, 3)
    kept = select_video(method, vision, projected, saliency, text, 48 + extra)
    assert torch.equal(kept, torch.arange(48).expand(2, -1))


@pytest.mark.parametrize("method", COMPARISONS)
def test_deterministic(method):
    inputs = make_inputs(2, 3, 64, 8, 6, 3, dtype=torch.float32)
    assert torch.equal(select(method, *inputs, 13), select(method, *inputs, 13))
    clip = make_clip(2, 2, 3, 64, 8, 6, 3, dtype=torch.float32)
    assert torch.equal(select_video(method, *clip, 40), select_video(method, *clip, 40))


# ---------------------------------------------------------------- errors: exactly select_tokens' errors


def error_of(fn, **inputs):
    with pytest.raises(ValueError) as caught:
        fn(**inputs)
    return str(caught.value)


BAD_IMAGE_INPUTS = [
    dict(budget=0),
    dict(budget=-3),
    dict(budget=2.5),
    dict(budget=True),
    dict(vision=torch.randn(2, 16)),
    dict(projected=torch.randn(2, 9, 6)),
    dict(saliency=torch.rand(3, 16)),
    dict(text=torch.randn(3, 3, 6)),
    dict(text=torch.randn(2, 3, 5)),
    dict(text_mask=torch.ones(2, 4, dtype=torch.bool)),
    dict(text_mask=torch.ones(2, 3)),
    dict(text=None, text_mask=torch.ones(2, 3, dtype=torch.bool)),
    dict(vision=torch.randint(0, 5, (2, 16, 4))),
]


@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("change", BAD_IMAGE_INPUTS, ids=lambda c: ",".join(c))
def test_bad_input_is_select_tokens_error(method, change):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_inputs(0, 2, 16, 4, 6, 3)))
    inputs["budget"] = 4
    inputs.update(change)
    assert error_of(METHODS[method].image, **inputs) == error_of(select_tokens, **inputs)


@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("name", ["vision", "projected", "saliency", "text"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_is_select_tokens_error(method, name, bad):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_inputs(0, 2, 16, 4, 6, 3)))
    inputs[name].view(-1)[7] = bad
    for budget in (4, 100):  # also when nothing would be pruned
        message = error_of(METHODS[method].image, **inputs, budget=budget)
        assert message == error_of(select_tokens, **inputs, budget=budget)
        assert message.startswith(name)


BAD_CLIP_INPUTS = [
    dict(budget=0),
    dict(budget=3.0),
    dict(vision=torch.randn(2, 16, 4)),
    dict(projected=torch.randn(2, 3, 9, 6)),
    dict(saliency=torch.rand(2, 16)),
    dict(text=torch.randn(3, 3, 6)),
    dict(text_mask=torch.ones(2, 4, dtype=torch.bool)),
]


@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("change", BAD_CLIP_INPUTS, ids=lambda c: ",".join(c))
def test_bad_clip_input_is_select_video_tokens_error(method, change):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_clip(0, 2, 3, 16, 4, 6, 3)))
    inputs["budget"] = 8
    inputs.update(change)
    assert error_of(METHODS[method].video, **inputs) == error_of(select_video_tokens, **inputs)


@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("name", ["vision", "projected", "saliency", "text"])
def test_nan_in_a_clip_is_select_video_tokens_error(method, name):
    inputs = dict(zip(["vision", "projected", "saliency", "text"], make_clip(0, 2, 3, 16, 4, 6, 3)))
    inputs[name].view(-1)[5] = float("nan")
    for budget in (8, 1000):
        message = error_of(METHODS[method].video, **inputs, budget=budget)
        assert message == error_of(select_video_tokens, **inputs, budget=budget)
        assert message.startswith(name)


# ---------------------------------------------------------------- the registry


def test_registry_names_and_flashvlm_is_the_rule_itself():
    assert list(METHODS) == ["flashvlm", "saliency", "diversity", "uniform", "random"]
    assert METHODS["flashvlm"].image is select_tokens
    assert METHODS["flashvlm"].video is select_video_tokens
    assert flashvlm.select is select and flashvlm.select_video is select_video and flashvlm.METHODS is METHODS
    inputs = make_inputs(4, 2, 30, 4, 6, 3)
    assert torch.equal(select("flashvlm", *inputs, 9), select_tokens(*inputs, 9))
    clip = make_clip(4, 2, 3, 16, 4, 6, 3)
    assert torch.equal(
        select_video("flashvlm", *clip, 20, split="global"), select_video_tokens(*clip, 20, split="global")
    )


def test_flashvlm_takes_text_weighting_as_an_option_of_its_config():
    assert "text_weighting" in method_options("flashvlm") and "text_weighting" in method_options("flashvlm", video=True)
    assert "text_weighting" not in method_options("saliency", video=True)
    inputs = make_inputs(0, 2, 30, 4, 6, 3)  # text whose weighting changes the selection
    base = SelectionConfig(important_ratio=0.25)
    norm = SelectionConfig(important_ratio=0.25, text_weighting="norm")  # the option replaces one field only
    kept = select("flashvlm", *inputs, 9, config=base, text_weighting="norm")
    assert torch.equal(kept, select_tokens(*inputs, 9, config=norm))
    assert not torch.equal(kept, select_tokens(*inputs, 9, config=base))
    assert torch.equal(select("flashvlm", *inputs, 9, text_weighting="none"), select_tokens(*inputs, 9))
    clip = make_clip(4, 2, 3, 16, 4, 6, 3)
    assert torch.equal(
        select_video("flashvlm", *clip, 20, split="global", text_weighting="norm"),
        select_video_tokens(*clip, 20, split="global", config=SelectionConfig(text_weighting="norm")),
    )
    with pytest.raises(ValueError, match="text_weighting must be one of"):
        select("flashvlm", *inputs, 9, text_weighting="idf")
    with pytest.raises(ValueError, match="method 'saliency' has no option 'text_weighting'"):
        select_video("saliency", *clip, 20, text_weighting="norm")


def test_unknown_method_or_option_is_a_value_error_naming_it():
    inputs = make_inputs(0, 1, 16, 4, 6, 3)
    with pytest.raises(ValueError, match="method must be one of .*'pooling'"):
        select("pooling", *inputs, 4)
    with pytest.raises(ValueError, match="method"):
        select_video("pooling", *make_clip(0, 1, 2, 16, 4, 6, 3), 4)
    with pytest.raises(ValueError, match="'seed'"):
        select("flashvlm", *inputs, 4, seed=1)
    with pytest.raises(ValueError, match="'split'"):
        select_video("diversity", *make_clip(0, 1, 2, 16, 4, 6, 3), 4, split="global")
    assert "seed" in method_options("random") and "grid" in method_options("uniform", video=True)
    assert "split" in method_options("saliency", video=True) and "split" not in method_options("saliency")


# ---------------------------------------------------------------- saliency: the rule without text


@settings(max_examples=25, deadline=None)
@given(s=images, budget=st.integers(1, 60), ratio=st.sampled_from([0.0, 0.5, 1.0]))
def test_saliency_is_select_tokens_without_text(s, budget, ratio):
    vision, projected, saliency, text = image_inputs(s)
    config = SelectionConfig(important_ratio=ratio)
    kept, flags = select("saliency", vision, projected, saliency, text, budget, config=config, return_important=True)
    want, want_flags = select_tokens(vision, projected, saliency, None, budget, config=config, return_important=True)
    assert torch.equal(kept, want) and torch.equal(flags, want_flags)


@settings(max_examples=15, deadline=None)
@given(s=clips, budget=st.integers(1, 110))
def test_saliency_clip_is_select_video_tokens_without_text(s, budget):
    vision, projected, saliency, text = clip_inputs(s)
    for split in ("per_frame", "global"):
        kept = select_video("saliency", vision, projected, saliency, text, budget, split=split)
        assert torch.equal(kept, select_video_tokens(vision, projected, saliency, None, budget, split=split))


def test_saliency_ignores_the_text_that_flashvlm_follows():
    vision, projected, saliency, text = make_inputs(5, 1, 200, 16, 16, 4)
    projected[0, 17] = text[0, 2]  # token 17 matches the text exactly...
    saliency[0, 17] = 0.0  # ...and has the lowest saliency
    kept, important = select("flashvlm", vision, projected, saliency, text, 16, return_important=True)
    assert 17 in kept[important].tolist()
    kept, important = select("saliency", vision, projected, saliency, text, 16, return_important=True)
    assert 17 not in kept[important].tolist()


# ---------------------------------------------------------------- diversity: greedy max-min


def test_diversity_hand_case():
    # Three tokens near the x axis, one along y, one along -x (unit vectors after normalising):
    #   0: 0 deg, 1: 5.7 deg (cos to 0: 0.995), 2: -11.5 deg (cos to 0: 0.98), 3: 90 deg, 4: 180 deg.
    vision = torch.tensor([[[1.0, 0.0], [0.995, 0.0998], [0.98, -0.2], [0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    unit = torch.nn.functional.normalize(vision, dim=-1)
    # The mean of the unit rows points near +x, so the token least like it, the seed, is 4 (cosine ~ -0.94).
    # Every token's cosine to 4 is minus its x: the farthest from {4} is the largest x, token 0.
    # Against {4, 0} the highest cosines are 1: 0.995, 2: 0.98, 3: 0 -> token 3.
    # Against {4, 0, 3}: 1 still 0.995, 2 still 0.98 -> token 2, then token 1.
    assert farthest_points(unit, 5).tolist() == [[4, 0, 3, 2, 1]]
    saliency = torch.tensor([[1.0, 0.9, 0.8, 0.1, 0.0]], dtype=torch.float64)
    projected = vision.clone()
    for budget, want in [(1, [4]), (2, [0, 4]), (3, [0, 3, 4]), (4, [0, 2, 3, 4])]:
        assert select("diversity", vision, projected, saliency, None, budget).tolist() == [want]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 40), st.integers(1, 6), st.integers(1, 40))
def test_every_pick_is_the_farthest_from_the_picks_before_it(seed, B, M, Dv, count):
    g = torch.Generator().manual_seed(seed)
    # Few distinct directions so that exact ties (duplicate tokens) occur.
    base = torch.randn(B, max(1, M // 3), Dv, generator=g, dtype=torch.float64)
    choice = torch.randint(0, base.shape[1], (B, M), generator=g)
    unit = torch.nn.functional.normalize(base.gather(1, choice[:, :, None].expand(-1, -1, Dv)), dim=-1)
    count = min(count, M)
    picks = farthest_points(unit, count)
    for b in range(B):
        order = picks[b].tolist()
        assert len(set(order)) == count
        sim = (unit[b] @ unit[b].T).tolist()
        # The seed is the token least like the average one. (Products computed another way may round
        # differently in the last bit, hence the tolerance; exact ties are the next test's.)
        to_mean = (unit[b] @ unit[b].mean(dim=0)).tolist()
        assert to_mean[order[0]] <= min(to_mean) + 1e-12
        for i in range(1, count):
            rest = [t for t in range(M) if t not in order[:i]]
            closeness = {t: max(sim[t][p] for p in order[:i]) for t in rest}
            assert closeness[order[i]] <= min(closeness.values()) + 1e-12


def test_farthest_points_break_ties_by_lower_index():
    unit = torch.nn.functional.normalize(torch.ones(2, 6, 3), dim=-1)  # six identical tokens
    assert farthest_points(unit, 6).tolist() == [list(range(6))] * 2
    # Two looks, three tokens each: every token is equally like the average, so token 0 seeds; then the
    # first of the other look; then every token left has a twin picked, so index order.
    unit = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    assert farthest_points(unit, 6).tolist() == [[0, 1, 2, 3, 4, 5]]
    # Look y is the minority, so less like the average: its first token seeds, then the first of look x.
    unit = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    assert farthest_points(unit, 5).tolist() == [[2, 0, 1, 3, 4]]
    with pytest.raises(ValueError, match="count"):
        farthest_points(unit, 6)


def test_diversity_of_a_clip_keeps_a_repeated_frame_once():
    # Frame 1 repeats frame 0 exactly: the farthest points over the clip take each look once before any repeat.
    vision, projected, saliency, text = make_clip(6, 1, 2, 16, 32, 6, 3)
    vision[:, 1] = vision[:, 0]
    kept = select_video("diversity", vision, projected, saliency, text, 16)[0]
    assert sorted((kept % 16).tolist()) == list(range(16))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_diversity_half_precision_equals_its_float32_upcast(half):
    inputs = [x.to(half) for x in make_inputs(7, 3, 64, 16, 6, 3, dtype=torch.float32)]
    assert torch.equal(select("diversity", *inputs, 20), select("diversity", *[x.float() for x in inputs], 20))


def test_diversity_without_the_cosine_matrix_picks_the_same(monkeypatch):
    import flashvlm.selectors as selectors

    g = torch.Generator().manual_seed(8)
    unit = torch.nn.functional.normalize(torch.randn(3, 50, 8, generator=g, dtype=torch.float64), dim=-1)
    with_matrix = farthest_points(unit, 30)
    monkeypatch.setattr(selectors, "MATRIX_ENTRIES", 49 * 49)  # one item no longer fits: each pick's cosines
    assert torch.equal(farthest_points(unit, 30), with_matrix)
    monkeypatch.setattr(selectors, "MATRIX_ENTRIES", 50 * 50)  # one item a chunk
    assert torch.equal(farthest_points(unit, 30), with_matrix)


# ---------------------------------------------------------------- uniform: an even grid


def test_uniform_on_24x24_at_64_is_the_8x8_grid():
    vision, projected, saliency, text = make_inputs(0, 2, 576, 4, 6, 3)
    kept = select("uniform", vision, projected, saliency, text, 64)
    centres = [1, 4, 7, 10, 13, 16, 19, 22]  # the middle of each 3 x 3 cell
    want = [y * 24 + x for y in centres for x in centres]
    assert kept.tolist() == [want, want]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.data())
def test_grid_positions_are_spread_evenly(rows, cols, data):
    count = data.draw(st.integers(0, rows * cols))
    kept = grid_positions(rows, cols, count)
    assert kept.shape == (count,)
    if count == 0:
        return
    assert (kept[1:] > kept[:-1]).all()
    y, x = (kept // cols).tolist(), (kept % cols).tolist()
    used = sorted(set(y))
    per_row = [y.count(r) for r in used]
    assert max(per_row) - min(per_row) <= 1, "every used row holds the same count, give or take one"
    # Used rows are evenly spaced: gaps differ by at most one.
    gaps = [b - a for a, b in zip(used, used[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1
    # So are the positions within each row.
    for r in used:
        xs = [x[i] for i in range(count) if y[i] == r]
        steps = [b - a for a, b in zip(xs, xs[1:])]
        assert not steps or max(steps) - min(steps) <= 1
    # The spacing is about the same in both directions (within a factor of 3 where both are defined).
    if len(used) > 1 and max(per_row) > 1:
        row_step = (used[-1] - used[0]) / (len(used) - 1)
        col_step = cols / max(per_row)
        assert 1 / 3 <= row_step / col_step <= 3 or max(per_row) == cols or len(used) == rows
    if count == rows * cols:
        assert kept.tolist() == list(range(count))


def test_uniform_uses_the_given_grid_and_refuses_a_non_square_without_one():
    vision, projected, saliency, text = make_inputs(0, 1, 24, 4, 6, 3)  # 4 rows of 6 tokens
    kept = select("uniform", vision, projected, saliency, text, 6, grid=(4, 6))
    # r = round(sqrt(6 * 4 / 6)) = 2 rows of 3: y = 1, 3; x = 1, 3, 5.
    assert kept.tolist() == [[7, 9, 11, 19, 21, 23]]
    with pytest.raises(ValueError, match="grid"):
        select("uniform", vision, projected, saliency, text, 6)
    with pytest.raises(ValueError, match="grid"):
        select("uniform", vision, projected, saliency, text, 6, grid=(5, 5))


def test_uniform_clip_spreads_the_budget_over_frames_remainder_first():
    assert frame_budgets(10, 4) == [3, 3, 2, 2]
    assert frame_budgets(3, 4) == [1, 1, 1, 0]
    vision, projected, saliency, text = make_clip(0, 2, 4, 16, 4, 6, 3)
    kept = select_video("uniform", vision, projected, saliency, text, 10)
    frames = (kept // 16).tolist()
    assert frames == [[0, 0, 0, 1, 1, 1, 2, 2, 3, 3]] * 2
    for t, count in enumerate(frame_budgets(10, 4)):
        assert (kept[0][kept[0] // 16 == t] % 16).tolist() == grid_positions(4, 4, count).tolist()


# ---------------------------------------------------------------- random: seeded


def test_random_is_seeded_and_differs_per_image():
    vision, projected, saliency, text = make_inputs(9, 3, 100, 4, 6, 3)
    kept = select("random", vision, projected, saliency, text, 20)
    assert torch.equal(kept, select("random", vision, projected, saliency, text, 20, seed=0)), "seed 0 is the default"
    assert not torch.equal(kept, select("random", vision, projected, saliency, text, 20, seed=1))
    assert len({tuple(row) for row in kept.tolist()}) == 3, "each image draws its own tokens"
    # Keyed by the image, not by its place in the batch.
    swapped = select("random", vision.flip(0), projected.flip(0), saliency.flip(0), text.flip(0), 20)
    assert torch.equal(swapped, kept.flip(0))
    # The same image twice draws the same tokens.
    twice = [torch.cat([x[:1], x[:1]]) for x in (vision, projected, saliency, text)]
    assert torch.equal(select("random", *twice, 20), kept[:1].expand(2, -1))
    with pytest.raises(ValueError, match="seed"):
        select("random", vision, projected, saliency, text, 20, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        select("random", vision, projected, saliency, text, 20, seed="1")


def test_random_takes_a_seed_per_row():
    vision, projected, saliency, text = make_inputs(9, 3, 100, 4, 6, 3)
    same = [torch.cat([x[:1]] * 3) for x in (vision, projected, saliency, text)]  # one image, three rows
    kept = select("random", *same, 20, seed=[4, 5, 4])
    assert torch.equal(kept[0], select("random", *[x[:1] for x in same], 20, seed=4)[0]), "a row's seed is its int seed"
    assert torch.equal(kept[0], kept[2]) and not torch.equal(kept[0], kept[1])
    clip = make_clip(11, 2, 3, 16, 4, 6, 3)
    rows = select_video("random", *clip, 10, seed=[7, 8])
    assert torch.equal(rows[1], select_video("random", *[x[1:] for x in clip], 10, seed=8)[0])
    for bad in ([1, 2], [1, 2, -3], (1, True, 2)):
        with pytest.raises(ValueError, match=r"seed must be .* a list of 3"):
            select("random", vision, projected, saliency, text, 20, seed=bad)


def test_random_draws_every_token_about_equally():
    # 400 images of 16 tokens, 4 kept each: every token kept about a quarter of the time.
    vision, projected, saliency, text = make_inputs(10, 400, 16, 2, 2, 1)
    kept = select("random", vision, projected, saliency, text, 4)
    share = torch.bincount(kept.view(-1), minlength=16).double() / 400
    assert ((share - 0.25).abs() < 0.1).all(), share


def test_random_clip_of_one_frame_is_the_image_draw():
    vision, projected, saliency, text = make_clip(11, 2, 1, 30, 4, 6, 3)
    image = select("random", vision[:, 0], projected[:, 0], saliency[:, 0], text, 7, seed=5)
    assert torch.equal(select_video("random", vision, projected, saliency, text, 7, seed=5), image)
    image = select("diversity", vision[:, 0], projected[:, 0], saliency[:, 0], text, 7)
    assert torch.equal(select_video("diversity", vision, projected, saliency, text, 7), image)


# ---------------------------------------------------------------- devices


def overlap(a, b):
    """Share of the tokens in rows `a` that rows `b` keep too (rows: a 2-D tensor or a list of 1-D ones)."""
    return sum(len(set(x.tolist()) & set(y.cpu().tolist())) for x, y in zip(a, b)) / sum(len(x) for x in a)


def devices_agree(method, dtype, cpu, cpu_flags, gpu, gpu_flags):
    """Whether a CUDA selection agrees with the CPU one as far as rounding lets it."""
    if method in ("uniform", "random"):  # no arithmetic on the features: identical
        return torch.equal(gpu.cpu(), cpu)
    if dtype != torch.float32 and method == "saliency":
        # bfloat16 inputs tie often, and one tie broken the other way cascades through the greedy diversity
        # step: the important half must agree, the background need not (tests/test_selection.py says more).
        return overlap([a[f] for a, f in zip(cpu, cpu_flags)], [b[f] for b, f in zip(gpu.cpu(), gpu_flags.cpu())]) > 0.9
    return overlap(cpu, gpu) > 0.9  # rounding differs between devices, so near-ties may flip


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", COMPARISONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(method, dtype):
    inputs = [x.to(dtype) for x in make_inputs(11, 4, 576, 64, 96, 12, dtype=torch.float32)]
    cpu, cpu_flags = select(method, *inputs, 64, return_important=True)
    gpu, flags = select(method, *[x.cuda() for x in inputs], 64, return_important=True)
    assert gpu.device.type == flags.device.type == "cuda"
    assert_contract(gpu.cpu(), flags.cpu(), 4, 64, 576)
    assert devices_agree(method, dtype, cpu, cpu_flags, gpu, flags)
    assert torch.equal(gpu, select(method, *[x.cuda() for x in inputs], 64)), "deterministic on CUDA"

    clip = [x.to(dtype) for x in make_clip(12, 2, 8, 576, 64, 96, 12, dtype=torch.float32)]
    cpu, cpu_flags = select_video(method, *clip, 512, return_important=True)
    gpu, flags = select_video(method, *[x.cuda() for x in clip], 512, return_important=True)
    assert_contract(gpu.cpu(), flags.cpu(), 2, 512, 8 * 576)
    assert devices_agree(method, dtype, cpu, cpu_flags, gpu, flags)
