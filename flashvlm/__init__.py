"""FlashVLM: text-guided visual token selection for vision-language models.

    from flashvlm import select_tokens, select_video_tokens, SelectionConfig, load, wrap
    from flashvlm import select, select_video, METHODS  # the comparison selectors, by name

The selection rule is imported eagerly (pure torch); the model adapters import transformers and are
loaded on first use, so that `import flashvlm` stays cheap in data-pipeline workers.
"""

import importlib

from flashvlm.selection import SelectionConfig, select_tokens

__version__ = "0.1.0"

_LAZY = {
    "select_video_tokens": "flashvlm.video",
    "METHODS": "flashvlm.selectors",
    "select": "flashvlm.selectors",
    "select_video": "flashvlm.selectors",
    "load": "flashvlm.models",
    "wrap": "flashvlm.models",
}

__all__ = ["SelectionConfig", "select_tokens", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flashvlm' has no attribute {name!r}")
