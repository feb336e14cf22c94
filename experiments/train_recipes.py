"""Which training recipe for the shapes LLaVA learns within the clips an hour of 2 CPU cores affords.

    python experiments/train_recipes.py NAME SECONDS OUTDIR      # one recipe; run several side by side on a GPU

Trains recipe NAME (RECIPES below) on question answering over fresh one-frame (or 2-4-frame) clips for
SECONDS, rendered without the H.264 round trip (`shapes.clips.render`: cheaper, and the data is the same up to
compression), with the training job's own examples (`shapes.training.turns`, `collate`). Every 2,000
clips (EVAL_EVERY) it scores 48 validation clips (EVAL_CLIPS), every question asked alone, an answer right
when its tokens are the greedy ones (teacher forcing: no generate loop). Writes OUTDIR/NAME.log, one JSON
line per evaluation: {"clips", "step", "loss", "s", "val": {question type: accuracy}}, and prints each
with "recipe" added, so the last line is the final evaluation. TOWER=<checkpoint directory> starts the
model from that checkpoint's CLIP tower (e.g. `jobs/train_shapes.py` with only the vision stage, then
EVAL_EVERY=800 EVAL_CLIPS=32 TOWER=... bs16_lr6e4 1200). docs/shapes.md describes the recipe these chose.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shapes import clips as shapes  # noqa: E402
from shapes import model as shapes_model  # noqa: E402
from shapes.training import collate, turns  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RECIPES = {
    "bs1": dict(batch=1, lr=1e-3, frames=[1]),
    "bs16": dict(batch=16, lr=1e-3, frames=[1]),
    "bs16_lr3e3": dict(batch=16, lr=3e-3, frames=[1]),
    "bs16_lr3e4": dict(batch=16, lr=3e-4, frames=[1]),
    "bs16_easy": dict(batch=16, lr=1e-3, frames=[1], easy=4000),  # first 4,000 clips: solid background, 1-3 objects
    "bs16_big": dict(batch=16, lr=1e-3, frames=[1], big=True),  # CLIP 192 wide, Llama 256: 6.5 M parameters
    "bs16_align": dict(batch=16, lr=1e-3, frames=[1], align=3000),  # first 3,000 clips: captions
    "bs8_T24": dict(batch=8, lr=1e-3, frames=[2, 4]),
    # These train on independent turns (no text shortcut) with the CLIP positions started as 2-D sine-cosine,
    # and ask which start, if any, breaks the answer-prior plateau.
    "bs16_lr6e4": dict(batch=16, lr=6e-4, frames=[1]),
    "bs16_lr6e4_randpos": dict(batch=16, lr=6e-4, frames=[1], positions="random"),  # N(0, 0.02) positions
    "bs16_lr6e4_mimetic": dict(batch=16, lr=6e-4, frames=[1], mimetic=True),
    "bs16_lr3e4_mimetic": dict(batch=16, lr=3e-4, frames=[1], mimetic=True),
    # A diagnostic, not a way to train the model: the tower replaced by perfect patch features (OracleTower),
    # so the curve is the Llama side's alone: how many clips it needs to find and read the right patches.
    "oracle_lr6e4": dict(batch=16, lr=6e-4, frames=[1], oracle=True),
}
BIG_VISION = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=6, projection_dim=192)
BIG_TEXT = dict(shapes_model.TEXT, hidden_size=256, intermediate_size=1024)
EVAL_EVERY = int(os.environ.get("EVAL_EVERY", 2000))
EVAL_CLIPS = int(os.environ.get("EVAL_CLIPS", 48))
TOWER = os.environ.get("TOWER")  # a checkpoint directory (jobs/train_shapes.py's output) whose CLIP tower starts the model


def build(recipe: dict):
    """(model, adapter): the shapes LLaVA, seed 0, wider for the "big" recipe, started as the recipe says."""
    from flashvlm.models import wrap

    if recipe.get("big"):
        shapes_model.VISION, shapes_model.TEXT = BIG_VISION, BIG_TEXT
    model, processor = shapes_model.build_shapes_model(0)
    tower = model.model.vision_tower
    if recipe.get("positions") == "random":  # CLIP's own initialisation of the position embeddings
        torch.nn.init.normal_(tower.embeddings.position_embedding.weight, std=0.02)
    if recipe.get("mimetic"):
        mimetic_attention(tower)
    if TOWER:  # e.g. after a run of only the vision stage: question answering from a pretrained tower
        import flashvlm

        tower.load_state_dict(flashvlm.load(TOWER, dtype="float32")[0].model.vision_tower.state_dict())
    adapter = wrap(model, budget=None, processor=processor)
    if recipe.get("oracle"):  # after wrap, which checks for a CLIP tower; the adapter only builds prompts here
        model.model.vision_tower = OracleTower(tower.config.hidden_size)
    return model, adapter


class OracleTower(torch.nn.Module):
    """Stands in for the CLIP tower: each patch's feature is a learned embedding of what covers it (its
    object's (shape, colour), or background), exact from the generator's labels. Its "pixel values" are
    those labels, (T, 577) ([CLS] first, always 0), from `oracle_pixels`."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = torch.nn.Embedding(1 + len(shapes.SHAPES) * len(shapes.COLOURS), width)

    def forward(self, pixel_values, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features = self.embedding(pixel_values.long())  # (T, 577, width)
        return BaseModelOutputWithPooling(last_hidden_state=features, hidden_states=(features,) * 3)


def oracle_pixels(spec) -> torch.Tensor:
    """(T, 577) labels of the patches of each frame: 0 background ([CLS] too), else 1 + its object's (shape, colour)."""
    colours = list(shapes.COLOURS)
    labels = torch.zeros(spec.frames, 1 + shapes.GRID * shapes.GRID)
    for index, obj in enumerate(spec.objects):
        for t, patches in enumerate(shapes.object_patches(spec, index)):
            labels[t, [1 + p for p in patches]] = 1 + shapes.SHAPES.index(obj.shape) * len(colours) + colours.index(obj.colour)
    return labels


def pixels_of(recipe: dict, adapter, spec) -> torch.Tensor:
    """The model's image input for a clip: (T, 3, 336, 336) pixel values, or the oracle's (T, 577) labels."""
    return oracle_pixels(spec) if recipe.get("oracle") else adapter.pixel_values(shapes.render(spec))


@torch.no_grad()
def mimetic_attention(tower, alpha_qk: float = 0.7, beta_qk: float = 0.7, alpha_vo: float = 0.4, beta_vo: float = 0.4) -> None:
    """Mimetic initialisation of the tower's self-attention (Trockman & Kolter, ICML 2023): each head's
    W_q^T W_k starts near alpha Z + beta I (tokens attend to similar tokens: similar positions, similar
    colours) and W_o W_v near alpha Z - beta I, the structure trained ViTs show; Z random, per the paper's
    ViT-Tiny constants. A data-free start that helps ViTs trained from scratch on small data."""
    g = torch.Generator().manual_seed(0)
    for layer in tower.encoder.layers:
        attention = layer.self_attn
        d = attention.q_proj.weight.shape[1]
        head = d // attention.num_heads
        for h in range(attention.num_heads):
            u, s, vh = torch.linalg.svd(alpha_qk * torch.randn(d, d, generator=g) / d**0.5 + beta_qk * torch.eye(d))
            rows = slice(h * head, (h + 1) * head)  # this head's rank-`head` share of the (d, d) product
            attention.q_proj.weight[rows] = (u[:, :head] * s[:head].sqrt()).T
            attention.k_proj.weight[rows] = (vh[:head].T * s[:head].sqrt()).T
        u, s, vh = torch.linalg.svd(alpha_vo * torch.randn(d, d, generator=g) / d**0.5 - beta_vo * torch.eye(d))
        attention.out_proj.weight.copy_(u * s.sqrt())  # out_proj @ v_proj = u s vh
        attention.v_proj.weight.copy_(s.sqrt()[:, None] * vh)
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
            linear.bias.zero_()


def easy_clip(seed: int, frames: int):
    """A clip on a solid background with 1 to 3 objects: a curriculum's first clips, never a test clip."""
    low, high = shapes.MIN_OBJECTS, shapes.MAX_OBJECTS
    shapes.MIN_OBJECTS, shapes.MAX_OBJECTS = 1, 3
    try:
        while True:
            spec = shapes.sample_clip(seed, frames)
            if spec.background.kind == "solid":
                return spec
            seed += 7919
    finally:
        shapes.MIN_OBJECTS, shapes.MAX_OBJECTS = low, high


class Batches(torch.utils.data.IterableDataset):
    """(kind, ids, labels, mask, position_ids, pixel_values) batches of fresh training clips, built in a loader worker."""

    def __init__(self, name: str):
        self.name = name

    def __iter__(self):
        torch.set_num_threads(1)
        recipe = RECIPES[self.name]
        _, adapter = build(recipe)
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"{self.name}-{worker}")
        step = 0
        while True:
            frames = rng.choice(recipe["frames"])
            seen = step * workers * recipe["batch"]
            kind = "alignment" if seen < recipe.get("align", 0) else "qa"
            examples, pixels = [], []
            for b in range(recipe["batch"]):
                seed = shapes.clip_seed("train", (step * workers + worker) * recipe["batch"] + b)
                spec = easy_clip(seed, frames) if seen < recipe.get("easy", 0) else shapes.sample_clip(seed, frames)
                examples.append(shapes_model.conversation(adapter, frames, turns(kind, spec, rng, 3)))
                pixels.append(pixels_of(recipe, adapter, spec))  # (T, 3, 336, 336), or the oracle's (T, 577)
            step += 1
            yield (kind, *collate(examples, adapter.tokenizer.pad_token_id), torch.cat(pixels))


@torch.no_grad()
def evaluate(model, adapter, recipe: dict) -> dict[str, float]:
    """Accuracy per question type on EVAL_CLIPS validation clips, each question alone, teacher-forced."""
    model.eval()
    right: dict[str, int] = {}
    count: dict[str, int] = {}
    frames = max(recipe["frames"])
    for i in range(EVAL_CLIPS):
        spec = shapes.sample_clip(shapes.clip_seed("validation", i), frames)
        pixels = pixels_of(recipe, adapter, spec).to(DEVICE)  # (T, 3, 336, 336)
        items = shapes.questions(spec)
        ids, labels, mask, positions = collate([shapes_model.conversation(adapter, frames, [(q.question, q.answer)]) for q in items],
                                               adapter.tokenizer.pad_token_id)  # (Q, S), (Q, S), (Q, 1, S, S), (Q, S)
        logits = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), position_ids=positions.to(DEVICE),
                       pixel_values=pixels.repeat(len(items), *[1] * (pixels.dim() - 1))).logits
        predicted, target = logits[:, :-1].argmax(-1).cpu(), labels[:, 1:]
        for item, p, t in zip(items, predicted, target):
            scored = t != shapes_model.IGNORE_INDEX
            right[item.question_type] = right.get(item.question_type, 0) + bool((p[scored] == t[scored]).all())
            count[item.question_type] = count.get(item.question_type, 0) + 1
    model.train()
    return {k: round(right[k] / count[k], 3) for k in count}


def main() -> None:
    name, seconds, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    recipe = RECIPES[name]
    torch.backends.cuda.matmul.allow_tf32 = True
    model, adapter = build(recipe)
    model.to(DEVICE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    loader = torch.utils.data.DataLoader(Batches(name), batch_size=None, num_workers=2, prefetch_factor=4)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / f"{name}.log").open("w")

    def say(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps({"recipe": name, **record}), flush=True)  # the last line: the final evaluation

    say({"name": name, "recipe": recipe, "parameters": sum(p.numel() for p in model.parameters()), "device": DEVICE})
    t0, clips, step, running, n, next_eval = time.time(), 0, 0, 0.0, 0, EVAL_EVERY
    for kind, ids, labels, mask, positions, pixels in loader:
        for group in optimizer.param_groups:
            group["lr"] = recipe["lr"] * min(1.0, (step + 1) / 100)  # warm-up, then constant
        loss = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), position_ids=positions.to(DEVICE),
                     pixel_values=pixels.to(DEVICE), labels=labels.to(DEVICE)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, clips, running, n = step + 1, clips + ids.shape[0], running + loss.item(), n + 1
        done = time.time() - t0 > seconds
        if clips >= next_eval or done:
            say({"clips": clips, "step": step, "kind": kind, "loss": round(running / n, 4), "s": round(time.time() - t0),
                 "val": evaluate(model, adapter, recipe)})
            running, n, next_eval = 0.0, 0, next_eval + EVAL_EVERY
        if done:
            break
    os._exit(0)  # the loader's workers loop forever


if __name__ == "__main__":
    main()
