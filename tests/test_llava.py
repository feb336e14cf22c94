"""FlashVLM inside a real (tiny, random) LLaVA-1.5: saliency, one projection, pruned generation, video.

The tiny checkpoint has the real image geometry (CLIP at 336 px / patch 14: N = 576) and is built once
per session offline, then loaded through `flashvlm.load` exactly as a hub checkpoint would be.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import flashvlm
from flashvlm.models.base import VideoAnswer
from flashvlm.models.llava import LlavaAdapter, feature_layer_index
from tiny_models import LLAVA_PATH, TINY_LLAVA, build_tiny_llava, tiny_cache_dir, tiny_model_path

N = 576
PROMPT = "USER: <image>\n{q} ASSISTANT:"
QUESTIONS = ["What is the man holding?", "Describe the scene.", "How many people are there at the table?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llava(flashvlm_cache):
    model, processor = flashvlm.load(LLAVA_PATH, dtype="float32")
    return model, processor


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (200 + 40 * i, 300, 3), dtype=np.uint8) for i in range(count)]


def batch(processor, questions, seed=0):
    return processor(
        images=images(len(questions), seed),
        text=[PROMPT.format(q=q) for q in questions],
        return_tensors="pt",
        padding=True,
    )


def greedy(**kwargs):
    return {"max_new_tokens": 6, "do_sample": False, **kwargs}


class LanguageModelInputs:
    """Records what the language model receives on its first (prefill) call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --------------------------------------------------------------------------------------------------
# Loading the tiny checkpoint
# --------------------------------------------------------------------------------------------------


def test_tiny_llava_has_real_geometry_and_loads_offline(llava):
    model, processor = llava
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert LLAVA_PATH == str(tiny_cache_dir(TINY_LLAVA))
    vision = model.config.vision_config
    assert (vision.image_size, vision.patch_size) == (336, 14)
    assert 2 <= vision.num_hidden_layers <= 4 and model.config.text_config.num_hidden_layers <= 4
    assert model.model.vision_tower.config._attn_implementation == "sdpa"
    assert model.dtype == torch.float32 and not model.training
    inputs = batch(processor, QUESTIONS[:1])
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == N
    assert tiny_model_path(TINY_LLAVA) == LLAVA_PATH  # built once, then reused


def test_tiny_llava_build_is_deterministic(llava, tmp_path):
    model, _ = llava
    other = type(model).from_pretrained(build_tiny_llava(tmp_path / "again"))
    theirs = other.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


# --------------------------------------------------------------------------------------------------
# Saliency and features
# --------------------------------------------------------------------------------------------------


def test_saliency_matches_eager_attention_of_the_feature_layer(llava):
    model, processor = llava
    eager = type(model).from_pretrained(LLAVA_PATH, attn_implementation="eager").eval()
    pixel_values = batch(processor, QUESTIONS)["pixel_values"]  # (3, 3, 336, 336)
    vlm = flashvlm.wrap(model, budget=64, processor=processor)
    vision, projected, saliency = vlm.encode_images(pixel_values)

    with torch.no_grad():
        attentions = eager.model.vision_tower(pixel_values, output_attentions=True).attentions
    layer = len(attentions) - 2  # vision_feature_layer -2: the output of the penultimate layer
    assert vlm.feature_layer == layer
    expected = attentions[layer][:, :, 0, 1:].mean(dim=1)  # (M, N): [CLS] row, patches, head mean
    assert saliency.shape == (3, N) and saliency.dtype == torch.float32
    torch.testing.assert_close(saliency, expected, rtol=1e-5, atol=1e-7)
    # The tower kept its fused attention, and the hook was removed afterwards.
    assert model.model.vision_tower.config._attn_implementation == "sdpa"
    assert not vlm.attention.q_proj._forward_hooks and not vlm.attention.k_proj._forward_hooks

    # Features are the model's own: layer -2 without [CLS], and their projection.
    with torch.no_grad():
        own = model.model.get_image_features(pixel_values=pixel_values)
    torch.testing.assert_close(vision, own.hidden_states[-2][:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(projected, torch.stack(list(own.pooler_output)), rtol=0, atol=0)


def test_feature_layer_index():
    assert feature_layer_index(-2, 24) == 22 and feature_layer_index(-1, 24) == 23
    assert feature_layer_index(1, 24) == 0 and feature_layer_index(24, 24) == 23
    for bad in (0, -25, 25):
        with pytest.raises(ValueError, match="vision_feature_layer"):
            feature_layer_index(bad, 24)


# --------------------------------------------------------------------------------------------------
# No pruning: identical to the model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, N, 1000])
def test_full_budget_is_identical_to_model_generate(llava, budget):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    kwargs = greedy(return_dict_in_generate=True, output_logits=True)
    expected = model.generate(**inputs, **kwargs)
    vlm = flashvlm.wrap(model, budget=budget, processor=processor)
    got, kept = vlm.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    for ours, theirs in zip(got.logits, expected.logits, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert [k.tolist() for k in kept.indices] == [list(range(N))] * 3
    assert kept.important == [None] * 3  # nothing pruned: no important/diverse split
    # Plain tensor output too, as model.generate gives it.
    assert torch.equal(vlm.generate(**inputs, **greedy()), model.generate(**inputs, **greedy()))


# --------------------------------------------------------------------------------------------------
# Pruned generation
# --------------------------------------------------------------------------------------------------


def test_language_model_sees_exactly_budget_tokens_per_image_in_order(llava):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)  # different prompt lengths: left padding
    budget = 64
    vlm = flashvlm.wrap(model, budget=budget, processor=processor)
    vision, projected, saliency = vlm.encode_images(inputs["pixel_values"])
    projector_calls = []
    handle = model.model.multi_modal_projector.register_forward_hook(lambda *a: projector_calls.append(1))
    try:
        with LanguageModelInputs(model) as seen:
            out, selection = vlm.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy())
    finally:
        handle.remove()
    assert len(projector_calls) == 1  # projected once per call

    kept = selection.indices
    assert len(kept) == 3 and len(selection.important) == 3
    for k, important in zip(kept, selection.important):
        assert important.dtype == torch.bool and important.shape == k.shape
        assert int(important.sum()) == budget // 2  # important_ratio 0.5: half important, half diverse
    for k in kept:
        assert k.dtype == torch.long and k.shape == (budget,)
        assert bool((k[1:] > k[:-1]).all())  # original order

    prefill = seen.calls[0]
    embeds, mask, positions = prefill["inputs_embeds"], prefill["attention_mask"], prefill["position_ids"]
    text_lengths = (inputs["attention_mask"].sum(1) - N).tolist()  # real text tokens per prompt
    S = max(text_lengths) + budget
    assert embeds.shape[:2] == (3, S) and mask.shape == (3, S)
    for row, (length, k) in enumerate(zip(text_lengths, kept)):
        real = mask[row].bool()
        assert int(real.sum()) == length + budget
        assert not bool(real[: S - length - budget].any())  # left padding only
        assert positions[row, real].tolist() == list(range(length + budget))  # positions shortened to match
        # The image positions carry the kept rows of the one projection, in original order.
        image_rows = embeds[row, real]
        start = int((inputs["input_ids"][row][inputs["attention_mask"][row].bool()] == model.config.image_token_id).nonzero()[0])
        torch.testing.assert_close(image_rows[start : start + budget], projected[row, k], rtol=0, atol=0)
    # The answer comes after the original prompt, as with model.generate.
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6


def test_batch_gives_the_same_answers_as_one_by_one(llava):
    model, processor = llava
    vlm = flashvlm.wrap(model, budget=64, processor=processor)
    inputs = batch(processor, QUESTIONS)
    together, kept_together = vlm.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy())
    prompt_length = inputs["input_ids"].shape[1]
    for i, question in enumerate(QUESTIONS):
        one = processor(images=images(3)[i], text=PROMPT.format(q=question), return_tensors="pt")
        alone, kept = vlm.generate(**one, guide_text=[question], return_kept=True, **greedy())
        assert alone[0, one["input_ids"].shape[1] :].tolist() == together[i, prompt_length:].tolist()
        assert torch.equal(kept.indices[0], kept_together.indices[i])
        assert torch.equal(kept.important[0], kept_together.important[i])


def test_pruning_changes_the_input_but_stays_deterministic(llava):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    vlm = flashvlm.wrap(model, budget=32, processor=processor)
    first = vlm.generate(**inputs, guide_text=QUESTIONS, **greedy(return_dict_in_generate=True, output_logits=True))
    second = vlm.generate(**inputs, guide_text=QUESTIONS, **greedy(return_dict_in_generate=True, output_logits=True))
    assert torch.equal(first.sequences, second.sequences)
    full = model.generate(**inputs, **greedy(return_dict_in_generate=True, output_logits=True))
    assert not torch.allclose(first.logits[0], full.logits[0])  # 32 of 576 tokens: a different prompt


# --------------------------------------------------------------------------------------------------
# Guide modes
# --------------------------------------------------------------------------------------------------


def test_guide_question_uses_the_question_tokens(llava):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    vlm = flashvlm.wrap(model, budget=48, processor=processor)
    _, kept = vlm.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    vision, projected, saliency = vlm.encode_images(inputs["pixel_values"])
    for i, question in enumerate(QUESTIONS):
        ids = processor.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
        text = model.get_input_embeddings()(ids)  # (1, L, D)
        expected, important = flashvlm.select_tokens(
            vision[i : i + 1], projected[i : i + 1], saliency[i : i + 1], text, 48, return_important=True
        )
        assert torch.equal(kept.indices[i], expected[0]) and torch.equal(kept.important[i], important[0])
    # One string guides every prompt.
    _, kept = vlm.generate(**inputs, guide_text=QUESTIONS[0], return_kept=True, **greedy(max_new_tokens=1))
    ids = processor.tokenizer(QUESTIONS[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    text = model.get_input_embeddings()(ids).expand(3, -1, -1)
    assert torch.equal(torch.stack(kept.indices), flashvlm.select_tokens(vision, projected, saliency, text, 48))


def test_images_are_selected_by_the_adapters_method(llava):
    from flashvlm.selectors import grid_positions, select

    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    uniform = flashvlm.wrap(model, budget=36, processor=processor, method="uniform")
    _, kept = uniform.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    assert all(torch.equal(k, grid_positions(24, 24, 36)) for k in kept.indices)
    assert not any(f.any() for f in kept.important)  # uniform has no important/background split

    randomly = flashvlm.wrap(model, budget=36, processor=processor, method="random", method_options={"seed": 4})
    _, kept = randomly.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    vision, projected, saliency = randomly.encode_images(inputs["pixel_values"])
    expected = select("random", vision, projected, saliency, None, 36, seed=4)
    assert torch.equal(torch.stack(kept.indices), expected)


def test_guide_prompt_uses_every_non_image_prompt_token(llava):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    vision, projected, saliency = flashvlm.wrap(model, processor=processor).encode_images(inputs["pixel_values"])
    expected = []
    specials = [model.config.image_token_id, processor.tokenizer.bos_token_id]
    for i in range(len(QUESTIONS)):
        # The prompt's text: everything but the image placeholders, BOS and padding.
        ids = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
        ids = ids[~torch.isin(ids, torch.tensor(specials))]
        assert len(ids) > len(processor.tokenizer(QUESTIONS[i], add_special_tokens=False)["input_ids"])
        text = model.get_input_embeddings()(ids[None])
        expected.append(flashvlm.select_tokens(vision[i : i + 1], projected[i : i + 1], saliency[i : i + 1], text, 48)[0])

    prompt_mode = flashvlm.wrap(model, budget=48, guide="prompt", processor=processor)
    _, kept = prompt_mode.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    by_prompt = kept.indices  # guide_text ignored
    for got, want in zip(by_prompt, expected):
        assert torch.equal(got, want)

    # guide="question" without guide_text falls back to the prompt text.
    fallback = flashvlm.wrap(model, budget=48, guide="question", processor=processor)
    _, kept = fallback.generate(**inputs, return_kept=True, **greedy(max_new_tokens=1))
    assert all(torch.equal(a, b) for a, b in zip(kept.indices, by_prompt))
    # ... and the question alone chooses differently from the whole prompt.
    _, kept = fallback.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    assert any(not torch.equal(a, b) for a, b in zip(kept.indices, by_prompt))


def test_text_weighting_in_the_config_reaches_the_selection(llava):
    model, processor = llava
    inputs = batch(processor, QUESTIONS)
    norm = flashvlm.SelectionConfig(text_weighting="norm")
    vlm = flashvlm.wrap(model, budget=48, config=norm, processor=processor)
    _, kept = vlm.generate(**inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1))
    vision, projected, saliency = vlm.encode_images(inputs["pixel_values"])
    for i, question in enumerate(QUESTIONS):
        ids = processor.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
        text = model.get_input_embeddings()(ids)  # (1, L, D)
        expected = flashvlm.select_tokens(vision[i : i + 1], projected[i : i + 1], saliency[i : i + 1], text, 48, config=norm)
        assert torch.equal(kept.indices[i], expected[0])
    # The question tokens' embedding norms differ, so weighing by them chooses differently.
    _, plain = flashvlm.wrap(model, budget=48, processor=processor).generate(
        **inputs, guide_text=QUESTIONS, return_kept=True, **greedy(max_new_tokens=1)
    )
    assert any(not torch.equal(a, b) for a, b in zip(kept.indices, plain.indices))


# --------------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------------


def clip(frames=3, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (frames, 120, 160, 3), dtype=np.uint8)


def test_answer_video_selects_across_the_clip_per_question(llava):
    model, processor = llava
    budget, T = 32, 3
    frames = clip(T)
    questions = ["What happens in the video?", "Where is the dog?"]
    vlm = flashvlm.wrap(model, budget=budget, processor=processor)
    answers = vlm.answer_video(frames, questions, max_new_tokens=4)

    assert len(answers) == 2 and all(isinstance(a, VideoAnswer) for a in answers)
    pixel_values = processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
    vision, projected, saliency = vlm.encode_images(pixel_values)  # (T, N, ...)
    for answer, question in zip(answers, questions):
        assert isinstance(answer.text, str)
        assert answer.tokens_total == T * N and answer.tokens_kept == budget * T
        assert len(answer.kept) == T and sum(len(k) for k in answer.kept) == budget * T
        assert all(k == sorted(set(k)) and all(0 <= i < N for i in k) for k in answer.kept)
        ids = processor.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"]
        expected, important = flashvlm.select_video_tokens(
            vision[None], projected[None], saliency[None], model.get_input_embeddings()(ids), budget=budget * T,
            return_important=True,
        )
        flat = [t * N + i for t, kept in enumerate(answer.kept) for i in kept]
        assert flat == expected[0].tolist()
        assert [f for frame in answer.important for f in frame] == important[0].tolist()

    # All questions in one batch answer as each question alone.
    for answer, question in zip(answers, questions):
        alone = vlm.answer_video(frames, [question], max_new_tokens=4)[0]
        assert alone == answer


@pytest.mark.parametrize("budget", [None, N, 1000])
def test_answer_video_unpruned_matches_model_generate(llava, budget):
    model, processor = llava
    frames = clip(2)
    vlm = flashvlm.wrap(model, budget=budget, processor=processor)
    answer = vlm.answer_video(frames, ["What happens?"], max_new_tokens=4)[0]
    assert answer.tokens_kept == answer.tokens_total == 2 * N
    assert answer.kept == [list(range(N))] * 2 and answer.important is None
    inputs = processor(images=list(frames), text="USER: <image><image>\nWhat happens? ASSISTANT:", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    text = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.text == text.strip()


def test_answer_video_inputs_equal_the_processors(llava):
    """The fast input paths (pixel table, one <image> per frame then expanded) give the processor's tensors."""
    model, processor = llava
    vlm = flashvlm.wrap(model, budget=32, processor=processor)
    rng = np.random.default_rng(3)
    at_size = rng.integers(0, 256, (3, 336, 336, 3), dtype=np.uint8)
    at_size.flags.writeable = False  # as the pipeline hands them over (a view of Arrow's buffer)
    expected = processor.image_processor(images=list(at_size), return_tensors="pt")["pixel_values"]
    assert torch.equal(vlm.pixel_values(at_size), expected)
    assert vlm._pixel_tables[(336, 336)] is not None  # the table was used
    other = clip(2)  # 120 x 160: not the crop size, so the processor itself runs
    assert torch.equal(vlm.pixel_values(other), processor.image_processor(images=list(other), return_tensors="pt")["pixel_values"])
    assert vlm._pixel_tables[(120, 160)] is None

    questions = ["What happens in the video?", "Where is the dog?", ""]
    for frames in (1, 3):
        ids, mask = vlm.video_prompts(questions, frames)
        prompts = [f"USER: {processor.image_token * N * frames}\n{q} ASSISTANT:" for q in questions]
        full = processor.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        assert torch.equal(ids, full["input_ids"]) and torch.equal(mask, full["attention_mask"])
    assert vlm._short_prompts is True


def test_encode_images_stops_after_the_feature_layer(llava):
    """The layers above vision_feature_layer never run; features and projection are still the model's own."""
    model, processor = llava
    vlm = flashvlm.wrap(model, budget=32, processor=processor)
    pixel_values = batch(processor, QUESTIONS[:2])["pixel_values"]
    layers = model.model.vision_tower.encoder.layers
    before = [len(layer._forward_hooks) for layer in layers]  # transformers may have hooks of its own there
    ran = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    try:
        vision, projected, _ = vlm.encode_images(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == list(range(vlm.feature_layer + 1)) and vlm.feature_layer < len(layers) - 1
    assert [len(layer._forward_hooks) for layer in layers] == before  # the early stop removed its hook
    with torch.no_grad():
        own = model.model.get_image_features(pixel_values=pixel_values)
    assert torch.equal(vision, own.hidden_states[-2][:, 1:])
    assert torch.equal(projected, torch.stack(list(own.pooler_output)))


# --------------------------------------------------------------------------------------------------
# Contracts and bad inputs
# --------------------------------------------------------------------------------------------------


def test_wrap_and_load_contracts(llava):
    model, processor = llava
    vlm = flashvlm.wrap(model, budget=64)  # processor loaded from the model's own directory
    assert isinstance(vlm, LlavaAdapter) and vlm.budget == 64 and vlm.config == flashvlm.SelectionConfig()
    assert type(vlm.processor).__name__ == "LlavaProcessor"
    config = flashvlm.SelectionConfig(important_ratio=0.25)
    assert flashvlm.wrap(model, 8, config=config, guide="prompt").config is config
    loaded, _ = flashvlm.load(LLAVA_PATH, dtype=torch.float32, device="cpu")
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"


def built_in_memory(model):
    """The same weights in a model built from its config in memory: no name_or_path, no processor to load."""
    config = copy.deepcopy(model.config)
    config.name_or_path = ""
    fresh = type(model)(config).eval()
    fresh.load_state_dict(model.state_dict())
    assert fresh.name_or_path == ""
    return fresh


@pytest.mark.parametrize("budget", [None, 48])
def test_generate_needs_no_processor(llava, budget):
    """Prompt-guided generate reads BOS, padding and the image token off the model's config."""
    model, processor = llava
    fresh = built_in_memory(model)
    inputs = batch(processor, QUESTIONS)
    vlm = flashvlm.wrap(fresh, budget=budget)  # no processor
    out, kept = vlm.generate(**inputs, return_kept=True, **greedy())
    with_processor = flashvlm.wrap(model, budget=budget, processor=processor)
    expected, expected_kept = with_processor.generate(**inputs, return_kept=True, **greedy())
    assert torch.equal(out, expected)
    assert all(torch.equal(a, b) for a, b in zip(kept.indices, expected_kept.indices, strict=True))
    if budget is None:
        assert torch.equal(out, fresh.generate(**inputs, **greedy()))
    # What does need the processor says so: guide text to tokenize (when there is something to select) ...
    if budget is not None:
        with pytest.raises(ValueError, match="processor="):
            vlm.generate(**inputs, guide_text=QUESTIONS, **greedy())
    else:
        assert torch.equal(vlm.generate(**inputs, guide_text=QUESTIONS, **greedy()), out)
    # ... and prompts to build.
    with pytest.raises(ValueError, match="processor="):
        vlm.answer_video(clip(), ["What happens?"], max_new_tokens=1)


def test_bad_inputs_are_value_errors_naming_them(llava):
    model, processor = llava
    with pytest.raises(ValueError, match="model"):
        flashvlm.wrap(torch.nn.Linear(2, 2))
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="budget"):
            flashvlm.wrap(model, budget=bad)
    with pytest.raises(ValueError, match="guide"):
        flashvlm.wrap(model, guide="answer")
    with pytest.raises(ValueError, match="config"):
        flashvlm.wrap(model, config={"eta": 0.5})
    with pytest.raises(ValueError, match="dtype"):
        flashvlm.load(LLAVA_PATH, dtype="float8")
    with pytest.raises(ValueError, match="name_or_path"):
        flashvlm.load(None)

    vlm = flashvlm.wrap(model, budget=16, processor=processor)
    inputs = batch(processor, QUESTIONS[:2])
    with pytest.raises(ValueError, match="guide_text"):
        vlm.generate(**inputs, guide_text=["only one"])
    with pytest.raises(ValueError, match="guide_text"):
        vlm.generate(**inputs, guide_text=[1, 2])
    with pytest.raises(ValueError, match="pixel_values"):
        vlm.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])
    with pytest.raises(ValueError, match="input_ids"):
        vlm.generate(input_ids=inputs["input_ids"].float(), pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="attention_mask"):
        vlm.generate(**{**inputs, "attention_mask": inputs["attention_mask"][:, 1:]})
    with pytest.raises(ValueError, match="inputs_embeds"):
        vlm.generate(**inputs, inputs_embeds=torch.zeros(1))
    with pytest.raises(ValueError, match="frames"):
        vlm.answer_video(clip().astype(np.float32), ["q"])
    with pytest.raises(ValueError, match="frames"):
        vlm.answer_video(clip()[0], ["q"])
    with pytest.raises(ValueError, match="questions"):
        vlm.answer_video(clip(), "q")
    with pytest.raises(ValueError, match="max_new_tokens"):
        vlm.answer_video(clip(), ["q"], max_new_tokens=0)
    with pytest.raises(ValueError, match="fps"):
        vlm.answer_video(clip(), ["q"], fps=0)
