"""Tiny, randomly initialised VLM checkpoints for the tests: LLaVA-1.5 and Qwen2.5-VL, built offline.

`tiny_model_path(TINY_LLAVA)` builds one on first use in $FLASHVLM_CACHE (or ~/.cache/flashvlm) and returns
its directory; the tests then load it by that local path, through the same `flashvlm.load` /
`from_pretrained` path as a hub checkpoint. Each builder writes a real checkpoint (config, weights,
tokenizer, processor) with `save_pretrained`.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shapes.model import bpe_tokenizer, llava_1_5

# The tiny checkpoints, by the names of their cache folders (see `tiny_model_path`).
TINY_LLAVA = "flashvlm-tiny/llava"
TINY_QWEN2_5_VL = "flashvlm-tiny/qwen2_5_vl"

# A few sentences are enough for the BPE to learn the chat words and common English pieces, so that
# prompts and questions tokenize into a handful of tokens each.
_TINY_CORPUS = [
    "USER: ASSISTANT: What is in the image? What is the man holding? Describe the scene.",
    "What colour is the car? How many people are there? Where is the dog? Is it raining?",
    "The man is holding a red umbrella. A dog runs across the green park near the river.",
    "There are two people sitting at a table with cups of coffee and a laptop.",
    "A cat sleeps on the sofa while the sun sets behind the city buildings.",
    "What happens in the video? What is the person doing? Which object moves first?",
]
# The language model of every tiny checkpoint: small enough for CPU tests, real attention (GQA) and RoPE.
_TINY_DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=0.2,  # well-separated logits: greedy decoding has no near-ties
)

_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def build_tiny_llava(path: str | os.PathLike) -> str:
    """Build a tiny, randomly initialised LLaVA-1.5 (`llava_1_5`) and save it to `path`; returns the path.

    Narrow everywhere, so that a generate call takes well under a second on CPU. Deterministic (seed 0).
    """
    tokenizer = bpe_tokenizer(_LLAVA_SPECIALS, corpus=_TINY_CORPUS, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    # Register <image> as a special token so that it is never merged with neighbouring text.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=32,
        # A wider init than CLIP's 0.02 gives attention rows and features with clear winners, so
        # rankings have no near-ties and batched vs one-by-one comparisons are meaningful.
        initializer_range=0.2,
    )
    model, processor = llava_1_5(tokenizer, vision, _TINY_DECODER, seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


# Qwen's special tokens, in the order the real tokenizer numbers them (ids differ: the vocabulary is tiny).
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def build_tiny_qwen2_5_vl(path: str | os.PathLike) -> str:
    """Build a tiny, randomly initialised Qwen2.5-VL and save it (config, weights, tokenizer, image processor).

    Real where the selection depends on it: patch 14, temporal patch 2, 2x2 merge, a windowed block then
    a full-attention last block (as the real tower ends), 3-D MRoPE in the language model
    (`mrope_section` [2, 3, 3] sums to head_dim / 2 = 8) with video temporal ids spaced by
    tokens_per_second. Narrow everywhere else; a 56 px window (2x2 merged tokens) so that a 112 px frame
    already has 4 attention windows. The image processor is the PIL one (no torchvision); load the
    processor with `flashvlm.models.qwen2_5_vl_inputs.Qwen2_5_VLFrameProcessor.from_pretrained(path)`.
    Deterministic (fixed seed). Returns the path, for `flashvlm.load`.
    """
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    tokenizer = bpe_tokenizer(_QWEN_SPECIALS, corpus=_TINY_CORPUS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **_TINY_DECODER,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            temporal_patch_size=2,
            spatial_merge_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            initializer_range=0.2,  # attention with clear winners: saliency has no near-ties
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.do_sample = False
    # Small images stay small (no upscaling to the real 56x56 floor's neighbours), at most 8x8 merged tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=224 * 224)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    image_processor.save_pretrained(path)
    return str(path)


_TINY_BUILDERS = {TINY_LLAVA: build_tiny_llava, TINY_QWEN2_5_VL: build_tiny_qwen2_5_vl}


def tiny_cache_dir(name: str) -> Path:
    """Where the tiny checkpoint `name` lives: $FLASHVLM_CACHE/<name> or ~/.cache/flashvlm/<name>."""
    root = os.environ.get("FLASHVLM_CACHE") or Path.home() / ".cache" / "flashvlm"
    return Path(root) / name


def is_tiny_model(name: object) -> bool:
    return isinstance(name, str) and name in _TINY_BUILDERS


def tiny_model_path(name: str) -> str:
    """The local directory of the tiny checkpoint `name`, built on first use.

    The build happens in a temporary sibling directory that is renamed into place at the end: a rename is
    atomic, so concurrent processes (Ray actors loading the model at once) either see no directory or a
    complete one. A process that loses the race discards its own copy; the builds are deterministic, so
    both copies are identical anyway.
    """
    if not is_tiny_model(name):
        raise ValueError(f"name must be one of {sorted(_TINY_BUILDERS)}, got {name!r}")
    target = tiny_cache_dir(name)
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _TINY_BUILDERS[name](tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


LLAVA_PATH = str(tiny_cache_dir(TINY_LLAVA))  # where the `flashvlm_cache` fixture builds them: configs name these
QWEN_PATH = str(tiny_cache_dir(TINY_QWEN2_5_VL))
