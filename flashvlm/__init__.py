"""FlashVLM: text-guided visual token selection for vision-language models.

    from flashvlm import select_tokens, select_video_tokens, SelectionConfig, load, wrap
    from flashvlm import select, select_video, METHODS  # the comparison selectors, by name

Every name is imported on first use: the rule needs torch and the adapters transformers, and neither
should load in a worker that only decodes video (`flashvlm.decode`), where torch alone costs ~2 s a process.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "SelectionConfig": "flashvlm.selection",
    "select_tokens": "flashvlm.selection",
    "select_video_tokens": "flashvlm.video",
    "METHODS": "flashvlm.selectors",
    "select": "flashvlm.selectors",
    "select_video": "flashvlm.selectors",
    "load": "flashvlm.models",
    "wrap": "flashvlm.models",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flashvlm' has no attribute {name!r}")
