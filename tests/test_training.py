"""Training the shapes LLaVA (pipeline/training.py): the examples it builds, batching, and one short run."""

import json

import pytest
import torch

from flashvlm import shapes
from flashvlm.shapes_model import CAPTION_PROMPT, IGNORE_INDEX, build_shapes_model, conversation
from pipeline.training import StageConfig, TrainConfig, collate, train


@pytest.fixture(scope="module")
def model_and_adapter():
    from flashvlm.models import wrap

    model, processor = build_shapes_model(seed=0)
    return model, wrap(model, budget=None, processor=processor)


def test_conversation_starts_with_the_inference_prompt_and_labels_only_answers(model_and_adapter):
    _, adapter = model_and_adapter
    turns = [("What colour is the circle?", "red"), ("How many stars are there?", "2")]
    ids, labels = conversation(adapter, 2, turns)  # (1, S) each
    first = adapter.video_prompts([turns[0][0]], 2)[0][0]
    assert torch.equal(ids[0, : len(first)], first), "the first turn is exactly what answer_video builds"
    assert (ids == adapter.model.config.image_token_id).sum() == 2 * 576
    supervised = labels[0] != IGNORE_INDEX
    assert torch.equal(labels[0][supervised], ids[0][supervised])
    text = adapter.tokenizer.decode(ids[0][supervised])
    assert text.replace(" ", "") == "red</s>2</s>"
    assert "USER: How many stars are there? ASSISTANT:" in adapter.tokenizer.decode(ids[0][~supervised])


def test_a_padded_batch_has_the_loss_of_its_examples(model_and_adapter):
    model, adapter = model_and_adapter
    specs = [shapes.sample_clip(shapes.clip_seed("train", i), 1) for i in range(2)]
    examples = [
        conversation(adapter, 1, [(CAPTION_PROMPT, shapes.caption(specs[0]))]),
        conversation(adapter, 1, [(q.question, q.answer) for q in shapes.questions(specs[1])]),
    ]
    pixels = [adapter.pixel_values(shapes.render(spec)) for spec in specs]  # (1, 3, 336, 336) each
    ids, labels, mask = collate(examples, adapter.tokenizer.pad_token_id)
    assert ids.shape[1] == max(x.shape[1] for x, _ in examples)
    short = min(range(2), key=lambda b: examples[b][0].shape[1])
    assert (mask[short] == 0).any() and (labels[short][mask[short] == 0] == IGNORE_INDEX).all()

    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=torch.cat(pixels), labels=labels).loss
        # HF's loss is the mean over every supervised token of the batch: weight each example by its count
        losses, counts = [], []
        for (x, y), pv in zip(examples, pixels):
            losses.append(model(input_ids=x, pixel_values=pv, labels=y).loss)
            counts.append(int((y[0, 1:] != IGNORE_INDEX).sum()))
    expected = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    assert batched.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.slow
def test_a_short_run_saves_a_checkpoint_that_loads(tmp_path, monkeypatch):
    import flashvlm
    import flashvlm.models

    cfg = TrainConfig(
        frames=1,
        stages=[StageConfig(kind="alignment", steps=1, batch=2, lr=1e-4, warmup=1, frames=[1]),
                StageConfig(kind="qa", steps=1, batch=2, lr=1e-4, warmup=1, frames=[1, 2])],
        validation_clips=1, test_clips=1, output=str(tmp_path / "ckpt"),
    )
    lines: list[str] = []
    record = train(cfg, log=lines.append)
    assert [s["kind"] for s in record["stages"]] == ["alignment", "qa"]
    assert "caption_token_accuracy" in record["stages"][0]["validation"]
    assert set(record["test"]["accuracy"]) <= set(shapes.QUESTION_TYPES) and record["test"]["items"] > 0
    json.dumps(record)  # the job's last line
    assert any("clips/s" in line for line in lines)

    model, _ = flashvlm.load(str(tmp_path / "ckpt"))  # the from_pretrained path a hub id takes
    assert type(model).__name__ == "LlavaForConditionalGeneration" and model.dtype == torch.float16  # as saved
    assert flashvlm.load(str(tmp_path / "ckpt"), dtype="float32")[0].dtype == torch.float32

    # "flashvlm-tiny/shapes" is the package's checkpoint directory, and a clear error while it has none
    monkeypatch.setattr(flashvlm.models, "checkpoint_dir", lambda: tmp_path / "ckpt")
    assert flashvlm.load("flashvlm-tiny/shapes")[0].config.text_config.hidden_size == 128
    monkeypatch.setattr(flashvlm.models, "checkpoint_dir", lambda: tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="flashvlm-tiny/shapes: no trained checkpoint at .*none.*train_shapes"):
        flashvlm.load("flashvlm-tiny/shapes")
