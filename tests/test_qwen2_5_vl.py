"""FlashVLM inside a tiny random Qwen2.5-VL built offline: images, video, original 3-D rotary positions."""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch

from flashvlm.models.qwen2_5_vl import (
    Qwen2_5_VLAdapter,
    merge_window_order,
    received_attention,
)
from flashvlm.models.qwen2_5_vl_inputs import (
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    Qwen2_5_VLFrameProcessor,
    chat_prompt,
    patchify_frames,
)
from flashvlm.selectors import grid_positions

QUESTIONS = ["What is the man holding?", "What happens in the video?"]
METHODS = {"flashvlm": {}, "saliency": {}, "diversity": {}, "uniform": {}, "random": {"seed": 3}}  # with their options


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny(flashvlm_cache):
    """(model, processor) of the tiny checkpoint, built once in the session's offline FLASHVLM_CACHE."""
    from tiny_models import QWEN_PATH
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(QWEN_PATH).eval()
    return model, Qwen2_5_VLFrameProcessor.from_pretrained(QWEN_PATH)


def frames(T: int, H: int = 112, W: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


def block(pad: str) -> str:
    return f"{VISION_START}{pad}{VISION_END}"


@pytest.fixture(scope="module")
def batch(tiny):
    """Row 0: two images (16 and 8 tokens) and a question; row 1: a 4-frame clip (2 x 16 tokens), left-padded."""
    _, processor = tiny
    images = [frames(1, 112, 112, seed=1)[0], frames(1, 56, 112, seed=2)[0]]
    texts = [chat_prompt(block(IMAGE_PAD) + block(IMAGE_PAD) + QUESTIONS[0]), chat_prompt(block(VIDEO_PAD) + QUESTIONS[1])]
    return processor(text=texts, images=images, videos=[frames(4, seed=3)])


class LMInputs:
    """Records what the language model receives on every forward (prefill first, then decode steps)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.lm = model.model.language_model

    def __enter__(self):
        def hook(module, args, kwargs):
            self.calls.append({k: kwargs.get(k) for k in ("inputs_embeds", "position_ids", "attention_mask")})

        self.handle = self.lm.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def generate(model, inputs, **kwargs):
    return model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# Inputs built without torchvision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 112, 112), (3, 100, 130)])  # on the grid; resized, odd T padded
def test_patchify_frames_matches_image_processor_layout(tiny, shape):
    _, processor = tiny
    ip = processor.image_processor
    clip = frames(*shape, seed=4)
    pixels, grid = patchify_frames(clip, processor.geometry, min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
    t, h, w = grid.tolist()
    assert t == (shape[0] + 1) // 2 and pixels.shape == (t * h * w, 3 * 2 * 14 * 14)
    padded = np.concatenate([clip, clip[-1:]]) if shape[0] % 2 else clip  # the last frame repeats
    ours = pixels.view(t, h * w, 3, 2, 14, 14)
    for f in range(2 * t):
        reference = ip(images=[padded[f]], return_tensors="pt")
        assert reference["image_grid_thw"].tolist() == [[1, h, w]]
        # The image processor fills both temporal slots with the image; a clip has frame 2t+s in slot s.
        expected = reference["pixel_values"].view(h * w, 3, 2, 14, 14)[:, :, 0]
        torch.testing.assert_close(ours[f // 2, :, :, f % 2], expected, rtol=0, atol=1e-6)


def test_video_inputs_structure(tiny):
    model, processor = tiny
    inputs = processor.video_question_inputs(frames(4), QUESTIONS, fps=4.0)
    ids, mm = inputs["input_ids"], inputs["mm_token_type_ids"]
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]] * 2
    torch.testing.assert_close(inputs["second_per_grid_ts"], torch.tensor([0.5, 0.5]))
    for row in range(2):
        valid = ids[row][inputs["attention_mask"][row].bool()]
        start = (valid == model.config.vision_start_token_id).nonzero().item()
        assert valid[start + 1 : start + 33].eq(model.config.video_token_id).all()  # 2 x 4 x 4 merged tokens
        assert valid[start + 33] == model.config.vision_end_token_id
        assert processor.decode(valid[start + 34 :]).startswith(QUESTIONS[row])
    assert torch.equal(mm == 2, ids == model.config.video_token_id) and not (mm == 1).any()


# ------------------------------------------------------------------------------------------------
# Saliency
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eager_last_block_attention(model):
    """Switch the tower to eager attention and record the last block's attention weights, per window."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    visual, recorded, state = model.model.visual, [], {"last": False}
    original = qwen.eager_attention_forward

    def recording(module, *args, **kwargs):
        out, weights = original(module, *args, **kwargs)
        if state["last"]:
            recorded.append(weights)  # (1, H, n, n): this window's full attention matrix
        return out, weights

    def mark(module, args):
        state["last"] = module is visual.blocks[-1]

    handles = [b.register_forward_pre_hook(mark) for b in visual.blocks]
    qwen.eager_attention_forward, visual.config._attn_implementation = recording, "eager"
    try:
        yield recorded
    finally:
        qwen.eager_attention_forward, visual.config._attn_implementation = original, "sdpa"
        for h in handles:
            h.remove()


@pytest.mark.parametrize("windowed", [False, True])  # last block full attention (as the real tower), or windowed
def test_saliency_equals_eager_reference(tiny, windowed):
    model, processor = tiny
    visual = model.model.visual
    # 3 images with partial windows (84 px: 3x3 merged tokens), and a clip: windows of several lengths.
    inputs = processor(text=[block(IMAGE_PAD) * 2], images=[frames(1, 84, 84, 5)[0], frames(1, 112, 56, 6)[0]])
    clip, grid = patchify_frames(frames(4, seed=7), processor.geometry)
    pixels = torch.cat([inputs["pixel_values"], clip])
    grid_thw = torch.cat([inputs["image_grid_thw"], grid[None]])
    vlm = Qwen2_5_VLAdapter(model, budget=4, processor=processor)
    saved = visual.fullatt_block_indexes
    visual.fullatt_block_indexes = [] if windowed else saved
    try:
        encoded = vlm.encode(pixels, grid_thw)
        with eager_last_block_attention(model) as recorded:
            with torch.no_grad():
                reference_out = model.model.get_image_features(pixels, grid_thw)
    finally:
        visual.fullatt_block_indexes = saved
    # Attention each row receives: mean over heads and over the queries of its window, rows in tower order.
    received = torch.cat([w[0].float().mean(dim=(0, 1)) for w in recorded])  # (P,)
    from transformers.vision_utils import get_vision_window_index

    _, cu_windows = get_vision_window_index(grid_thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)
    # Full attention: one window per image or temporal patch; windowed: the tower's 2x2-merged-token windows.
    assert len(recorded) == (len(cu_windows) - 1 if windowed else int(grid_thw[:, 0].sum()))
    restore = torch.argsort(merge_window_order(visual, grid_thw))
    reference = received.view(-1, 4).mean(dim=1)[restore]  # pooled over the 2x2 merge window, token order
    ours = torch.cat([e.saliency for e in encoded])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    # The tower's own outputs are untouched by the probe (up to the eager/sdpa difference).
    torch.testing.assert_close(torch.cat([e.merged for e in encoded]), torch.cat(reference_out.pooler_output), rtol=1e-4, atol=1e-5)


def test_received_attention_chunking_is_exact():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 40, 3, 8, generator=g).unbind(0)  # P = 40 rows, 3 heads
    cu = torch.tensor([0, 16, 32, 36, 40], dtype=torch.int32)  # windows of 16, 16, 4, 4
    whole = received_attention(q, k, cu, 0.35)
    for chunk in (1, 7, 3 * 16 * 16, 3 * 16 * 16 * 2):
        torch.testing.assert_close(received_attention(q, k, cu, 0.35, chunk_elements=chunk), whole, rtol=1e-6, atol=1e-7)
    # Each window distributes H * n units of attention over its own rows only: the mean per row is 1 / n... summed: 1.
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        torch.testing.assert_close(whole[a:b].sum(), torch.tensor(1.0))


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 16, 10_000])  # 16: every image and temporal patch has at most 16 tokens
def test_nothing_pruned_is_identical_to_model_generate(tiny, batch, budget):
    model, processor = tiny
    model.model.rope_deltas = None
    with LMInputs(model) as seen_ref:
        reference = generate(model, batch, output_logits=True, return_dict_in_generate=True)
    vlm = Qwen2_5_VLAdapter(model, budget=budget, processor=processor)
    with LMInputs(model) as seen:
        ours, kept = generate(vlm, batch, output_logits=True, return_dict_in_generate=True, return_kept=True)
    assert torch.equal(ours.sequences, reference.sequences)
    for a, b in zip(ours.logits, reference.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Same positions on every step, prefill and decode (the model's own get_rope_index + rope_deltas).
    for mine, theirs in zip(seen.calls, seen_ref.calls):
        assert torch.equal(mine["position_ids"], theirs["position_ids"])
    assert [k.tolist() for k in kept.indices] == [list(range(16)), list(range(8)), list(range(32))]
    assert kept.important == [None, None, None]


def test_kept_tokens_keep_original_positions_and_decoding_continues_them(tiny, batch):
    model, processor = tiny
    full_positions, _ = model.model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"],
        attention_mask=batch["attention_mask"],
    )  # (3, B, S)
    with LMInputs(model) as seen_ref:
        generate(model, batch)
    vlm = Qwen2_5_VLAdapter(model, budget=3, processor=processor)
    with LMInputs(model) as seen:
        _, kept = generate(vlm, batch, guide_text=QUESTIONS, return_kept=True)
    prefill = seen.calls[0]["position_ids"]  # (4, B, S'): 1-D row, then t, h, w
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    visual = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    # Expected kept original columns: every real text token, and each item's kept placeholders.
    keep_visual = torch.cat(
        [torch.zeros(n, dtype=torch.bool).index_fill_(0, k, True) for k, n in zip(kept.indices, [16, 8, 32])]
    )
    keep = mask & ~visual
    keep[visual] = keep_visual  # placeholders are filled row-major: row 0's two images, then row 1's clip
    for b in range(ids.shape[0]):
        expected = full_positions[:, b, keep[b]]  # (3, S'_b) the unpruned ids at the kept columns
        got = prefill[1:, b, -expected.shape[1] :]
        assert torch.equal(got, expected)
    # Decode steps: the next ids continue the unpruned prompt's ids (same rope offset), step after step.
    for step in range(1, len(seen.calls)):
        assert torch.equal(seen.calls[step]["position_ids"][1:], seen_ref.calls[step]["position_ids"][1:])
    # And the stored offset agrees: last id + 1 == kept length + rope_deltas.
    kept_len = seen.calls[0]["attention_mask"].sum(-1)  # the batch is left-padded: a mask is passed
    assert torch.equal(model.model.rope_deltas[:, 0] + kept_len, full_positions.amax(dim=(0, 2)) + 1)


@pytest.mark.parametrize("budget", [1, 3, 8])
def test_language_model_sees_exactly_the_budget(tiny, batch, budget):
    model, processor = tiny
    vlm = Qwen2_5_VLAdapter(model, budget=budget, processor=processor)
    with LMInputs(model) as seen:
        out, kept = generate(vlm, batch, guide_text=QUESTIONS, return_kept=True)
    assert out.shape[1] == batch["input_ids"].shape[1] + 6  # original prompt, then the answer
    expected = [min(budget, 16), min(budget, 8), 2 * budget]  # image, image, clip of 2 temporal patches
    assert [len(k) for k in kept.indices] == expected
    for k, important, total in zip(kept.indices, kept.important, [16, 8, 32]):
        assert torch.equal(k, k.unique()) and k.dtype == torch.long  # distinct, ascending
        # Important flags for what was pruned; none for an item that kept every token.
        assert important is None if len(k) == total else important.shape == k.shape and important.dtype == torch.bool
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    text = (mask & (ids != model.config.image_token_id) & (ids != model.config.video_token_id)).sum(-1)
    lm_mask = seen.calls[0]["attention_mask"]
    lm_lengths = lm_mask.sum(-1) if lm_mask is not None else torch.full((2,), seen.calls[0]["inputs_embeds"].shape[1])
    assert lm_lengths.tolist() == [text[0] + expected[0] + expected[1], text[1] + expected[2]]
    assert seen.calls[0]["inputs_embeds"].shape[1] == int(lm_lengths.max())


def test_batch_of_two_images_and_a_video_matches_one_by_one(tiny, batch):
    model, processor = tiny
    vlm = Qwen2_5_VLAdapter(model, budget=3, processor=processor)
    batched, kept_batched = generate(vlm, batch, guide_text=QUESTIONS, return_kept=True)
    batched = batched[:, batch["input_ids"].shape[1] :]
    images = [frames(1, 112, 112, seed=1)[0], frames(1, 56, 112, seed=2)[0]]
    row0 = processor(text=[chat_prompt(block(IMAGE_PAD) * 2 + QUESTIONS[0])], images=images)
    row1 = processor(text=[chat_prompt(block(VIDEO_PAD) + QUESTIONS[1])], videos=[frames(4, seed=3)])
    single0, kept0 = generate(vlm, row0, guide_text=QUESTIONS[:1], return_kept=True)
    single0 = single0[:, row0["input_ids"].shape[1] :]
    single1, kept1 = generate(vlm, row1, guide_text=QUESTIONS[1:], return_kept=True)
    single1 = single1[:, row1["input_ids"].shape[1] :]
    for a, b in zip(kept_batched.indices, [*kept0.indices, *kept1.indices], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(kept_batched.important, [*kept0.important, *kept1.important], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(batched, torch.cat([single0, single1]))


def test_pruning_changes_the_answer_and_guide_text_changes_the_selection(tiny, batch):
    model, processor = tiny
    full = generate(model, batch)
    vlm = Qwen2_5_VLAdapter(model, budget=1, processor=processor)
    pruned, kept_by_question = generate(vlm, batch, guide_text=QUESTIONS, return_kept=True)
    assert not torch.equal(full, pruned)  # the tiny model is sensitive to what it sees (non-vacuous identity test)
    _, kept = generate(vlm, batch, guide_text=["cat sofa sun", "red umbrella dog"], return_kept=True)
    assert any(not torch.equal(a, b) for a, b in zip(kept_by_question.indices, kept.indices))


def test_prompt_guide_uses_text_after_the_vision_block(tiny):
    """guide="prompt" with no guide_text: the question after the clip guides the selection."""
    model, processor = tiny
    vlm = Qwen2_5_VLAdapter(model, budget=2, guide="prompt", processor=processor)
    kept = []
    for question in ("What is the man holding?", "Describe the cat sleeping on the sofa."):
        _, selection = generate(vlm, processor.video_question_inputs(frames(4, seed=8), question), return_kept=True)
        kept.append(selection.indices[0])
    assert not torch.equal(kept[0], kept[1])


def test_answer_video_encodes_once_and_matches_generate(tiny):
    model, processor = tiny
    clip = frames(6, seed=9)  # 3 temporal patches of 4 x 4 merged tokens
    vlm = Qwen2_5_VLAdapter(model, budget=5, processor=processor)
    tower_calls = []
    handle = model.model.visual.register_forward_hook(lambda *a: tower_calls.append(1))
    try:
        answers = vlm.answer_video(clip, QUESTIONS, max_new_tokens=5)
    finally:
        handle.remove()
    assert len(tower_calls) == 1  # one pass for both questions
    inputs = processor.video_question_inputs(clip, QUESTIONS)
    out, kept = vlm.generate(**inputs, guide_text=QUESTIONS, max_new_tokens=5, do_sample=False, return_kept=True)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    for answer, text, indices, important in zip(answers, texts, kept.indices, kept.important, strict=True):
        assert answer.text == text.strip()
        assert answer.tokens_kept == 15 and answer.tokens_total == 48 and len(answer.kept) == 3
        flat = [t * 16 + p for t, frame in enumerate(answer.kept) for p in frame]
        assert flat == indices.tolist()
        assert [f for frame in answer.important for f in frame] == important.tolist()


@pytest.mark.parametrize("budget", [None, 16, 1000])  # 16: all the tokens of a temporal patch (4 x 4 merged)
def test_answer_video_unpruned_matches_model_generate(tiny, budget):
    model, processor = tiny
    clip = frames(4, seed=10)
    answers = Qwen2_5_VLAdapter(model, budget=budget, processor=processor).answer_video(clip, QUESTIONS, max_new_tokens=6)
    model.model.rope_deltas = None
    inputs = processor.video_question_inputs(clip, QUESTIONS)
    out = generate(model, inputs)[:, inputs["input_ids"].shape[1] :]
    texts = processor.batch_decode(out, skip_special_tokens=True)
    for answer, text in zip(answers, texts, strict=True):
        assert answer.text == text.strip()
        assert answer.tokens_kept == answer.tokens_total == 32
        assert answer.kept == [list(range(16))] * 2 and answer.important is None


def test_wrap_dispatches_and_errors_are_clear(tiny, batch):
    import flashvlm

    model, processor = tiny
    vlm = flashvlm.wrap(model, budget=4, processor=processor)
    assert isinstance(vlm, Qwen2_5_VLAdapter)
    bad = dict(batch, input_ids=batch["input_ids"][:, 1:], attention_mask=batch["attention_mask"][:, 1:])
    bad["mm_token_type_ids"] = batch["mm_token_type_ids"][:, 1:]
    bad["input_ids"] = bad["input_ids"].masked_fill(bad["input_ids"] == model.config.video_token_id, 0)
    with pytest.raises(ValueError, match="video placeholder"):
        vlm.generate(**bad, max_new_tokens=1)
    with pytest.raises(ValueError, match="frames"):
        vlm.answer_video(np.zeros((2, 56, 56), dtype=np.uint8), QUESTIONS)


@pytest.mark.parametrize("budget", [None, 3])
def test_generate_needs_no_processor(tiny, batch, budget):
    """A model built in memory (no name_or_path): generate reads its token ids off the config."""
    import flashvlm

    model, processor = tiny
    config = copy.deepcopy(model.config)
    config.name_or_path = ""
    fresh = type(model)(config).eval()
    fresh.load_state_dict(model.state_dict())
    vlm = flashvlm.wrap(fresh, budget=budget)  # no processor
    out, kept = generate(vlm, batch, return_kept=True)
    expected, expected_kept = generate(Qwen2_5_VLAdapter(model, budget=budget, processor=processor), batch, return_kept=True)
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(kept.indices, expected_kept.indices, strict=True))
    if budget is not None:
        with pytest.raises(ValueError, match="processor="):
            generate(vlm, batch, guide_text=QUESTIONS)
    with pytest.raises(ValueError, match="processor="):
        vlm.answer_video(frames(4), QUESTIONS, max_new_tokens=1)


def test_load_tiny_by_path_and_answer(flashvlm_cache):
    import flashvlm
    from tiny_models import QWEN_PATH

    model, processor = flashvlm.load(QWEN_PATH, dtype="float32")
    answers = flashvlm.wrap(model, budget=4, processor=processor).answer_video(frames(4), QUESTIONS, max_new_tokens=3)
    assert [a.tokens_kept for a in answers] == [8, 8]


# ------------------------------------------------------------------------------------------------
# Comparison selectors (flashvlm.selectors.METHODS) and the evaluation's features-once API
# ------------------------------------------------------------------------------------------------


def full_positions(model, inputs):
    """(3, B, S) MRoPE ids of the unpruned prompt, as the model computes them."""
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        attention_mask=inputs["attention_mask"],
    )
    return positions


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(4, 112, 112), (6, 112, 56)])  # 2 patches of 4 x 4 merged tokens; 3 of 4 x 2
def test_every_method_keeps_the_budget_per_temporal_patch_at_original_positions(tiny, method, shape):
    model, processor = tiny
    clip = frames(*shape, seed=11)
    T, rows, cols = shape[0] // 2, shape[1] // 28, shape[2] // 28  # temporal patches, merged-token grid
    N, budget = rows * cols, 3
    vlm = Qwen2_5_VLAdapter(model, budget=budget, processor=processor, method=method, method_options=METHODS[method])
    with LMInputs(model) as seen:
        answers = vlm.answer_video(clip, QUESTIONS, max_new_tokens=2)
    for answer in answers:
        assert answer.tokens_kept == budget * T and answer.tokens_total == N * T and len(answer.kept) == T
        assert sum(len(k) for k in answer.kept) == budget * T
        assert all(k == sorted(set(k)) and all(0 <= p < N for p in k) for k in answer.kept)
        if method == "uniform":  # the same positions in every temporal patch, spread over its rows x cols grid
            assert answer.kept == [grid_positions(rows, cols, budget).tolist()] * T
        if method in ("diversity", "uniform", "random"):  # no important / background split: all False
            assert not any(flag for frame in answer.important for flag in frame)
    # The kept tokens keep their original MRoPE ids: the unpruned prompt's ids at the kept columns.
    inputs = processor.video_question_inputs(clip, QUESTIONS)
    positions = full_positions(model, inputs)  # (3, B, S)
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    is_video = ids == model.config.video_token_id
    prefill = seen.calls[0]["position_ids"]  # (4, B, S')
    for b, answer in enumerate(answers):
        flat = torch.tensor([t * N + p for t, kept in enumerate(answer.kept) for p in kept])
        keep = mask[b] & ~is_video[b]
        keep[is_video[b]] = torch.zeros(N * T, dtype=torch.bool).index_fill_(0, flat, True)
        expected = positions[:, b, keep]  # (3, S'_b)
        assert torch.equal(prefill[1:, b, -expected.shape[1] :], expected)


def test_random_is_reproducible_by_seed(tiny):
    model, processor = tiny
    clip = frames(4, seed=12)

    def kept(seed):
        vlm = Qwen2_5_VLAdapter(model, budget=3, processor=processor, method="random", method_options={"seed": seed})
        return [a.kept for a in vlm.answer_video(clip, QUESTIONS, max_new_tokens=1)]

    assert kept(5) == kept(5) and kept(5) != kept(6)
    # The same draw from features computed once (the evaluation's path).
    vlm = Qwen2_5_VLAdapter(model, budget=None, processor=processor)
    again = vlm.answer_features(vlm.encode_video(clip), QUESTIONS, max_new_tokens=1, budget=3, method="random", options={"seed": 5})
    assert [a.kept for a in again] == kept(5)


def test_uniform_takes_the_clips_own_grid_and_refuses_another(tiny):
    model, processor = tiny
    clip = frames(4, 112, 56, seed=13)  # each temporal patch: 4 rows x 2 columns of merged tokens

    def uniform(**options):
        vlm = Qwen2_5_VLAdapter(model, budget=2, processor=processor, method="uniform", method_options=options)
        return vlm.answer_video(clip, QUESTIONS[:1], max_new_tokens=1)[0].kept

    assert uniform() == uniform(grid=(4, 2)) == [grid_positions(4, 2, 2).tolist()] * 2
    with pytest.raises(ValueError, match=r"grid: method_options grid \(2, 4\) is not the model's token grid \(4, 2\)"):
        uniform(grid=(2, 4))


def test_images_are_selected_by_the_method_too(tiny, batch):
    """generate: the two images (4 x 4 and 2 x 4 merged tokens) and the clip all go through `uniform`."""
    model, processor = tiny
    vlm = Qwen2_5_VLAdapter(model, budget=3, processor=processor, method="uniform")
    _, kept = generate(vlm, batch, guide_text=QUESTIONS, return_kept=True)
    assert kept.indices[0].tolist() == grid_positions(4, 4, 3).tolist()
    assert kept.indices[1].tolist() == grid_positions(2, 4, 3).tolist()
    assert kept.indices[2].tolist() == [t * 16 + p for t in range(2) for p in grid_positions(4, 4, 3).tolist()]
    assert not any(flags.any() for flags in kept.important)


def test_answer_features_matches_answer_video_at_every_setting(tiny):
    model, processor = tiny
    clip = frames(4, 112, 56, seed=14)
    vlm = Qwen2_5_VLAdapter(model, budget=None, processor=processor)
    tower_calls = []
    handle = model.model.visual.register_forward_hook(lambda *a: tower_calls.append(1))
    try:
        features = vlm.encode_video(clip)
        settings = [vlm.answer_features(features, QUESTIONS, max_new_tokens=3, budget=3, method=m, options=o) for m, o in METHODS.items()]
    finally:
        handle.remove()
    assert len(tower_calls) == 1  # one tower pass serves every setting
    assert features.grid == (4, 2) and features.frames == 2 and features.tokens_per_frame == 8
    for (method, options), again in zip(METHODS.items(), settings):
        direct = Qwen2_5_VLAdapter(model, budget=3, processor=processor, method=method, method_options=options)
        direct = direct.answer_video(clip, QUESTIONS, max_new_tokens=3)
        assert [(a.text, a.kept, a.important) for a in again] == [(a.text, a.kept, a.important) for a in direct], method
    full = vlm.answer_features(features, QUESTIONS, max_new_tokens=3)
    assert [a.text for a in full] == [a.text for a in vlm.answer_video(clip, QUESTIONS, max_new_tokens=3)]
    assert all(a.tokens_kept == a.tokens_total == 16 and a.important is None for a in full)
    with pytest.raises(ValueError, match="features must be"):
        vlm.answer_features(object(), QUESTIONS)
    with pytest.raises(ValueError, match="has no option 'seed'"):
        vlm.answer_features(features, QUESTIONS, budget=3, method="uniform", options={"seed": 1})


def test_score_choices_is_the_sum_of_option_token_log_probs(tiny):
    """Worked by hand at full budget: the model's own forward over the unpruned prompt + option, its own
    MRoPE ids, and the log-probabilities of the option's tokens summed; the pick is the highest sum."""
    model, processor = tiny
    clip = frames(4, seed=15)
    vlm = Qwen2_5_VLAdapter(model, budget=None, processor=processor)
    features = vlm.encode_video(clip)
    question, choices = QUESTIONS[0], ["a red ball", "blue", "up"]
    scores, best = vlm.score_choices(features, question, choices)
    inputs = processor.video_question_inputs(clip, question)  # (1, S)
    S = inputs["input_ids"].shape[1]
    for choice, score in zip(choices, scores):
        option = processor.tokenizer(choice, add_special_tokens=False)["input_ids"]
        ids = torch.cat([inputs["input_ids"][0], torch.tensor(option)])[None]  # (1, S + n)
        full = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(option), dtype=torch.int32)], 1)
        model.model.rope_deltas = None
        with torch.no_grad():
            logprobs = model(**full).logits[0].float().log_softmax(-1)
        by_hand = sum(float(logprobs[S - 1 + i, t]) for i, t in enumerate(option))
        assert math.isclose(score, by_hand, rel_tol=1e-4, abs_tol=1e-3), (choice, score, by_hand)
    assert best.text == choices[int(np.argmax(scores))]
    _, pruned = vlm.score_choices(features, question, choices, budget=2, method="uniform")
    assert pruned.tokens_kept == 4 and pruned.kept == [grid_positions(4, 4, 2).tolist()] * 2
    with pytest.raises(ValueError, match="choices must be"):
        vlm.score_choices(features, question, [])
