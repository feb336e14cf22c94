"""Training the shapes LLaVA (shapes/training.py): the examples it builds, batching, and short runs."""

import json
import random

import pytest
import torch

from pipeline.scoring import is_correct
from shapes import clips as shapes
from shapes.model import CAPTION_PROMPT, IGNORE_INDEX, build_shapes_model, conversation
from shapes.training import (
    BACKGROUND, OBJECT_CLASSES, StageConfig, TrainConfig, collate, crop_features, crops, decoded_clip, patch_labels, train,
)


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


def test_a_crop_is_the_frames_patches_at_their_grid_places(model_and_adapter):
    model, adapter = model_and_adapter
    tower = model.model.vision_tower
    spec = shapes.sample_clip(shapes.clip_seed("train", 3), 2)
    frames = adapter.pixel_values(decoded_clip(spec))  # (2, 3, 336, 336)
    with torch.no_grad():  # the whole frame as one crop is the tower's own forward
        whole = crop_features(tower, frames, torch.arange(576).expand(2, 576))
        assert torch.equal(whole, tower(pixel_values=frames).pooler_output)
    pixels, patches, _, _ = crops(spec, frames, random.Random(0), side=8, count=3)
    assert pixels.shape == (6, 3, 112, 112) and patches.shape == (6, 64)
    grid = frames.unfold(2, 14, 14).unfold(3, 14, 14).permute(0, 2, 3, 1, 4, 5).reshape(2, 576, 3, 14, 14)  # (T, N, 3, 14, 14)
    cut = pixels.unfold(2, 14, 14).unfold(3, 14, 14).permute(0, 2, 3, 1, 4, 5).reshape(6, 64, 3, 14, 14)
    for i in range(6):  # crops are frame-major: crop i is of frame i // 3
        assert torch.equal(cut[i], grid[i // 3, patches[i]])


def test_crop_labels_count_each_objects_pixels_in_the_crop():
    spec = shapes.sample_clip(shapes.clip_seed("train", 11), 2)
    frames = torch.zeros(2, 3, 336, 336)  # only the geometry matters here
    _, patches, targets, weights = crops(spec, frames, random.Random(1), side=6, count=20)
    for i in range(len(patches)):
        t = i // 20
        rows, cols = patches[i] // 24, patches[i] % 24
        window = torch.zeros(336, 336, dtype=torch.bool)
        window[rows.min() * 14 : (rows.max() + 1) * 14, cols.min() * 14 : (cols.max() + 1) * 14] = True
        for obj in spec.objects:
            painted = torch.zeros(336, 336, dtype=torch.bool)  # the object's pixels in frame t, painted whole
            x, y = obj.position(t)
            painted[y : y + obj.size, x : x + obj.size] = torch.from_numpy(shapes.shape_mask(obj.shape, obj.size).copy())
            share = (painted & window).sum() / painted.sum()
            k = OBJECT_CLASSES.index((obj.shape, obj.colour))
            assert (targets[i, k], weights[i, k]) == ((1.0, 1.0) if share == 1 else (0.0, 0.0) if share > 0 else (0.0, 1.0))
        absent = [k for k, c in enumerate(OBJECT_CLASSES) if c not in {(o.shape, o.colour) for o in spec.objects}]
        assert targets[i, absent].sum() == 0 and weights[i, absent].min() == 1
        assert targets[i].sum() >= 1, "every crop is placed around an object it holds whole (6 patches hold 56 px)"
    assert (weights == 0).any(), "the draw covers partial objects too"


@pytest.mark.slow
def test_the_vision_stage_trains_the_tower_alone(tmp_path):
    import flashvlm

    cfg = TrainConfig(frames=1, stages=[StageConfig(kind="vision", steps=2, batch=2, lr=1e-3, warmup=1, frames=[1], crop=6, crops=2)],
                      validation_clips=2, test_clips=0, output=str(tmp_path / "ckpt"), save_dtype="float32")
    record = train(cfg, is_correct, log=lambda line: None)
    assert set(record["stages"][0]["validation"]) == {"shape", "colour", "crops"}
    trained, _ = flashvlm.load(str(tmp_path / "ckpt"))
    start, _ = build_shapes_model(seed=0)
    before, after = start.state_dict(), trained.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".vision_tower." in name for name in changed), sorted(changed)[:5]

    # A stopped run resumes from the checkpoint of its last completed stage: that stage is not trained again.
    resumed = TrainConfig.model_validate({
        **cfg.model_dump(), "stages": [*cfg.model_dump()["stages"], {"kind": "alignment", "steps": 0, "lr": 1e-3, "frames": [1]}],
        "validation_clips": 0, "output": str(tmp_path / "resumed"), "resume": {"checkpoint": str(tmp_path / "ckpt"), "after_stage": 1},
    })
    record = train(resumed, is_correct, log=lambda line: None)
    assert record["stages"][0] == {"kind": "vision", "frames": [1], "steps": 2, "resumed_from": str(tmp_path / "ckpt")}
    again = flashvlm.load(str(tmp_path / "resumed"))[0].state_dict()
    assert all(torch.equal(after[name], again[name]) for name in after)
    with pytest.raises(ValueError, match="resume.after_stage must leave a stage to train: 1 of 1"):
        TrainConfig.model_validate({**cfg.model_dump(), "resume": {"checkpoint": "x", "after_stage": 1}})


@pytest.mark.slow
def test_llava_order_text_then_alignment_of_the_projector_alone(tmp_path):
    # LLaVA's order: the language model pretrained on text alone, then alignment with the tower and the language
    # model frozen (only the projector learns), then QA training the projector and the language model.
    import flashvlm

    start = build_shapes_model(seed=0)[0].state_dict()

    def trained(stages: list[StageConfig], name: str) -> tuple[dict, dict]:
        cfg = TrainConfig(frames=1, validation_clips=1, test_clips=0, output=str(tmp_path / name), save_dtype="float32", stages=stages)
        record = train(cfg, is_correct, log=lambda line: None)
        return record, flashvlm.load(str(tmp_path / name))[0].state_dict()

    def moved(a: dict, b: dict) -> set[str]:
        return {n for n in a if not torch.equal(a[n], b[n])}

    text = StageConfig(kind="text", steps=2, batch=4, lr=1e-3, warmup=1)
    record, after_text = trained([text], "text")
    assert 0 <= record["stages"][0]["validation"]["text_token_accuracy"] <= 1
    changed = moved(start, after_text)
    assert changed and all(".language_model." in n or n.startswith("lm_head.") for n in changed), sorted(changed)[:5]

    align = StageConfig(kind="alignment", freeze_vision=True, freeze_language=True, steps=2, batch=2, lr=1e-3, warmup=1, frames=[1])
    qa = StageConfig(kind="qa", freeze_vision=True, steps=1, batch=2, lr=1e-3, warmup=1, frames=[1])
    _, after_align = trained([text, align], "aligned")
    projector = {n for n in start if ".multi_modal_projector." in n}
    assert moved(after_text, after_align) == projector, sorted(moved(after_text, after_align))[:5]
    _, after_qa = trained([text, align, qa], "qa")
    assert any(".language_model." in n for n in moved(after_align, after_qa)) and not any(".vision_tower." in n for n in moved(start, after_qa))
    with pytest.raises(ValueError, match="freeze_vision / freeze_language apply to alignment and qa stages, not text"):
        StageConfig(kind="text", freeze_language=True, steps=1, lr=1e-3)


def test_position_is_an_output_of_the_patch_head_only():
    assert StageConfig(kind="vision", target="patches", position=True, steps=1, lr=1e-3).position
    for kind, target in (("vision", "crops"), ("qa", "patches"), ("alignment", "crops")):
        with pytest.raises(ValueError, match=f"position .* needs kind vision and target patches, got {kind} / {target}"):
            StageConfig(kind=kind, target=target, position=True, steps=1, lr=1e-3)


def test_patch_labels_are_the_objects_listed_patches():
    spec = shapes.sample_clip(shapes.clip_seed("train", 5), 3)
    labels = patch_labels(spec)  # (3, 576)
    listed = set()
    for k, obj in enumerate(spec.objects):
        for t, covered in enumerate(shapes.object_patches(spec, k)):
            listed |= {(t, n) for n in covered}
            mine = labels[t, covered]
            assert ((mine == OBJECT_CLASSES.index((obj.shape, obj.colour))) | (mine != BACKGROUND)).all()
    background = {(t, n) for t in range(3) for n in range(576)} - listed
    assert all(labels[t, n] == BACKGROUND for t, n in background)
    assert len(listed) and all(labels[t, n] != BACKGROUND for t, n in listed)


@pytest.mark.slow
def test_patch_target_then_a_frozen_tower_under_bfloat16(tmp_path):
    # The vision stage on patch labels trains the tower alone; a qa stage with freeze_vision then leaves it
    # exactly as it was and trains the rest, under bfloat16 autocast.
    import flashvlm

    cfg = TrainConfig(
        frames=1, autocast="bfloat16", validation_clips=1, test_clips=0, output=str(tmp_path / "ckpt"), save_dtype="float32",
        stages=[StageConfig(kind="vision", target="patches", position=True, steps=2, batch=2, lr=1e-3, warmup=1, frames=[1]),
                StageConfig(kind="qa", freeze_vision=True, steps=2, batch=2, lr=1e-3, warmup=1, frames=[1])],
    )
    record = train(cfg, is_correct, log=lambda line: None)
    assert set(record["stages"][0]["validation"]) == {"shape", "colour", "patches", "position"}
    assert 0 <= record["stages"][0]["validation"]["position"] <= 1
    trained = flashvlm.load(str(tmp_path / "ckpt"))[0].state_dict()
    start = build_shapes_model(seed=0)[0].state_dict()
    changed = {name for name in start if not torch.equal(start[name], trained[name])}
    assert any(".vision_tower." in name for name in changed) and any(".language_model." in name for name in changed)
    cfg.stages = cfg.stages[:1]
    cfg.output = str(tmp_path / "tower")
    train(cfg, is_correct, log=lambda line: None)
    tower_only = flashvlm.load(str(tmp_path / "tower"))[0].state_dict()
    towers = [name for name in start if ".vision_tower." in name]
    assert all(torch.equal(tower_only[name], trained[name]) for name in towers), "the frozen tower moved"


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
    record = train(cfg, is_correct, log=lines.append)
    assert [s["kind"] for s in record["stages"]] == ["alignment", "qa"]
    assert "caption_token_accuracy" in record["stages"][0]["validation"]
    assert set(record["test"]["accuracy"]) <= set(shapes.QUESTION_TYPES) and record["test"]["items"] > 0
    json.dumps(record)  # the job's last line
    assert any("clips/s" in line for line in lines)

    model, _ = flashvlm.load(str(tmp_path / "ckpt"))  # the from_pretrained path a hub id takes
    assert type(model).__name__ == "LlavaForConditionalGeneration" and model.dtype == torch.float16  # as saved
    assert flashvlm.load(str(tmp_path / "ckpt"), dtype="float32")[0].dtype == torch.float32

    # "flashvlm-tiny/shapes" is the shapes package's checkpoint directory (an entry point the library reads),
    # and a clear error while it has none
    from shapes import model as shapes_model

    monkeypatch.setattr(shapes_model, "checkpoint_dir", lambda: tmp_path / "ckpt")
    assert flashvlm.load("flashvlm-tiny/shapes")[0].config.text_config.hidden_size == 128
    monkeypatch.setattr(shapes_model, "checkpoint_dir", lambda: tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="flashvlm-tiny/shapes: no trained checkpoint at .*none.*train_shapes"):
        flashvlm.load("flashvlm-tiny/shapes")


def test_the_committed_checkpoint_answers_pinned_test_clips():
    # Six test-split questions, one of each type and one more colour, that the committed model answers right at
    # full budget, picked among the ones it does (its test accuracy is in docs/shapes.md): a regression check of
    # the checkpoint and the inference path.
    import flashvlm
    from flashvlm.models import wrap

    model, processor = flashvlm.load("flashvlm-tiny/shapes", dtype="float32")  # offline, from the package
    adapter = wrap(model, budget=None, processor=processor)
    pinned = {0: {"What shape is the red object?": "star", "Is there a red star?": "yes", "Which way is the red star moving?": "down"},
              2: {"What colour is the star?": "green", "How many circles are there?": "1"},
              5: {"What colour is the square?": "orange"}}
    for clip, asked in pinned.items():
        spec = shapes.sample_clip(shapes.clip_seed("test", clip), 4)
        labels = {q.question: q.answer for q in shapes.questions(spec)}
        assert {q: labels[q] for q in asked} == asked, "the generator's labels for these clips"
        answers = adapter.answer_video(decoded_clip(spec), list(asked), max_new_tokens=4)
        assert [a.text.strip() for a in answers] == list(asked.values()), clip


def test_curves_draw_one_panel_a_trained_stage(tmp_path):
    from PIL import Image

    from shapes.curves import plot_record, validation_value

    record = {"model": "m", "seed": 0, "minutes": 1.0, "stages": [
        {"kind": "text", "minutes": 0.5, "loss_curve": [[25, 2.0], [50, 1.0]], "validation": {"text_token_accuracy": 0.7}},
        {"kind": "vision", "resumed_from": "/x"},  # not trained in this run: no panel
        {"kind": "qa", "minutes": 0.5, "loss_curve": [[25, 1.0], [50, 0.5]],
         "validation_curve": [[25, {"accuracy": {"colour": 1.0}, "overall": 0.4, "items": 3}], [50, {"overall": 0.6}]]},
    ]}
    out = plot_record(record, tmp_path / "curves.png")
    assert Image.open(out).size == (2 * 320, 300)
    assert validation_value({"caption_token_accuracy": 0.48}) == 0.48 and validation_value({"overall": 0.6, "items": 3}) == 0.6
