"""Training the small shapes LLaVA (shapes/model.py) the way LLaVA is trained, on generated clips.

    stage "text":       the language model alone on the task's text (captions, and questions with their answers),
                        as a language model is pretrained before LLaVA uses it
    stage "vision":     the CLIP tower alone: target "crops", a classifier of which objects a crop of a frame
                        holds (image-level labels; the crop's patches keep their positions in the 24 x 24
                        grid); target "patches", which object covers each patch of a whole frame, read from
                        the layer the projector reads (a segmentation-style label per patch), and with
                        `position` each patch's row and column too
    stage "alignment":  a caption of every clip (which objects, colours, motions), one turn a clip
    stage "qa":         the task's questions about every clip, each an independent turn over one copy of
                        the clip's image tokens (`shapes.model.conversation`, masked by `collate`)

LLaVA starts from a pretrained CLIP tower; none exists here, so the "vision" stage makes one. The recipe
(configs/train_shapes.yaml) uses target "patches", which trains the very features the language model reads
(docs/shapes.md); "crops" (8 x 8 patches by default) sees about ten times more crops than whole
frames per second of compute but trains [CLS], and its patch features stayed poor. The stage's classifier
head is dropped after it, as LLaVA drops CLIP's projection.
The later stages train every weight, or leave the tower as it is with `freeze_vision` (LLaVA-1.5 keeps CLIP
frozen throughout) and the language model with `freeze_language` (LLaVA-1.5's alignment stage trains the
projector alone, so that it learns to place patches near the words that describe them). Every clip is new: clip i of a stage is
`shapes.sample_clip(clip_seed("train", offset + i))`, rendered, encoded to H.264 and decoded again the way
the pipeline decodes it, then preprocessed by the adapter's own `pixel_values`. No data or loss refers to
token selection: the model is trained at full budget only, so that selection is judged on a model that was
not shaped for it.

Deterministic for a seed (model init, clip order, question order), up to float summation order.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shapes import clips as shapes
from shapes.model import CAPTION_PROMPT, IGNORE_INDEX, conversation

OBJECT_CLASSES = tuple((shape, colour) for shape in shapes.SHAPES for colour in shapes.COLOURS)  # the vision stage's 32 labels


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageConfig(_Strict):
    kind: Literal["text", "vision", "alignment", "qa"] = Field(
        description="text: the language model alone on the task's text; vision: the tower alone (see target); "
        "alignment: captions, one turn a clip; qa: the task's questions"
    )
    target: Literal["crops", "patches"] = Field(
        default="crops",
        description="vision: crops = which objects a crop holds, from [CLS]; patches = which object covers each patch, "
        "from the layer the projector reads (a segmentation-style label per patch)",
    )
    position: bool = Field(
        default=False,
        description="vision, target patches: also predict each patch's row and column from the same features, so that "
        "they keep where the patch is, which motion needs (it slowed the language model's learning, so the recipe leaves it off)",
    )
    freeze_vision: bool = Field(default=False, description="alignment / qa: the vision tower stays as it is (LLaVA-1.5 keeps CLIP frozen)")
    freeze_language: bool = Field(
        default=False, description="alignment / qa: the language model (embeddings and head included) stays as it is: only the projector "
        "learns, as in LLaVA-1.5's alignment stage"
    )
    steps: int = Field(ge=0, description="optimizer steps")
    batch: int = Field(default=1, ge=1, description="clips a step (one clip length a step), padded to the longest conversation")
    crop: int = Field(default=8, ge=1, le=shapes.GRID, description="vision: a crop's side in patches (8: 112 px, room for the largest object)")
    crops: int = Field(default=4, ge=1, description="vision: crops a frame, each placed around an object drawn at random")
    lr: float = Field(gt=0, description="peak learning rate (linear warm-up, cosine decay to 10%)")
    warmup: int = Field(default=100, ge=0, description="warm-up steps")
    frames: list[int] = Field(
        default=[4], min_length=1, description="clip lengths, one drawn per step: one-frame clips are 4x cheaper than four"
    )

    @model_validator(mode="after")
    def _freezing_needs_a_multimodal_stage(self) -> "StageConfig":
        if (self.freeze_vision or self.freeze_language) and self.kind not in ("alignment", "qa"):
            raise ValueError(f"freeze_vision / freeze_language apply to alignment and qa stages, not {self.kind}")
        return self

    @model_validator(mode="after")
    def _position_needs_patches(self) -> "StageConfig":
        if self.position and (self.kind, self.target) != ("vision", "patches"):
            raise ValueError(f"position is an output of the vision stage's patch head: it needs kind vision and target patches, got {self.kind} / {self.target}")
        return self

    @field_validator("frames")
    @classmethod
    def _frames_in_range(cls, value: list[int]) -> list[int]:
        if any(not 1 <= t <= 8 for t in value):
            raise ValueError(f"every clip length must be 1..8, got {value}")
        return value


class Resume(_Strict):
    checkpoint: str = Field(description="a checkpoint this recipe saved at the end of stage `after_stage` (save_pretrained)")
    after_stage: int = Field(ge=1, description="stages it completed: their training is skipped, their clips stay used")


class TrainConfig(_Strict):
    seed: int = 0
    frames: int = Field(default=4, ge=1, le=8, description="frames of the validation and test clips (the evaluation's and the demo's)")
    stages: list[StageConfig] = Field(
        default=[
            StageConfig(kind="alignment", steps=400, lr=1e-3, frames=[1]),
            StageConfig(kind="qa", steps=3600, lr=1e-3, frames=[1]),
            StageConfig(kind="qa", steps=900, lr=5e-4, frames=[2, 4]),
        ],
        min_length=1,
        description="run in order; alignment before qa, as LLaVA trains",
    )
    question_draws: int = Field(default=3, ge=1, description="qa turns a clip: the union of this many draws of its questions")
    weight_decay: float = Field(default=0.01, ge=0)
    clip_grad: float = Field(default=1.0, gt=0)
    validation_clips: int = Field(default=12, ge=0, description="validation clips scored after each stage")
    test_clips: int = Field(default=60, ge=0, description="test clips scored at the end, at full budget")
    log_every: int = Field(default=25, ge=1)
    validate_every: int = Field(default=0, ge=0, description="also validate every this many steps (0: at each stage's end only)")
    threads: Optional[int] = Field(default=2, ge=1, description="torch threads; None: torch's default")
    output: str = Field(default="shapes/checkpoint", description="checkpoint directory (save_pretrained)")
    save_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    autocast: Literal["none", "bfloat16"] = Field(
        default="none", description="bfloat16: compute under torch.autocast (weights and optimizer stay float32); ~1.4x faster on CPUs with AVX512-BF16"
    )
    resume: Optional[Resume] = Field(default=None, description="continue a stopped run from the checkpoint of a completed stage")

    @model_validator(mode="after")
    def _resume_within_stages(self) -> "TrainConfig":
        if self.resume is not None and self.resume.after_stage >= len(self.stages):
            raise ValueError(f"resume.after_stage must leave a stage to train: {self.resume.after_stage} of {len(self.stages)} stages")
        return self


def decoded_clip(spec: Any) -> Any:
    """(T, 336, 336, 3) uint8 frames of a generated clip as the pipeline sees them: H.264 encoded, then decoded."""
    from flashvlm.decode import Sampling, decode_bytes

    frames, _ = decode_bytes(shapes.encode_mp4(shapes.render(spec)), Sampling(frames=spec.frames, size=shapes.SIZE))
    return frames


def clips_pixel_values(adapter: Any, specs: list[Any]) -> torch.Tensor:
    """(B*T, 3, 336, 336) every frame of clips `specs`, decoded and preprocessed as the pipeline does."""
    return torch.cat([adapter.pixel_values(decoded_clip(spec)) for spec in specs])


def collate(
    examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S) input_ids, labels, (B, 1, S, S) additive attention mask and (B, S) position_ids of
    `shapes.model.conversation` examples, right-padded to the longest.

    Position i attends to position j <= i when j is in the shared prefix (turn 0) or in i's own turn, and
    a turn's positions continue from the prefix's end: each turn is computed exactly as its prompt alone.
    """
    length = max(ids.shape[1] for ids, _, _ in examples)
    ids = torch.full((len(examples), length), pad_id)
    labels = torch.full((len(examples), length), IGNORE_INDEX)
    turn = torch.full((len(examples), length), -1)  # -1: padding
    for row, (x, y, k) in enumerate(examples):
        ids[row, : x.shape[1]], labels[row, : x.shape[1]], turn[row, : x.shape[1]] = x[0], y[0], k[0]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (S, S)
    same = (turn[:, :, None] == turn[:, None, :]) | (turn[:, None, :] == 0)  # (B, S, S): own turn or prefix
    allowed = causal & same & (turn[:, None, :] >= 0) | torch.eye(length, dtype=torch.bool)  # padding sees itself
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]  # (B, 1, S, S)
    prefix = (turn == 0).sum(1, keepdim=True)  # (B, 1)
    index = torch.arange(length).expand_as(turn)  # (B, S)
    first = torch.ones_like(turn, dtype=torch.bool)
    first[:, 1:] = turn[:, 1:] != turn[:, :-1]  # turns are contiguous: a turn starts where `turn` changes
    start = torch.where(first, index, 0).cummax(dim=1).values  # (B, S) first position of each position's turn
    position_ids = torch.where(turn > 0, prefix + index - start, index)
    return ids, labels, mask, position_ids


def crops(spec: Any, pixel_values: torch.Tensor, rng: random.Random, side: int, count: int) -> tuple[torch.Tensor, ...]:
    """`count` crops of every frame of clip `spec`, each `side` x `side` patches of the grid, placed at a
    random offset around an object drawn at random, so that it lies wholly inside (anywhere on the grid
    when it cannot).

    pixel_values: (T, 3, 336, 336), the frames as the adapter preprocesses them; the crops are cut from
    them, so a crop's patches are exactly the frame's. Returns (T*count, 3, side*14, side*14) pixels,
    (T*count, side*side) their grid indices (row * 24 + col), and (T*count, 32) targets and weights over
    OBJECT_CLASSES: target 1 for an object wholly inside the crop; weight 0 for one partly inside (a cut
    shape may look like another); 0 with weight 1 otherwise.
    """
    P, width, last = shapes.PATCH, side * shapes.PATCH, shapes.GRID - side
    pixels, patches, targets, weights = [], [], [], []
    for t in range(spec.frames):
        for _ in range(count):
            x, y = (anchor := spec.objects[rng.randrange(len(spec.objects))]).position(t)
            rows = (max(0, -(-(y + anchor.size) // P) - side), min(last, y // P))  # crop rows that hold it whole
            cols = (max(0, -(-(x + anchor.size) // P) - side), min(last, x // P))
            row = rng.randint(*rows) if rows[0] <= rows[1] else rng.randint(0, last)
            col = rng.randint(*cols) if cols[0] <= cols[1] else rng.randint(0, last)
            y0, x0 = row * P, col * P
            target, weight = torch.zeros(len(OBJECT_CLASSES)), torch.ones(len(OBJECT_CLASSES))
            for obj in spec.objects:
                x, y = obj.position(t)
                mask = shapes.shape_mask(obj.shape, obj.size)
                inside = mask[max(0, y0 - y) : max(0, y0 + width - y), max(0, x0 - x) : max(0, x0 + width - x)].sum()
                k = OBJECT_CLASSES.index((obj.shape, obj.colour))
                if inside == mask.sum():
                    target[k] = 1.0
                elif inside > 0:
                    weight[k] = 0.0
            pixels.append(pixel_values[t, :, y0 : y0 + width, x0 : x0 + width])
            patches.append(torch.tensor([(row + i) * shapes.GRID + col + j for i in range(side) for j in range(side)]))
            targets.append(target)
            weights.append(weight)
    return torch.stack(pixels), torch.stack(patches), torch.stack(targets), torch.stack(weights)


BACKGROUND = len(OBJECT_CLASSES)  # the patch target's class for a patch no object covers
PATCH_CLASSES = BACKGROUND + 1  # a patch head's first outputs; with `position`, then 24 for its row and 24 for its column
BACKGROUND_WEIGHT = 0.2  # about 9 patches in 10 are background: its loss weight, so objects are not drowned out
PATCH_ROW = torch.arange(shapes.GRID * shapes.GRID) // shapes.GRID  # (576,) each patch's row: the position head's target
PATCH_COL = torch.arange(shapes.GRID * shapes.GRID) % shapes.GRID  # (576,) and its column


def patch_labels(spec: Any) -> torch.Tensor:
    """(T, 576) the OBJECT_CLASSES index of the object covering each patch (`shapes.object_patches`, the
    same cover rule as the labels), BACKGROUND elsewhere; where two touching objects share a patch, the later."""
    labels = torch.full((spec.frames, shapes.GRID * shapes.GRID), BACKGROUND)
    for k, obj in enumerate(spec.objects):
        for t, covered in enumerate(shapes.object_patches(spec, k)):
            labels[t, covered] = OBJECT_CLASSES.index((obj.shape, obj.colour))
    return labels


def patch_logits(tower: Any, head: Any, layer: int, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 576, 33) class scores of every patch (then 48 row and column scores with a `position` head),
    from the tower's hidden state at `layer` ([CLS] dropped): the features the projector reads."""
    return head(tower(pixel_values, output_hidden_states=True).hidden_states[layer][:, 1:])


def crop_features(tower: Any, pixel_values: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """(B, D) pooled output of the CLIP `tower` (CLIPVisionModel.forward) on crops, each patch at its
    place in the full grid: (B, 3, h, w) pixel values, (B, h*w/196) grid indices. On a whole frame
    (every index, in order) it is exactly `tower(pixel_values).pooler_output`."""
    embeddings = tower.embeddings
    x = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, P, D)
    table = embeddings.position_embedding.weight  # (1 + 576, D): [CLS] first
    cls = (embeddings.class_embedding + table[0]).expand(len(x), 1, -1)  # (B, 1, D)
    hidden = tower.pre_layrnorm(torch.cat([cls, x + table[1 + patches]], dim=1))  # (B, 1 + P, D)
    hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
    return tower.post_layernorm(hidden[:, 0])


def crop_accuracy(tower: Any, head: Any, adapter: Any, specs: list[Any], stage: "StageConfig") -> dict[str, Any]:
    """On crops holding exactly one object whole and no other part of one: the share whose highest-scoring
    class has that object's shape, and its colour (the vision stage's validation score)."""
    rng = random.Random("validation")
    right_shape = right_colour = total = 0
    with torch.no_grad():
        for spec in specs:
            pixels, patches, targets, weights = crops(spec, adapter.pixel_values(decoded_clip(spec)), rng, stage.crop, stage.crops)
            alone = (targets.sum(1) == 1) & (weights.sum(1) == len(OBJECT_CLASSES))  # (B,)
            if not alone.any():
                continue
            predicted = head(crop_features(tower, pixels[alone], patches[alone])).argmax(1)
            truth = targets[alone].argmax(1)
            right_shape += sum(OBJECT_CLASSES[p][0] == OBJECT_CLASSES[t][0] for p, t in zip(predicted.tolist(), truth.tolist()))
            right_colour += sum(OBJECT_CLASSES[p][1] == OBJECT_CLASSES[t][1] for p, t in zip(predicted.tolist(), truth.tolist()))
            total += int(alone.sum())
    return {"shape": round(right_shape / max(1, total), 4), "colour": round(right_colour / max(1, total), 4), "crops": total}


def vision_loss(tower: Any, head: Any, layer: int, adapter: Any, specs: list[Any], stage: StageConfig, rng: random.Random) -> torch.Tensor:
    """The vision stage's loss on clips `specs`: which objects each crop holds, from the tower's [CLS]
    (target "crops"), or which object covers each patch, from its hidden state at `layer` ("patches")."""
    if stage.target == "patches":
        pixel_values = clips_pixel_values(adapter, specs)  # (B*T, 3, 336, 336)
        labels = torch.cat([patch_labels(spec) for spec in specs])  # (B*T, 576)
        weight = torch.ones(PATCH_CLASSES)
        weight[BACKGROUND] = BACKGROUND_WEIGHT
        logits = patch_logits(tower, head, layer, pixel_values).float()  # (B*T, 576, 33 [+ 48 with position])
        loss = torch.nn.functional.cross_entropy(logits[..., :PATCH_CLASSES].flatten(0, 1), labels.view(-1), weight=weight)
        if stage.position:
            row, col = logits[..., PATCH_CLASSES:].flatten(0, 1).split(shapes.GRID, dim=-1)  # (B*T*576, 24) each
            rows, cols = PATCH_ROW.repeat(len(logits)), PATCH_COL.repeat(len(logits))  # (B*T*576,) each
            loss = loss + (torch.nn.functional.cross_entropy(row, rows) + torch.nn.functional.cross_entropy(col, cols)) / 2
        return loss
    pixels, patches, targets, weights = (torch.cat(parts) for parts in zip(
        *[crops(spec, adapter.pixel_values(decoded_clip(spec)), rng, stage.crop, stage.crops) for spec in specs]
    ))  # (B*T*crops, 3, h, w), (B*T*crops, side*side), (B*T*crops, 32) twice
    logits = head(crop_features(tower, pixels, patches))  # (B*T*crops, 32)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weights)


def language_loss(model: Any, adapter: Any, specs: list[Any], kind: str, frames: int, rng: random.Random, draws: int) -> torch.Tensor:
    """An alignment or QA stage's loss on clips `specs` of `frames` frames: the answer tokens of their turns."""
    ids, labels, mask, positions = collate(
        [conversation(adapter, frames, turns(kind, spec, rng, draws)) for spec in specs], adapter.tokenizer.pad_token_id
    )  # (B, S), (B, S), (B, 1, S, S), (B, S)
    pixel_values = clips_pixel_values(adapter, specs)  # (B*T, 3, 336, 336)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixel_values, labels=labels).loss


def text_document(spec: Any, draws: int) -> str:
    """The task's text about clip `spec`, no image: its caption, then its questions each followed by its answer."""
    items = {q.question: q.answer for d in range(draws) for q in shapes.questions(spec, seed=spec.seed * draws + d)}
    return " ".join([shapes.caption(spec), *(f"{q} {a}" for q, a in items.items())])


def text_batch(tokenizer: Any, specs: list[Any], draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S) input_ids, attention mask and labels of the clips' text documents: BOS, text, EOS, right-padded;
    every token but BOS and padding is a target (language modelling)."""
    encoded = [tokenizer(text_document(spec, draws))["input_ids"] + [tokenizer.eos_token_id] for spec in specs]
    length = max(len(ids) for ids in encoded)
    ids = torch.full((len(specs), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(specs), length), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = torch.tensor(tokens), 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # BOS is given, not predicted
    return ids, mask, labels


def text_loss(model: Any, tokenizer: Any, specs: list[Any], draws: int) -> torch.Tensor:
    """The text stage's loss: next-token prediction on the clips' text documents, no image."""
    ids, mask, labels = text_batch(tokenizer, specs, draws)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def text_token_accuracy(model: Any, tokenizer: Any, specs: list[Any], draws: int) -> float:
    """Share of the documents' tokens predicted exactly (teacher forcing): the text stage's validation score."""
    with torch.no_grad():
        ids, mask, labels = text_batch(tokenizer, specs, draws)
        predicted, target = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1), labels[:, 1:]
        scored = target != IGNORE_INDEX
        return int((predicted[scored] == target[scored]).sum()) / max(1, int(scored.sum()))


def patch_accuracy(tower: Any, head: Any, layer: int, adapter: Any, specs: list[Any]) -> dict[str, Any]:
    """On the patches objects cover: the share whose highest-scoring class has that object's shape, and its
    colour (the vision stage's validation score with target "patches"); with a `position` head, the share
    of all patches whose row and column are both predicted right."""
    right_shape = right_colour = total = right_place = places = 0
    with torch.no_grad():
        for spec in specs:
            labels = patch_labels(spec).view(-1)  # (T*576,)
            logits = patch_logits(tower, head, layer, adapter.pixel_values(decoded_clip(spec)))  # (T, 576, 33 [+ 48])
            predicted = logits[..., :PATCH_CLASSES].argmax(-1).view(-1)
            if logits.shape[-1] > PATCH_CLASSES:
                row, col = logits[..., PATCH_CLASSES:].split(shapes.GRID, dim=-1)  # (T, 576, 24) each
                right_place += int(((row.argmax(-1) == PATCH_ROW) & (col.argmax(-1) == PATCH_COL)).sum())
                places += row.shape[0] * row.shape[1]
            on_object = labels != BACKGROUND
            for p, t in zip(predicted[on_object].tolist(), labels[on_object].tolist()):
                right_shape += p != BACKGROUND and OBJECT_CLASSES[p][0] == OBJECT_CLASSES[t][0]
                right_colour += p != BACKGROUND and OBJECT_CLASSES[p][1] == OBJECT_CLASSES[t][1]
            total += int(on_object.sum())
    score = {"shape": round(right_shape / max(1, total), 4), "colour": round(right_colour / max(1, total), 4), "patches": total}
    return {**score, "position": round(right_place / places, 4)} if places else score


def _lr_at(step: int, stage: StageConfig) -> float:
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def turns(kind: str, spec: Any, rng: random.Random, draws: int) -> list[tuple[str, str]]:
    """The (question, answer) turns of a training example about clip `spec`: its caption for "alignment";
    for "qa", the union of `draws` draws of its questions, in an order drawn from `rng`. Each turn is
    computed as if asked alone (`collate`), so one turn's answer never shows in another's input."""
    if kind == "alignment":
        return [(CAPTION_PROMPT, shapes.caption(spec))]
    # Several draws of the clip's questions: more of its facts asked for the cost of one pass over its frames.
    items = list({q.question: (q.question, q.answer) for d in range(draws) for q in shapes.questions(spec, seed=spec.seed * draws + d)}.values())
    rng.shuffle(items)
    return items


def caption_token_accuracy(model: Any, adapter: Any, specs: list[Any], frames: int) -> float:
    """Share of caption tokens predicted exactly (teacher forcing): the alignment stage's validation score."""

    right = total = 0
    with torch.no_grad():
        for spec in specs:
            ids, labels, _ = conversation(adapter, frames, [(CAPTION_PROMPT, shapes.caption(spec))])
            logits = model(input_ids=ids, pixel_values=adapter.pixel_values(decoded_clip(spec))).logits  # (1, S, V)
            predicted, target = logits[0, :-1].argmax(-1), labels[0, 1:]
            scored = target != IGNORE_INDEX
            right += int((predicted[scored] == target[scored]).sum())
            total += int(scored.sum())
    return right / max(1, total)


Scorer = Callable[[str, str], Optional[bool]]  # (answer text, label) -> correct: the pipeline's rule, pipeline.scoring.is_correct


def qa_accuracy(adapter: Any, specs: list[Any], is_correct: Scorer) -> dict[str, Any]:
    """Accuracy per question type of `adapter.answer_video` (the inference path) on the clips' questions."""
    right: dict[str, int] = {t: 0 for t in shapes.QUESTION_TYPES}
    count: dict[str, int] = {t: 0 for t in shapes.QUESTION_TYPES}
    for spec in specs:
        items = shapes.questions(spec)
        answers = adapter.answer_video(decoded_clip(spec), [q.question for q in items], max_new_tokens=4)
        for item, answer in zip(items, answers):
            count[item.question_type] += 1
            right[item.question_type] += bool(is_correct(answer.text, item.answer))
    per_type = {t: round(right[t] / count[t], 4) for t in shapes.QUESTION_TYPES if count[t]}
    overall = sum(right.values()) / max(1, sum(count.values()))
    return {"accuracy": per_type, "overall": round(overall, 4), "items": sum(count.values())}


def save(model: Any, processor: Any, output: Path, dtype: str, log: Callable[[str], None]) -> None:
    """save_pretrained in `dtype` (float16 halves the checkpoint); the model stays float32 in memory."""
    model.to(getattr(torch, dtype)).save_pretrained(output)
    model.float()
    processor.save_pretrained(output)
    log(f"saved {output} ({sum(f.stat().st_size for f in output.iterdir()) / 1e6:.1f} MB)")


def clips_used(stage: StageConfig) -> int:
    """Clips a stage uses up: later stages see new ones. The text stage reads only the clips' text, never
    their frames, so the image stages after it start where they would without it."""
    return 0 if stage.kind == "text" else stage.steps * stage.batch


def train(cfg: TrainConfig, is_correct: Scorer, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train from scratch, save the checkpoint to cfg.output, return the record (test accuracy per type).
    is_correct scores an answer against its label (the job passes the pipeline's rule: this package never imports it)."""
    from flashvlm.models import wrap
    from shapes.model import build_shapes_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    if cfg.resume is None:
        model, processor = build_shapes_model(cfg.seed)
    else:
        import flashvlm

        model, processor = flashvlm.load(cfg.resume.checkpoint, dtype="float32")
        log(f"resumed from {cfg.resume.checkpoint} after stage {cfg.resume.after_stage}")
    adapter = wrap(model, budget=None, processor=processor)  # its video_prompts and pixel_values build the inputs
    params = sum(p.numel() for p in model.parameters())
    log(f"shapes LLaVA: {params / 1e6:.2f} M parameters, {cfg.frames} frames a clip, seed {cfg.seed}")
    validation = [shapes.sample_clip(shapes.clip_seed("validation", i), cfg.frames) for i in range(cfg.validation_clips)]
    record: dict[str, Any] = {"model": "flashvlm-tiny/shapes", "seed": cfg.seed, "parameters": params, "stages": []}

    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast == "bfloat16")

    def validate(stage: StageConfig, name: str, head: Any) -> dict[str, Any]:
        model.eval()
        if stage.kind == "text":
            score = {"text_token_accuracy": round(text_token_accuracy(model, adapter.tokenizer, validation, cfg.question_draws), 4)}
        elif stage.kind == "vision" and stage.target == "patches":
            score = patch_accuracy(tower, head, layer, adapter, validation)
        elif stage.kind == "vision":
            score = crop_accuracy(tower, head, adapter, validation, stage)
        elif stage.kind == "alignment":
            score = {"caption_token_accuracy": round(caption_token_accuracy(model, adapter, validation, cfg.frames), 4)}
        else:
            score = qa_accuracy(adapter, validation, is_correct)
        model.train()
        log(f"[{name}] validation: {json.dumps(score)}")
        return score

    offset = 0  # clips already used: every stage sees new clips
    for number, stage in enumerate(cfg.stages, start=1):
        name = f"{number}:{stage.kind}"
        if cfg.resume is not None and number <= cfg.resume.after_stage:
            offset += clips_used(stage)  # its clips were used: later stages still see new ones
            record["stages"].append({"kind": stage.kind, "frames": stage.frames, "steps": stage.steps, "resumed_from": cfg.resume.checkpoint})
            continue
        rng = random.Random(f"{cfg.seed}-{name}")
        head = None
        if stage.kind == "vision":
            outputs = PATCH_CLASSES + 2 * shapes.GRID * stage.position if stage.target == "patches" else len(OBJECT_CLASSES)
            head = torch.nn.Linear(tower.config.hidden_size, outputs)
            tower.requires_grad_(True)
            trained = [*tower.parameters(), *head.parameters()]
        else:
            # Frozen: no gradient is computed for it. The text stage has no image, so only the language model learns.
            tower.requires_grad_(stage.kind != "text" and not stage.freeze_vision)
            model.model.multi_modal_projector.requires_grad_(stage.kind != "text")
            for part in (model.model.language_model, model.lm_head):
                part.requires_grad_(not stage.freeze_language)
            trained = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=stage.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
        model.train()
        curve: list[tuple[int, float]] = []
        scores: list[tuple[int, dict]] = []
        running, t_stage, t_log = 0.0, time.time(), time.time()
        for step in range(stage.steps):
            frames = stage.frames[rng.randrange(len(stage.frames))]
            specs = [shapes.sample_clip(shapes.clip_seed("train", offset + step * stage.batch + b), frames) for b in range(stage.batch)]
            with autocast:
                if head is not None:
                    loss = vision_loss(tower, head, layer, adapter, specs, stage, rng)
                elif stage.kind == "text":
                    loss = text_loss(model, adapter.tokenizer, specs, cfg.question_draws)
                else:
                    loss = language_loss(model, adapter, specs, stage.kind, frames, rng, cfg.question_draws)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, cfg.clip_grad)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, stage)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            if (step + 1) % cfg.log_every == 0 or step + 1 == stage.steps:
                n = (step % cfg.log_every) + 1
                rate = n * stage.batch / (time.time() - t_log)
                curve.append((step + 1, round(running / n, 4)))
                log(f"[{name}] step {step + 1}/{stage.steps}  loss {running / n:.4f}  lr {_lr_at(step, stage):.2e}  "
                    f"{rate:.2f} clips/s  {(time.time() - t_start) / 60:.1f} min")
                running, t_log = 0.0, time.time()
            if cfg.validate_every and (step + 1) % cfg.validate_every == 0 and step + 1 < stage.steps:
                scores.append((step + 1, validate(stage, name, head)))
                t_log = time.time()
        offset += clips_used(stage)
        scores.append((stage.steps, validate(stage, name, head)))
        save(model, processor, Path(cfg.output), cfg.save_dtype, log)  # each stage's end, so a stopped run keeps its work
        record["stages"].append({"kind": stage.kind, "frames": stage.frames, "steps": stage.steps, "minutes": round((time.time() - t_stage) / 60, 2),
                                  "loss_curve": curve, "validation": scores[-1][1], "validation_curve": scores})

    record["train_minutes"] = round((time.time() - t_start) / 60, 2)
    model.eval()

    test = [shapes.sample_clip(shapes.clip_seed("test", i), cfg.frames) for i in range(cfg.test_clips)]
    record["test"] = qa_accuracy(adapter, test, is_correct)
    record["minutes"] = round((time.time() - t_start) / 60, 2)
    return record
