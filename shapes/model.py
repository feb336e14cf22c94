"""The small LLaVA-1.5 trained here on the shapes task (shapes/clips.py): architecture, tokenizer, examples.

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
# Two Llama layers, the fewest that can find an object the question names (one to read the question into
# the answer's position, one to look for it among the image tokens): per step they learn at least as fast as
# four and cost half as much (docs/shapes.md).
VISION = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, projection_dim=96)
TEXT = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,  # 8 frames x 576 tokens and a conversation
)
POSITION_SCALE = 0.2  # sine-cosine positions at about half a patch embedding's scale at initialisation
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


def checkpoint_dir() -> Path:
    """Where the trained checkpoint is committed (package data, beside this module)."""
    return Path(__file__).resolve().parent / "checkpoint"


def checkpoint_path() -> Path:
    """The committed checkpoint's directory, registered as "flashvlm-tiny/shapes" (pyproject.toml's
    flashvlm.checkpoints entry point), so `flashvlm.load("flashvlm-tiny/shapes")` finds it."""
    if not (checkpoint_dir() / "config.json").is_file():
        raise FileNotFoundError(
            f"{SHAPES_MODEL}: no trained checkpoint at {checkpoint_dir()}; `python jobs/train_shapes.py` writes one there "
            "(or pass the directory another run wrote)"
        )
    return checkpoint_dir()


def corpus() -> list[str]:
    """Every word the task uses, in the sentences it uses them: the tokenizer's training text.

    Questions and captions of a few hundred generated clips cover every template, colour, shape,
    direction and digit; the chat markers and the caption instruction are added once.
    """
    from shapes import clips as shapes

    lines = [f"USER: ASSISTANT: {CAPTION_PROMPT}"]
    for index in range(300):
        spec = shapes.sample_clip(shapes.clip_seed("train", index))
        lines.append(shapes.caption(spec))
        lines.extend(f"{q.question} {q.answer}" for q in shapes.questions(spec))
    lines.append(" ".join(str(d) for d in range(10)))
    return lines


def build_tokenizer() -> Any:
    """A byte-level BPE over `corpus()` (every task word one token), with LLaVA's special tokens."""
    tokenizer = bpe_tokenizer(_SPECIALS, "<s>", "</s>", "<pad>", "<unk>", corpus=corpus(), vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_shapes_model(seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): the untrained shapes LLaVA, randomly initialised from `seed`."""
    model, processor = llava_1_5(build_tokenizer(), VISION, TEXT, seed=seed)
    embeddings = model.model.vision_tower.embeddings
    with torch.no_grad():
        embeddings.position_embedding.weight[1:] = POSITION_SCALE * grid_positions(int(embeddings.num_patches**0.5), VISION["hidden_size"])
    return model, processor


def grid_positions(grid: int, width: int) -> torch.Tensor:
    """(grid * grid, width) 2-D sine-cosine position embeddings, row-major (MAE's fixed ViT positions).

    The CLIP tower's learned position embeddings start here rather than at N(0, 0.02), which is a tenth of
    a patch embedding's scale: a ViT trained from scratch otherwise spends thousands of images learning
    which patches are neighbours before it can see a shape. Half the channels encode the row, half the
    column, each as sines and cosines of `width / 4` frequencies.
    """
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (width/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    angles_r = rows.reshape(-1, 1) * frequencies  # (grid*grid, width/4)
    angles_c = cols.reshape(-1, 1) * frequencies
    return torch.cat([angles_r.sin(), angles_r.cos(), angles_c.sin(), angles_c.cos()], dim=1)  # (grid*grid, width)


def conversation(adapter: Any, frames: int, turns: Sequence[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, S) input_ids, labels and turn of every position: independent turns about one clip of `frames` frames.

    Every turn is exactly the prompt `adapter.answer_video` builds (`video_prompts`) for its question,
    followed by its answer and </s>. The turns share one copy of the prompt's image prefix (BOS, "USER:",
    the T * N image tokens), which is stored once:

        [<s> USER: <image> x T*N] [\\n q1 ASSISTANT: a1</s>] [\\n q2 ASSISTANT: a2</s>] ...
        turn:  0 ...                1 ...                         2 ...

    `shapes.training.collate` masks attention so that a turn sees the prefix and itself only, at the
    positions it has in its own prompt: each turn is a single-question example, so no answer can be read
    off another turn's text, at the cost of one pass over the clip's frames. Only answers are supervised.
    """
    tokenizer = adapter.tokenizer
    image = adapter.model.config.image_token_id
    prompts = [adapter.video_prompts([question], frames)[0][0] for question, _ in turns]  # (S_k,) each, unpadded
    prefix = int((prompts[0] == image).nonzero()[-1]) + 1  # through the last image token
    ids = [prompts[0][:prefix]]
    labels = [torch.full((prefix,), IGNORE_INDEX)]
    turn = [torch.zeros(prefix, dtype=torch.long)]
    for k, (prompt, (_, answer)) in enumerate(zip(prompts, turns), start=1):
        if not torch.equal(prompt[:prefix], ids[0]):
            raise ValueError(f"turn {k}'s prompt does not start with the shared image prefix")
        reply = torch.tensor(tokenizer(f" {answer}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        ids += [prompt[prefix:], reply]
        labels += [torch.full((len(prompt) - prefix,), IGNORE_INDEX), reply]
        turn.append(torch.full((len(prompt) - prefix + len(reply),), k))
    return torch.cat(ids)[None], torch.cat(labels)[None], torch.cat(turn)[None]


def bpe_tokenizer(
    specials: list[str],
    bos: str | None,
    eos: str,
    pad: str,
    unk: str | None,
    corpus: list[str],
    vocab_size: int = 400,
):
    """A byte-level BPE trained in-process on `corpus`, wrapped for transformers (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    if bos is not None:  # Llama-style: every encoded text starts with BOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        padding_side="left",  # decoder-only generation pads on the left
    )


def llava_1_5(tokenizer: Any, vision: dict[str, Any], text: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): a randomly initialised LLaVA-1.5 with the real image geometry and the given widths.

    Real where the selection depends on it: CLIP vision tower at 336 px with patch 14 (N = 576 patches +
    [CLS]), features from layer -2 with [CLS] dropped ("default" strategy), a two-layer GELU projector, a
    Llama text model, and the processor that expands each <image> into 576 placeholder tokens.
    tokenizer: with bos, eos, pad and an atomic "<image>" token. vision / text: CLIPVisionConfig and
    LlamaConfig widths. Deterministic for `seed`.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14, **vision),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            **text,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the [CLS] token, dropped by the "default" strategy
    )
    return model, processor
