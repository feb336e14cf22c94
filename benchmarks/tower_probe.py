"""How much of an object's shape the patch features LLaVA reads carry: a linear probe on a CLIP tower.

    python benchmarks/tower_probe.py CHECKPOINT [CHECKPOINT ...]     # "random": the untrained shapes tower

For every object of fresh one-frame training-split clips (H.264 round trip, the adapter's preprocessing),
the tower's hidden state at `vision_feature_layer` (-2, [CLS] dropped) over the patches the object covers
is pooled (mean and max, concatenated); a logistic regression on 200 clips' objects predicts the shape and
is scored on 60 other clips' objects (chance 0.25). Prints one JSON line per checkpoint:
{"checkpoint", "train", "test", "objects"}. The README's "A vision stage" quotes these lines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flashvlm  # noqa: E402
from flashvlm import shapes  # noqa: E402
from flashvlm.models import wrap  # noqa: E402
from flashvlm.shapes_model import build_shapes_model  # noqa: E402
from pipeline.training import decoded_clip  # noqa: E402

FIRST = 900_000  # clip indices far past what a training run reaches


def object_features(model, adapter, start: int, clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(objects, 2D) pooled patch features and (objects,) shape indices."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    features, labels = [], []
    with torch.no_grad():
        for i in range(start, start + clips):
            spec = shapes.sample_clip(shapes.clip_seed("train", FIRST + i), 1)
            hidden = tower(adapter.pixel_values(decoded_clip(spec)), output_hidden_states=True).hidden_states[layer][0, 1:]  # (576, D)
            for k, obj in enumerate(spec.objects):
                covered = hidden[shapes.object_patches(spec, k)[0]]  # (P, D)
                features.append(torch.cat([covered.mean(0), covered.max(0).values]))
                labels.append(shapes.SHAPES.index(obj.shape))
    return torch.stack(features), torch.tensor(labels)


def probe(checkpoint: str) -> dict:
    model, processor = build_shapes_model(0) if checkpoint == "random" else flashvlm.load(checkpoint, dtype="float32")
    adapter = wrap(model.eval(), budget=None, processor=processor)
    x_train, y_train = object_features(model, adapter, 0, 200)
    x_test, y_test = object_features(model, adapter, 200, 60)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x_train.shape[1], len(shapes.SHAPES), requires_grad=True)
    bias = torch.zeros(len(shapes.SHAPES), requires_grad=True)
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
    return {"checkpoint": checkpoint, "train": round(train, 3), "test": round(test, 3), "objects": len(y_test)}


if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in sys.argv[1:] or ["random"]:
        print(json.dumps(probe(name)), flush=True)
