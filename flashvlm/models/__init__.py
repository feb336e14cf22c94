"""Load a VLM and wrap it with FlashVLM token selection.

    model, processor = flashvlm.load("llava-hf/llava-1.5-7b-hf", dtype="float16", device="cuda")
    vlm = flashvlm.wrap(model, budget=64, processor=processor)
    out = vlm.generate(**processor(images=..., text=..., return_tensors="pt"), guide_text=[...], max_new_tokens=32)
    out, kept = vlm.generate(..., return_kept=True)  # kept.indices[i], kept.important[i]: image i's
    answers = vlm.answer_video(frames, ["What happens?"])  # one VideoAnswer per question

One adapter per model family, found by the model's class name and imported on first use, so that a
family's module (and its model internals) is only imported when such a model is wrapped.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from flashvlm.models.base import KeptTokens, TokenSelectionAdapter, VideoAnswer, load_processor

# Model class name -> "module:adapter class".
ADAPTERS = {
    "LlavaForConditionalGeneration": "flashvlm.models.llava:LlavaAdapter",
    "Qwen2_5_VLForConditionalGeneration": "flashvlm.models.qwen2_5_vl:Qwen2_5_VLAdapter",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Packages name checkpoints they ship through this entry-point group: name = "module:function", the function
# returning the checkpoint's local directory (e.g. the shapes package's "flashvlm-tiny/shapes", pyproject.toml).
CHECKPOINTS_GROUP = "flashvlm.checkpoints"

__all__ = ["ADAPTERS", "CHECKPOINTS_GROUP", "DTYPES", "KeptTokens", "TokenSelectionAdapter", "VideoAnswer", "checkpoint_path", "load", "wrap"]


def _resolve_dtype(dtype: object) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be a torch.dtype, 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")


def checkpoint_path(name_or_path: str | os.PathLike) -> str:
    """What from_pretrained reads for `name_or_path`: the directory of a checkpoint an installed package
    names in the "flashvlm.checkpoints" entry-point group, else `name_or_path` itself (hub id or path)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=CHECKPOINTS_GROUP, name=str(name_or_path)):
        return str(entry.load()())
    return str(name_or_path)


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model, processor) from a hub id or a local checkpoint directory, model in eval mode.

    A name an installed package registers (`checkpoint_path`, e.g. "flashvlm-tiny/shapes") loads from the
    directory it names, through the same from_pretrained path. Where the
    AutoProcessor cannot be built without torchvision (Qwen2.5-VL's video processor), the family's
    torchvision-free processor with the same call is returned instead.
    dtype: a torch.dtype, "float32", "bfloat16", "float16" or "auto"; None keeps from_pretrained's default.
    """
    from transformers import AutoModelForImageTextToText

    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path):
        raise ValueError(f"name_or_path must be a hub id or a directory, got {name_or_path!r}")
    if not isinstance(trust_remote_code, bool):
        raise ValueError(f"trust_remote_code must be a bool, got {trust_remote_code!r}")
    path = checkpoint_path(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    resolved = _resolve_dtype(dtype)
    if resolved is not None:
        kwargs["dtype"] = resolved
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be a torch.device or a device string, got {device!r}") from err
        model = model.to(device)
    processor = load_processor(path, type(model).__name__, trust_remote_code=trust_remote_code)
    return model.eval(), processor


def wrap(model: Any, budget: int | None = None, **settings: Any) -> TokenSelectionAdapter:
    """FlashVLM around `model`: `budget` visual tokens per image reach its language model (None: all).

    settings: the adapter's keywords (config, guide, processor, split, min_per_frame, method, method_options),
    as `TokenSelectionAdapter` describes them.
    """
    name = type(model).__name__
    if name not in ADAPTERS:
        raise ValueError(f"model must be one of {sorted(ADAPTERS)}, got {name}")
    module_name, class_name = ADAPTERS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"model {name} is not supported yet ({module_name} is missing)") from err
    adapter = getattr(module, class_name)
    return adapter(model, budget, **settings)
