"""What the patch features LLaVA reads carry of an object's shape and of its motion: linear probes on a CLIP tower.

    python experiments/tower_probe.py CHECKPOINT [CHECKPOINT ...]     # "random": the untrained shapes tower

Features are the tower's hidden state at `vision_feature_layer` (-2, [CLS] dropped) on fresh training-split
clips (H.264 round trip, the adapter's preprocessing), pooled over the patches an object covers
(`shapes.clips.object_patches`, so the probe is told where the object is). Each probe is a logistic regression
fitted on 200 clips' objects and scored on 60 other clips' objects:
- shape: one-frame clips, mean and max over the object's patches -> its shape (chance 0.25);
- direction: four-frame clips, the mean over its patches in the first frame, in the last, and their
  difference -> still, left, right, up or down (chance 0.2). With the tower frozen, as the recipe keeps it
  while the language model learns, this is the most the language model can read of motion from the image
  tokens' contents (RoPE positions reach only attention weights, not what a token carries).
Prints one JSON line per checkpoint: {"checkpoint", "shape": {"train", "test", "objects"}, "direction": {...}}.
docs/shapes.md ("Status") quotes the committed checkpoint's line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashvlm  # noqa: E402
from shapes import clips as shapes  # noqa: E402
from flashvlm.models import wrap  # noqa: E402
from shapes.model import build_shapes_model  # noqa: E402
from shapes.training import decoded_clip  # noqa: E402

FIRST = 900_000  # clip indices far past what a training run reaches


def object_features(model, adapter, start: int, clips: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(objects, 2D or 3D) pooled patch features and (objects,) labels: shape indices for one-frame clips,
    direction indices for longer ones."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    features, labels = [], []
    with torch.no_grad():
        for i in range(start, start + clips):
            spec = shapes.sample_clip(shapes.clip_seed("train", FIRST + i), frames)
            hidden = tower(adapter.pixel_values(decoded_clip(spec)), output_hidden_states=True).hidden_states[layer][:, 1:]  # (T, 576, D)
            for k, obj in enumerate(spec.objects):
                covered = shapes.object_patches(spec, k)
                if frames == 1:
                    patches = hidden[0, covered[0]]  # (P, D)
                    features.append(torch.cat([patches.mean(0), patches.max(0).values]))
                    labels.append(shapes.SHAPES.index(obj.shape))
                else:
                    first, last = hidden[0, covered[0]].mean(0), hidden[-1, covered[-1]].mean(0)  # (D,) each
                    features.append(torch.cat([first, last, last - first]))
                    labels.append(shapes.DIRECTIONS.index(obj.direction))
    return torch.stack(features), torch.tensor(labels)


def fit(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    """A standardised, L2-regularised logistic regression (LBFGS); accuracy on both sets."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = int(max(y_train.max(), y_test.max())) + 1
    weight = torch.zeros(x_train.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_train @ weight + bias, y_train) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train = ((x_train @ weight + bias).argmax(1) == y_train).float().mean().item()
        test = ((x_test @ weight + bias).argmax(1) == y_test).float().mean().item()
    return {"train": round(train, 3), "test": round(test, 3)}


def probe(checkpoint: str) -> dict:
    model, processor = build_shapes_model(0) if checkpoint == "random" else flashvlm.load(checkpoint, dtype="float32")
    adapter = wrap(model.eval(), budget=None, processor=processor)
    line: dict = {"checkpoint": checkpoint}
    for name, frames in (("shape", 1), ("direction", 4)):
        x_train, y_train = object_features(model, adapter, 0, 200, frames)
        x_test, y_test = object_features(model, adapter, 200, 60, frames)
        line[name] = {**fit(x_train, y_train, x_test, y_test), "objects": len(y_test)}
    return line


if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in sys.argv[1:] or ["random"]:
        print(json.dumps(probe(name)), flush=True)
