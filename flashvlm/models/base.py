"""What every FlashVLM model adapter shares, whatever the model family.

A family file (llava.py, qwen2_5_vl.py) knows where its vision features, saliency and placeholder tokens
come from. Everything after that is the same for every decoder-only VLM and lives here:

- the guide text: the user's question (`guide_text`) or every non-image prompt token, embedded with the
  language model's own `embed_tokens` (`guide_embeddings`);
- the pruned sequence: drop the placeholder positions of unkept visual tokens, left-pad the rows again,
  and fill the kept placeholders with the kept rows of the one projection (`prune_sequences`);
- generation on the pruned sequence, returning ids laid out as `model.generate` lays them out for the
  unpruned prompt (`generate_pruned`);
- what a call kept (`KeptTokens`), the per-video answer record (`VideoAnswer`), and the adapter itself
  (`TokenSelectionAdapter`): its settings, the ids it reads off the model's config, `answer_video`,
  whose family-specific part is `video_batch`, and the evaluation's features-once API (`answer_features`,
  `score_choices` on `encode_video`'s `VideoFeatures`), whose family-specific parts are `encode_video`,
  `feature_prompts` and `feature_batch`;
- which keywords a selector gets (`selector_options`): the rule's constants, split, the method's own
  options, and the model's token grid for uniform.

Shapes: B prompts (rows), S prompt length, M images in the batch, N visual tokens per image, D the
language model's width, L guide-text tokens, K kept tokens.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from flashvlm.selection import SelectionConfig

GUIDES = ("question", "prompt")
DEFAULT_MAX_NEW_TOKENS = 32  # answer_video's answer length


@dataclass
class KeptTokens:
    """What the language model saw of each image or video of one `generate` call.

    indices: per item (images, then videos, each in the order they fill the prompt), its kept token
        indices, ascending, into its own tokens (a clip's are flat and frame-major).
    important: parallel to `indices`, True where the token was kept as important (question-relevant or
        salient) and False where it was kept as diverse background; None for an item that kept every token.
    """

    indices: list[torch.Tensor] = field(default_factory=list)
    important: list[torch.Tensor | None] = field(default_factory=list)


@dataclass
class VideoAnswer:
    """One answer about one video, with what the language model saw to give it.

    kept: for every frame, the kept token positions within that frame's token grid (ascending).
    tokens_kept / tokens_total: visual tokens the language model saw / would have seen unpruned.
    important: parallel to `kept`, True where the token was kept as important (question-relevant or
        salient) and False where it was kept as diverse background; None when nothing was pruned.
    """

    text: str
    kept: list[list[int]]
    tokens_kept: int
    tokens_total: int
    important: list[list[bool]] | None = None


@dataclass
class VideoFeatures:
    """A clip's vision side, computed once and reused by every selection setting and question.

    vision (T, N, Dv) the features diversity is measured on, projected (T, N, D) what the language model
    reads, saliency (T, N) float32 (None only inside a family's `video_batch` when nothing is pruned), for
    the T frames (Qwen2.5-VL: temporal patches), each frame's N tokens in raster order over `grid`
    (rows, cols). seconds_per_frame: the time one frame covers, for models whose positions encode time
    (Qwen2.5-VL), else None. Pixel-free, so any number of `answer_features` / `score_choices` calls can
    share it.
    """

    vision: torch.Tensor
    projected: torch.Tensor
    saliency: torch.Tensor | None
    grid: tuple[int, int]
    seconds_per_frame: float | None = None

    @property
    def frames(self) -> int:
        return int(self.vision.shape[0])

    @property
    def tokens_per_frame(self) -> int:
        return int(self.vision.shape[1])


@dataclass
class Prompts:
    """One video prompt per question about a clip: (Q, S) `input_ids` and `attention_mask`, left-padded
    (`score_choices` also right-pads them with its options), and the `questions` that guide selection."""

    questions: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def check_budget(budget: object) -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be None or an int >= 1, got {budget!r}")
    return budget


def check_guide(guide: object) -> str:
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    return guide  # type: ignore[return-value]


def check_config(config: object) -> SelectionConfig:
    if config is None:
        return SelectionConfig()
    if not isinstance(config, SelectionConfig):
        raise ValueError(f"config must be a flashvlm.SelectionConfig or None, got {type(config).__name__}")
    return config


def check_guide_text(guide_text: object, rows: int) -> list[str] | None:
    """guide_text: None, one str for every row, or a list of one str per row."""
    if guide_text is None:
        return None
    if isinstance(guide_text, str):
        return [guide_text] * rows
    if not isinstance(guide_text, (list, tuple)) or not all(isinstance(t, str) for t in guide_text):
        raise ValueError(f"guide_text must be None, a str or a list of str, got {type(guide_text).__name__}")
    if len(guide_text) != rows:
        raise ValueError(f"guide_text has {len(guide_text)} entries but the batch has {rows} prompts")
    return list(guide_text)


def check_prompt(input_ids: object, attention_mask: object) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, S) integer tensor; attention_mask (B, S) or None (all ones). Returns both."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer tensor of shape (B, S), got {getattr(input_ids, 'shape', input_ids)!r}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty (S = 0)")
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {getattr(attention_mask, 'shape', attention_mask)!r}"
        )
    return input_ids, attention_mask


def check_frames(frames: object) -> np.ndarray:
    """frames: uint8 array or tensor of shape (T, H, W, 3), T >= 1. Returns a numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a uint8 numpy array or tensor (T, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 of shape (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
    return frames


def check_questions(questions: object) -> list[str]:
    if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
        raise ValueError(f"questions must be a list of str, got {type(questions).__name__}")
    if not questions or not all(isinstance(q, str) for q in questions):
        raise ValueError("questions must be a non-empty list of str")
    return list(questions)


def check_max_new_tokens(max_new_tokens: object) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    return max_new_tokens


def check_fps(fps: object) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be None or a number > 0, got {fps!r}")
    return float(fps)


# --------------------------------------------------------------------------------------------------
# Guide text
# --------------------------------------------------------------------------------------------------


def left_align(values: torch.Tensor, keep: torch.Tensor, fill: Any = 0) -> torch.Tensor:
    """Move the kept entries of each row to the right end of a shorter row, left-padded with `fill`.

    values: (B, S, ...) any dtype; keep: (B, S) bool. Returns (B, S', ...) with S' = max kept per row,
    the kept entries of each row in their original order. (Left padding, as decoder-only generation needs.)
    """
    B, S = keep.shape
    lengths = keep.sum(dim=1)  # (B,)
    width = int(lengths.max()) if B else 0
    # Destination column of every kept entry: after the row's padding, in order.
    dest = (width - lengths)[:, None] + keep.long().cumsum(dim=1) - 1  # (B, S), valid where keep
    rows = torch.arange(B, device=keep.device)[:, None].expand(B, S)
    out = values.new_full((B, width, *values.shape[2:]), fill)
    out[rows[keep], dest[keep]] = values[keep]
    return out


def embed_texts(texts: Sequence[str], tokenizer: Any, embed_tokens: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings of guide texts: (B, L, D) and their (B, L) bool mask (False = padding).

    No special tokens (BOS/EOS): they carry no meaning to match visual tokens against. An empty text gives
    an all-False row, which the selection ranks by saliency alone.
    """
    device = embed_tokens.weight.device
    encoded = tokenizer(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    ids = encoded["input_ids"].to(device)  # (B, L)
    mask = encoded["attention_mask"].to(device).bool()  # (B, L)
    if ids.shape[1] == 0:  # every text empty
        ids, mask = ids.new_zeros(len(texts), 1), mask.new_zeros(len(texts), 1)
    return embed_tokens(ids), mask


def embed_prompt_text(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, embed_tokens: nn.Module, skip_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings of every real, non-visual prompt token (the authors' release): (B, L, D), (B, L).

    skip_ids: visual placeholders and special tokens (BOS, padding), which are not text to match against.
    Only those tokens are embedded (not the whole prompt with its hundreds of placeholders).
    """
    skip = torch.tensor(sorted(set(skip_ids)), dtype=input_ids.dtype, device=input_ids.device)
    is_text = attention_mask.bool() & ~torch.isin(input_ids, skip)  # (B, S)
    if not bool(is_text.any()):
        B = input_ids.shape[0]
        return embed_tokens(input_ids.new_zeros(B, 1)), is_text.new_zeros(B, 1)
    ids = left_align(input_ids, is_text, fill=0)  # (B, L)
    mask = left_align(is_text, is_text, fill=False)  # (B, L)
    return embed_tokens(ids), mask


# --------------------------------------------------------------------------------------------------
# Kept-index bookkeeping and the pruned sequence
# --------------------------------------------------------------------------------------------------


def kept_mask(kept: torch.Tensor, n: int) -> torch.Tensor:
    """(M, K) kept indices into n tokens -> (M, n) bool, True where kept."""
    mask = torch.zeros(kept.shape[0], n, dtype=torch.bool, device=kept.device)
    return mask.scatter_(1, kept, True)


def visual_placeholders(input_ids: torch.Tensor, token_id: int, tokens_per_image: int, images: int) -> torch.Tensor:
    """(B, S) bool mask of the visual placeholder tokens, checked against the images given.

    The model fills placeholders with image features in row-major order (image 0's N tokens first), so
    every row must hold whole images and the total must match the images passed.
    """
    is_visual = input_ids == token_id  # (B, S)
    per_row = is_visual.sum(dim=1)  # (B,)
    if int(per_row.sum()) != images * tokens_per_image or bool((per_row % tokens_per_image).any()):
        raise ValueError(
            f"input_ids holds {per_row.tolist()} image placeholder tokens per prompt, but pixel_values has "
            f"{images} images of {tokens_per_image} tokens each (use the model's processor to build the prompt)"
        )
    return is_visual


@dataclass
class PrunedPrompt:
    """A batch of prompts with the unkept visual placeholders removed, left-padded again."""

    input_ids: torch.Tensor  # (B, S') the kept tokens, placeholders included
    attention_mask: torch.Tensor  # (B, S')
    inputs_embeds: torch.Tensor  # (B, S', D) text embeddings, kept placeholders filled with kept visual rows
    keep: torch.Tensor  # (B, S) bool: which original positions survive (padding never does)


def prune_sequences(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    is_visual: torch.Tensor,
    keep_visual: torch.Tensor,
    visual_rows: torch.Tensor,
    embed_tokens: nn.Module,
    pad_token_id: int,
) -> PrunedPrompt:
    """Build the language model's input with only the kept visual tokens.

    input_ids, attention_mask, is_visual: (B, S).
    keep_visual: (V,) bool, one per visual placeholder in row-major order (V = is_visual.sum()).
    visual_rows: (V', D) the kept visual embeddings, V' = keep_visual.sum(), in the same row-major order.

    Padding positions are dropped too and every row is left-padded afresh, so rows that lost different
    numbers of tokens still end at the same column. With nothing pruned and a left-padded input, the
    result is the input itself, embedded exactly as the model embeds it (placeholders replaced in order).
    """
    keep = ~is_visual  # (B, S) text tokens stay ...
    keep[is_visual] = keep_visual  # ... and the kept visual tokens, in the order the model fills them
    keep &= attention_mask.bool()  # padding is rebuilt below
    ids = left_align(input_ids, keep, fill=pad_token_id)  # (B, S')
    mask = left_align(torch.ones_like(attention_mask), keep, fill=0)  # (B, S')
    visual = left_align(is_visual, keep, fill=False)  # (B, S') kept placeholders
    embeds = embed_tokens(ids)  # (B, S', D)
    embeds[visual] = visual_rows.to(embeds.dtype)
    return PrunedPrompt(input_ids=ids, attention_mask=mask, inputs_embeds=embeds, keep=keep)


def generate_pruned(model: Any, original_ids: torch.Tensor, pruned: PrunedPrompt, **generate_kwargs: Any) -> Any:
    """model.generate on the pruned prompt; the result reads as if the original prompt had been used.

    The pruned ids go in beside the embeddings so that generation's logits processors (repetition
    penalty, ...) see the prompt tokens; the returned sequences start with the ORIGINAL prompt, so that
    `out[:, input_ids.shape[1]:]` is the answer exactly as with `model.generate(**inputs)`.
    """
    out = model.generate(
        input_ids=pruned.input_ids,
        attention_mask=pruned.attention_mask,
        inputs_embeds=pruned.inputs_embeds,
        **generate_kwargs,
    )
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    new_tokens = sequences[:, pruned.input_ids.shape[1] :]  # (B * returns, new)
    prompt = original_ids.to(new_tokens.device)
    if new_tokens.shape[0] != prompt.shape[0]:  # num_return_sequences / beams: rows repeat per prompt
        prompt = prompt.repeat_interleave(new_tokens.shape[0] // prompt.shape[0], dim=0)
    sequences = torch.cat([prompt, new_tokens], dim=1)
    if isinstance(out, torch.Tensor):
        return sequences
    out.sequences = sequences
    return out


def video_answers(
    texts: Sequence[str], kept: torch.Tensor, important: torch.Tensor | None, frames: int, tokens_per_frame: int
) -> list[VideoAnswer]:
    """One VideoAnswer per question: its decoded text, and its kept tokens split by frame.

    kept: (Q, K) flat frame-major indices into the clip's T * N tokens (T = frames, N = tokens_per_frame);
    important: (Q, K) flags, or None when nothing was pruned.
    """
    kept = kept.cpu()
    frame, position = kept // tokens_per_frame, kept % tokens_per_frame  # (Q, K) each
    flags = None if important is None else important.cpu()
    return [
        VideoAnswer(
            text=text.strip(),
            kept=[position[q][frame[q] == t].tolist() for t in range(frames)],
            tokens_kept=kept.shape[1],
            tokens_total=frames * tokens_per_frame,
            important=None if flags is None else [flags[q][frame[q] == t].tolist() for t in range(frames)],
        )
        for q, text in enumerate(texts)
    ]


@dataclass
class VideoBatch:
    """One clip and its questions, selected and pruned: what `answer_video` generates from.

    kept: (Q, K) flat frame-major indices into the clip's `frames * tokens_per_frame` tokens, per question.
    important: (Q, K) flags, or None when nothing was pruned.
    generate_kwargs: what the family's generate needs besides the pruned prompt (e.g. position ids).
    """

    input_ids: torch.Tensor  # (Q, S) the full prompts
    pruned: PrunedPrompt
    kept: torch.Tensor
    important: torch.Tensor | None
    frames: int  # T: frames (LLaVA) or temporal patches (Qwen2.5-VL)
    tokens_per_frame: int  # N
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


class SaliencyHooks(ABC):
    """A context manager that hooks one vision attention layer while the tower runs and leaves `saliency`:
    a family registers its hooks in `register` and drops its per-call state in `clear`."""

    saliency: torch.Tensor | None = None

    @abstractmethod
    def register(self) -> list[Any]:
        """Register the hooks; return their handles."""

    @abstractmethod
    def clear(self) -> None:
        """Drop what the hooks kept between calls (the saliency stays)."""

    def __enter__(self) -> "SaliencyHooks":
        self.saliency = None
        self._handles = self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()


# --------------------------------------------------------------------------------------------------
# Processors
# --------------------------------------------------------------------------------------------------

# Model class name -> "module:class" of a processor with the same call and outputs that needs no
# torchvision. Used only when AutoProcessor cannot be built (its video processor imports torchvision).
FALLBACK_PROCESSORS = {
    "Qwen2_5_VLForConditionalGeneration": "flashvlm.models.qwen2_5_vl_inputs:Qwen2_5_VLFrameProcessor",
}


def load_processor(path: str, model_class: str, *, trust_remote_code: bool = False) -> Any:
    """AutoProcessor.from_pretrained(path), or the family's torchvision-free stand-in where that fails."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError:
        if model_class not in FALLBACK_PROCESSORS:
            raise
        module_name, class_name = FALLBACK_PROCESSORS[model_class].split(":")
        return getattr(importlib.import_module(module_name), class_name).from_pretrained(path)


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class TokenSelectionAdapter(ABC):
    """A VLM with FlashVLM token selection in front of its language model.

    This class holds the budget, the rule's constants, the guide mode and the processor, reads the token
    ids it needs off the model's config, embeds the guide text, and answers questions about a video
    (`answer_video`) or about a clip's features computed once (`answer_features`, `score_choices`). A family
    (one subclass per model family) implements `generate` on its processor's outputs, `video_batch` (a clip
    and its questions, selected and pruned), `encode_video`, `feature_prompts` and `feature_batch`.

    Settings (`flashvlm.wrap` passes them on): budget, visual tokens per image that reach the language
    model (None: all). config: the rule's constants (`SelectionConfig`), text_weighting among them. guide:
    "question" (the `guide_text` given to generate, else the prompt text) or "prompt" (every non-image prompt
    token but BOS and padding, as the authors' LLaVA code guides). processor: the model's processor, needed
    only for guide_text strings and answer_video; when not given it is loaded from the model's own directory
    on first need, and a model built in memory raises a ValueError there. split / min_per_frame: how a
    video's budget spreads over its frames (`select_video_tokens`; None: its default). method /
    method_options: the selector (`flashvlm.selectors.METHODS`, default "flashvlm") and its own keywords
    (e.g. {"seed": 3} for random).
    """

    def __init__(
        self,
        model: Any,
        budget: int | None = None,
        *,
        config: SelectionConfig | None = None,
        guide: str = "question",
        processor: Any = None,
        split: str | None = None,
        min_per_frame: int | None = None,
        method: str = "flashvlm",
        method_options: dict[str, Any] | None = None,
    ) -> None:
        from flashvlm.selectors import METHODS
        from flashvlm.video import SPLITS

        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.model = model
        self.budget = check_budget(budget)
        self.config = check_config(config)
        self.guide = check_guide(guide)
        self._processor = processor
        # How a clip's budget spreads over its frames: passed to select_video_tokens when set, so its
        # measured default applies otherwise.
        self.video_options = {k: v for k, v in (("split", split), ("min_per_frame", min_per_frame)) if v is not None}
        # Which selector picks the kept tokens (flashvlm.selectors.METHODS) and its own keywords (e.g.
        # seed for random, grid for uniform); split / min_per_frame above go to the methods that take them.
        if method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
        self.method = method
        self.method_options = dict(method_options or {})

    def selector_options(
        self, method: str, options: dict[str, Any] | None, grid: tuple[int, int], *, video: bool = True
    ) -> dict[str, Any]:
        """The keywords `flashvlm.selectors.select_video` (video) or `select` (an image) gets for `method`:
        the adapter's split / min_per_frame where the method takes them, the rule's constants, `options`
        (which win), and for methods that take one (uniform) the token grid of the image or of each frame,
        (rows, cols) in raster order. A grid in `options` must be that grid: the model's own is known. An
        option naming a SelectionConfig field (flashvlm's text_weighting) replaces that field of the constants."""
        from flashvlm.selectors import method_options

        known = method_options(method, video=video)
        out: dict[str, Any] = {k: v for k, v in self.video_options.items() if k in known}
        out["config"] = self.config
        out.update(options or {})
        if "grid" in known:
            given = out.get("grid")
            if given is not None and (not isinstance(given, (tuple, list)) or tuple(given) != tuple(grid)):
                raise ValueError(
                    f"grid: method_options grid {given!r} is not the model's token grid {tuple(grid)} (rows, cols) of "
                    f"this {'clip' if video else 'image'}; leave grid out, the adapter passes its own"
                )
            out["grid"] = tuple(grid)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, budget={self.budget}, guide={self.guide!r})"

    # -- what the model and its processor provide ------------------------------------------------------

    @property
    def processor(self) -> Any:
        """The model's processor: the one given to `wrap`, else loaded from the model's own directory.

        Only guide_text strings and `answer_video` need it; `generate` on processor outputs does not.
        """
        if self._processor is None:
            path = str(getattr(self.model, "name_or_path", "") or "")
            if not path:
                raise ValueError(
                    "processor: guide_text and answer_video need the model's processor, and this model has no "
                    "name_or_path to load it from (built in memory): pass processor= to flashvlm.wrap"
                )
            try:
                self._processor = load_processor(path, type(self.model).__name__)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"processor: guide_text and answer_video need the model's processor, and loading it from "
                    f"{path!r} failed ({err}): pass processor= to flashvlm.wrap"
                ) from err
        return self._processor

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def embed_tokens(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def _configs(self) -> list[Any]:
        """Where the model keeps its token ids: generation config, config, text config (first set wins)."""
        config = self.model.config
        sources = [getattr(self.model, "generation_config", None), config, getattr(config, "text_config", None)]
        return [c for c in sources if c is not None]

    @property
    def pad_token_id(self) -> int:
        """The id generation pads with: the model's pad id (generation config first), else its first EOS.

        Padded positions are masked out, so where the configs name neither, any id (0) will do.
        """
        for name in ("pad_token_id", "eos_token_id"):
            for source in self._configs():
                value = getattr(source, name, None)
                value = value[0] if isinstance(value, (list, tuple)) and value else value
                if isinstance(value, int):
                    return value
        return 0

    @property
    def special_token_ids(self) -> list[int]:
        """BOS and padding ids, from the model's configs: prompt tokens that are no text to guide by."""
        ids = {getattr(source, name, None) for source in self._configs() for name in ("bos_token_id", "pad_token_id")}
        return sorted(i for i in ids if isinstance(i, int))

    # -- guide text ------------------------------------------------------------------------------------

    def guide_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        guide_text: list[str] | None,
        skip_ids: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) guide embeddings and (B, L) mask, one row per prompt.

        guide="question" with guide_text: the question of each prompt (tokenized: needs the processor).
        Otherwise (guide="prompt", or no guide_text given): every real prompt token but `skip_ids` and the
        configs' BOS and padding ids.
        """
        if self.guide == "question" and guide_text is not None:
            return embed_texts(guide_text, self.tokenizer, self.embed_tokens)
        return embed_prompt_text(input_ids, attention_mask, self.embed_tokens, [*skip_ids, *self.special_token_ids])

    # -- what each family implements -------------------------------------------------------------------

    @abstractmethod
    def generate(self, *args: Any, return_kept: bool = False, **kwargs: Any) -> Any:
        """`model.generate` on the processor's outputs with only the kept visual tokens reaching the language model.

        Returns what `model.generate` returns; with return_kept=True, `(output, KeptTokens)`.
        """

    @abstractmethod
    def video_batch(self, frames: np.ndarray, questions: list[str], fps: float | None) -> VideoBatch:
        """The prompts of `questions` about one clip (frames: checked uint8 (T, H, W, 3)), selected and pruned."""

    @abstractmethod
    def encode_video(self, frames: np.ndarray | torch.Tensor, fps: float | None = None) -> VideoFeatures:
        """The clip's vision side, one vision-tower pass for uint8 (T, H, W, 3) frames, saliency included."""

    @abstractmethod
    def feature_prompts(self, questions: list[str], features: VideoFeatures) -> Prompts:
        """One left-padded video prompt per question about the clip."""

    @abstractmethod
    def feature_batch(self, features: VideoFeatures, prompts: Prompts, budget: int | None, method: str, options: dict | None) -> VideoBatch:
        """Select with `method` (`flashvlm.selectors.METHODS`) and its `options` at `budget` tokens per frame
        (None: all) and prune the (Q, S) prompts (rows may be right-padded) over one clip's features."""

    # What separates the prompt from an option's text in `score_choices` (the prompt's last token and the
    # option are tokenized apart, so the option's first token is the one the model would write there).
    CHOICE_PREFIX = " "

    # -- video -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def answer_video(
        self,
        frames: np.ndarray | torch.Tensor,
        questions: Sequence[str],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        fps: float | None = None,
    ) -> list[VideoAnswer]:
        """Answer every question about one video in one batched, greedy generate call.

        frames: uint8 (T, H, W, 3). The vision tower runs once for the clip; each question then chooses its
        own visual tokens across the clip (`flashvlm.select_video_tokens`, `budget` per frame on average;
        Qwen2.5-VL: per temporal patch of 2 frames). fps: the rate the frames were sampled at, for models
        whose positions encode time (Qwen2.5-VL; None: its processor's default); LLaVA does not use it.
        Needs the model's processor (given to `wrap`, or loadable from the model's directory).
        """
        frames = check_frames(frames)
        questions = check_questions(questions)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        fps = check_fps(fps)
        return self.answer_batch(self.video_batch(frames, questions, fps), max_new_tokens)

    def answer_batch(self, batch: VideoBatch, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[VideoAnswer]:
        """Greedy answers of a selected and pruned clip batch (`video_batch`, or a family's feature batch)."""
        out = generate_pruned(
            self.model,
            batch.input_ids,
            batch.pruned,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            **batch.generate_kwargs,
        )
        texts = self.tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        return video_answers(texts, batch.kept, batch.important, batch.frames, batch.tokens_per_frame)

    # -- features computed once per clip, reused across selection settings (the evaluation's sweep) -----

    def check_features(self, features: object) -> VideoFeatures:
        """`features` as this adapter's `encode_video` returns them, or a ValueError."""
        ok = isinstance(features, VideoFeatures) and features.vision.ndim == 3 and features.saliency is not None
        if ok:
            T, N = features.frames, features.tokens_per_frame
            rows, cols = features.grid
            ok = (
                features.projected.shape[:2] == (T, N) and features.saliency.shape == (T, N) and rows * cols == N
                and features.projected.shape[-1] == self.embed_tokens.weight.shape[1]
            )
        if not ok:
            raise ValueError(f"features must be this adapter's encode_video(frames) result, got {type(features).__name__}")
        return features

    @torch.no_grad()
    def answer_features(
        self,
        features: VideoFeatures,
        questions: Sequence[str],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        budget: int | None = None,
        method: str = "flashvlm",
        options: dict[str, Any] | None = None,
    ) -> list[VideoAnswer]:
        """`answer_video` on features from `encode_video`, at the given selection setting (not the
        adapter's): budget per frame (None: all), method (`flashvlm.selectors.METHODS`), its options."""
        features = self.check_features(features)
        questions = check_questions(questions)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        batch = self.feature_batch(features, self.feature_prompts(questions, features), budget, method, options)
        return self.answer_batch(batch, max_new_tokens)

    @torch.no_grad()
    def score_choices(
        self,
        features: VideoFeatures,
        question: str,
        choices: Sequence[str],
        *,
        budget: int | None = None,
        method: str = "flashvlm",
        options: dict[str, Any] | None = None,
    ) -> tuple[list[float], VideoAnswer]:
        """Multiple choice as lmms-eval scores it: the log-likelihood of each option after the prompt.

        Each option's score is the sum of the log-probabilities of its tokens (tokenized without special
        tokens, appended right after the prompt with `CHOICE_PREFIX`) given the pruned video prompt and the
        option's earlier tokens. The selection is the question's own (guided by `question`, not by the
        option), the same for every option. Returns (scores per option, the kept tokens as a VideoAnswer
        whose text is the best option).
        """
        features = self.check_features(features)
        question = check_questions([question])[0]
        if isinstance(choices, str) or not isinstance(choices, (list, tuple)) or not choices \
                or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"choices must be a non-empty list of non-empty str, got {choices!r}")
        T, N, C = features.frames, features.tokens_per_frame, len(choices)
        prompt = self.feature_prompts([question], features)
        prompt_ids, prompt_mask = prompt.input_ids, prompt.attention_mask  # (1, S)
        option_ids = [self.tokenizer(self.CHOICE_PREFIX + c, add_special_tokens=False)["input_ids"] for c in choices]
        if any(not ids for ids in option_ids):
            raise ValueError(f"choices: an option tokenizes to nothing: {choices!r}")
        # Rows: prompt + option, right-padded; prune_sequences drops the padding and left-pads afresh,
        # so every pruned row ends with its option's tokens.
        width = max(len(ids) for ids in option_ids)
        pad = self.pad_token_id
        tail = torch.tensor([ids + [pad] * (width - len(ids)) for ids in option_ids], dtype=prompt_ids.dtype)  # (C, W)
        tail_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in option_ids], dtype=prompt_mask.dtype)
        input_ids = torch.cat([prompt_ids.expand(C, -1), tail], dim=1)  # (C, S + W)
        attention_mask = torch.cat([prompt_mask.expand(C, -1), tail_mask], dim=1)
        batch = self.feature_batch(features, Prompts([question] * C, input_ids, attention_mask), budget, method, options)
        pruned = batch.pruned
        # The family's own positions (Qwen2.5-VL: the kept tokens' original MRoPE ids), else positions that
        # count real tokens only, as generate does for a left-padded prompt.
        position_ids = batch.generate_kwargs.get("position_ids")
        if position_ids is None:
            position_ids = (pruned.attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (C, S')
        logits = self.model(
            inputs_embeds=pruned.inputs_embeds, attention_mask=pruned.attention_mask, position_ids=position_ids,
        ).logits  # (C, S', V)
        logprobs = logits.float().log_softmax(dim=-1)
        scores = []
        for c, ids in enumerate(option_ids):
            n = len(ids)
            target = torch.tensor(ids, device=logprobs.device)  # (n,) the option, at the row's last n positions
            predicted = logprobs[c, -n - 1 : -1]  # (n, V) position i predicts token i + 1
            scores.append(float(predicted.gather(1, target[:, None]).sum()))
        best = max(range(C), key=lambda i: scores[i])
        important = None if batch.important is None else batch.important[:1]
        return scores, video_answers([choices[best]], batch.kept[:1], important, T, N)[0]
