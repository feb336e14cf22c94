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


def test_each_turn_is_the_inference_prompt_and_only_answers_are_labelled(model_and_adapter):
    _, adapter = model_and_adapter
    turns = [("What colour is the circle?", "red"), ("How many stars are there?", "2")]
    ids, labels, turn = conversation(adapter, 2, turns)  # (1, S) each
    assert (ids == adapter.model.config.image_token_id).sum() == 2 * 576, "one copy of the frames for all turns"
    for k, (question, _) in enumerate(turns, start=1):
        alone = ids[0][(turn[0] == 0) | (turn[0] == k)]
        prompt = adapter.video_prompts([question], 2)[0][0]
        assert torch.equal(alone[: len(prompt)], prompt), "turn k with the prefix is exactly what answer_video builds"
    supervised = labels[0] != IGNORE_INDEX
    assert torch.equal(labels[0][supervised], ids[0][supervised])
    assert adapter.tokenizer.decode(ids[0][supervised]).replace(" ", "") == "red</s>2</s>"
    assert turn[0][supervised].tolist() == sorted(turn[0][supervised].tolist()) and set(turn[0].tolist()) == {0, 1, 2}


def test_a_padded_batch_computes_every_turn_as_if_asked_alone(model_and_adapter):
    model, adapter = model_and_adapter
    specs = [shapes.sample_clip(shapes.clip_seed("train", i), 1) for i in range(2)]
    examples = [
        conversation(adapter, 1, [(CAPTION_PROMPT, shapes.caption(specs[0]))]),
        conversation(adapter, 1, [(q.question, q.answer) for q in shapes.questions(specs[1])]),
    ]
    assert examples[1][2].max() >= 3, "a clip with several questions"
    pixels = [adapter.pixel_values(shapes.render(spec)) for spec in specs]  # (1, 3, 336, 336) each
    ids, labels, mask, positions = collate(examples, adapter.tokenizer.pad_token_id)
    assert ids.shape[1] == max(x.shape[1] for x, _, _ in examples) and mask.shape == (2, 1, ids.shape[1], ids.shape[1])
    short = min(range(2), key=lambda b: examples[b][0].shape[1])
    assert (labels[short][examples[short][0].shape[1]:] == IGNORE_INDEX).all(), "padding is not supervised"

    with torch.no_grad():
        packed = model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=torch.cat(pixels))
        for b, ((x, y, turn), pv) in enumerate(zip(examples, pixels)):
            for k in range(1, int(turn.max()) + 1):
                keep = (turn[0] == 0) | (turn[0] == k)
                alone = model(input_ids=x[:, keep], pixel_values=pv).logits[0]  # (S_k, V): the question asked alone
                assert torch.allclose(packed.logits[b, : x.shape[1]][keep], alone, atol=1e-4), (b, k)


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
