"""The small LLaVA-1.5 trained here on the shapes task (flashvlm/shapes.py): architecture, tokenizer, examples.

Real LLaVA-1.5 where the selection depends on it: a CLIP vision tower at 336 px with 14 px patches (576
patches a frame plus [CLS]), features from layer -2 with [CLS] dropped, a two-layer GELU projector, a
Llama language model, the LLaVA-1.5 chat prompt, and T frames as T images in one prompt, built by the
LLaVA adapter's own `video_prompts`. Narrow everywhere else, so that it trains on two CPU cores in an hour.

The committed checkpoint (`checkpoint_dir()`, loaded as `flashvlm.load("flashvlm-tiny/shapes")`) is what
`jobs/train_shapes.py` writes; this module builds the untrained model and the training examples.

Shapes: T frames, S sequence length, N = 576 patches a frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

SHAPES_MODEL = "flashvlm-tiny/shapes"
CAPTION_PROMPT = "Describe the video."  # the alignment stage's one instruction, as LLaVA's captioning data
IGNORE_INDEX = -100  # label of every position that is not an answer token

# Small widths, LLaVA-1.5's geometry. Four CLIP layers, of which the language model reads the third (-2).
VISION = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, projection_dim=96)
TEXT = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,  # 8 frames x 576 tokens and a conversation
)
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def checkpoint_dir() -> Path:
    """Where the trained checkpoint is committed (package data, beside this module)."""
    return Path(__file__).resolve().parent / "checkpoints" / "shapes"


def corpus() -> list[str]:
    """Every word the task uses, in the sentences it uses them: the tokenizer's training text.

    Questions and captions of a few hundred generated clips cover every template, colour, shape,
    direction and digit; the chat markers and the caption instruction are added once.
    """
    from flashvlm import shapes

    lines = [f"USER: ASSISTANT: {CAPTION_PROMPT}"]
    for index in range(300):
        spec = shapes.sample_clip(shapes.clip_seed("train", index))
        lines.append(shapes.caption(spec))
        lines.extend(f"{q.question} {q.answer}" for q in shapes.questions(spec))
    lines.append(" ".join(str(d) for d in range(10)))
    return lines


def build_tokenizer() -> Any:
    """A byte-level BPE over `corpus()` (every task word one token), with LLaVA's special tokens."""
    from flashvlm.tiny_models import _tiny_bpe_tokenizer

    tokenizer = _tiny_bpe_tokenizer(_SPECIALS, "<s>", "</s>", "<pad>", "<unk>", corpus=corpus(), vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_shapes_model(seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): the untrained shapes LLaVA, randomly initialised from `seed`."""
    from flashvlm.tiny_models import llava_1_5

    return llava_1_5(build_tokenizer(), VISION, TEXT, seed=seed)


def conversation(adapter: Any, frames: int, turns: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, S) input_ids and labels of a LLaVA-1.5 conversation about one clip of `frames` frames.

    The first turn is exactly the prompt `adapter.answer_video` builds (`video_prompts`); each answer is
    followed by </s>, and further turns follow as LLaVA-1.5's multi-turn data does:
    "USER: <image>...\\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>". Only answers are supervised.
    """
    tokenizer = adapter.tokenizer
    eos = tokenizer.eos_token_id
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for k, (question, answer) in enumerate(turns):
        if k == 0:
            prompt = adapter.video_prompts([question], frames)[0][0]  # (S0,) with BOS and T*N placeholders
        else:
            prompt = torch.tensor(tokenizer(f"USER: {question} ASSISTANT:", add_special_tokens=False)["input_ids"])
        reply = torch.tensor(tokenizer(f" {answer}", add_special_tokens=False)["input_ids"] + [eos])
        ids += [prompt, reply]
        labels += [torch.full_like(prompt, IGNORE_INDEX), reply]
    return torch.cat(ids)[None], torch.cat(labels)[None]
