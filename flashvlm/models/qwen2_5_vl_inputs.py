"""Qwen2.5-VL model inputs built without torchvision: decoded video frames and images in, model kwargs out.

transformers' `Qwen2VLVideoProcessor` (and so `Qwen2_5_VLProcessor`) needs torchvision, which is not a dependency:
the registry's torchvision wheel is a CUDA build that fails to import beside a CPU torch. This module builds the
same tensors itself:

    frames (T, H, W, 3) uint8  --resize to a multiple of patch*merge (PIL bicubic, as the image processor)
                               --rescale 1/255, normalise with the CLIP mean/std
                               --patchify with temporal patch 2, patch 14, merge 2
    -> pixel_values_videos (t*h*w, 3*2*14*14), video_grid_thw [[t, h, w]], second_per_grid_ts [2 / fps]

The patch layout is the one of `Qwen2VLImageProcessorPil.patchify` and `Qwen2VLVideoProcessor.patchify`:
rows ordered (t, h/merge, w/merge, merge, merge), each row (channel, temporal, patch_h, patch_w). A still
image is one temporal patch whose two frames are the same picture, which is what the image processor does.

`Qwen2_5_VLFrameProcessor` wraps a tokenizer and the PIL image processor and returns what
`Qwen2_5_VLProcessor` returns (input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw, second_per_grid_ts), left-padded, so that `model.generate(**inputs)` and
`flashvlm.wrap(model).generate(**inputs)` both take it unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flashvlm.models.base import check_frames

# The defaults of Qwen2VLImageProcessorPil / Qwen2VLVideoProcessor.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

# Frames are decoded at model size (pipeline/decode.py), so by default only round to the patch grid: no upscaling of
# small frames (the video processor's 128*28*28 floor would), and the video processor's per-frame cap.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 768 * 28 * 28
DEFAULT_FPS = 2.0  # qwen-vl-utils' default sampling rate
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class PatchGeometry:
    """How pixels become vision-tower rows (the Qwen2.5-VL defaults)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def from_image_processor(cls, image_processor) -> "PatchGeometry":
        return cls(
            patch_size=int(image_processor.patch_size),
            temporal_patch_size=int(image_processor.temporal_patch_size),
            merge_size=int(image_processor.merge_size),
            image_mean=tuple(float(x) for x in image_processor.image_mean),
            image_std=tuple(float(x) for x in image_processor.image_std),
            rescale_factor=float(image_processor.rescale_factor),
        )

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's rule: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    The same arithmetic as transformers' `qwen2_vl.image_processing_qwen2_vl.smart_resize`.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify_frames(
    frames,
    geometry: PatchGeometry | None = None,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded frames -> (pixel_values_videos, grid_thw) in Qwen's flat patch layout.

    Args:
        frames: (T, H, W, 3) uint8 array or tensor. An odd T is padded by repeating the last frame, as the video processor does.
        geometry: patch sizes and normalisation; Qwen2.5-VL's defaults when None.

    Returns:
        pixel_values: (t * h * w, 3 * temporal_patch * patch * patch) float32, t = ceil(T / temporal_patch).
        grid_thw: (3,) int64 [t, h, w] in patches (the language model sees t * h * w / merge**2 tokens).
    """
    g = geometry or PatchGeometry()
    frames = check_frames(frames)
    T, H, W, C = frames.shape
    new_h, new_w = smart_resize(H, W, g.factor, min_pixels, max_pixels)
    if (new_h, new_w) != (H, W):
        # PIL bicubic on uint8, exactly what Qwen2VLImageProcessorPil.resize does per image.
        from PIL import Image

        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize((new_w, new_h), resample=Image.BICUBIC)) for f in frames]
        )
    # Rescale in float64 then store float32, then normalise: the image processor's order and precisions.
    x = (frames.astype(np.float64) * g.rescale_factor).astype(np.float32)  # (T, H, W, C)
    mean = np.asarray(g.image_mean, dtype=np.float32)
    std = np.asarray(g.image_std, dtype=np.float32)
    x = (x - mean) / std
    x = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (T, C, H, W)

    tp, p, m = g.temporal_patch_size, g.patch_size, g.merge_size
    if pad := -T % tp:
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)  # repeat the last frame
    grid_t, grid_h, grid_w = x.shape[0] // tp, new_h // p, new_w // p
    patches = x.reshape(grid_t, tp, C, grid_h // m, m, p, grid_w // m, m, p)
    # -> (t, h/m, w/m, m_h, m_w, C, tp, p_h, p_w): merge windows contiguous, each row (C, tp, p, p).
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    pixel_values = patches.reshape(grid_t * grid_h * grid_w, C * tp * p * p).contiguous()
    return pixel_values, torch.tensor([grid_t, grid_h, grid_w], dtype=torch.long)


def chat_prompt(content: str, system: str | None = SYSTEM_PROMPT) -> str:
    """Qwen2.5-VL's chat format for one user turn, ready for the assistant's answer.

    `content` carries the vision blocks as `<|vision_start|><|video_pad|><|vision_end|>` (or image_pad),
    one pad token each; the processor expands every pad to the item's token count.
    """
    system_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{system_turn}<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def video_prompt(question: str, system: str | None = SYSTEM_PROMPT) -> str:
    """The chat prompt with one video block before the question (Qwen's own order)."""
    return chat_prompt(f"{VISION_START}{VIDEO_PAD}{VISION_END}{question}", system)


class Qwen2_5_VLFrameProcessor:
    """A torchvision-free stand-in for `Qwen2_5_VLProcessor`: same call, same output keys.

        processor = Qwen2_5_VLFrameProcessor.from_pretrained(path)
        inputs = processor(text=[prompt, ...], images=[...], videos=[frames, ...], return_tensors="pt")

    `text` holds one `<|image_pad|>` per image and one `<|video_pad|>` per video, in the order the items are
    given (row by row), as with the transformers processor; each is expanded to the item's token count.
    Batches are left-padded (generation appends on the right).
    """

    def __init__(
        self,
        tokenizer,
        image_processor=None,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fps: float = DEFAULT_FPS,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.geometry = PatchGeometry.from_image_processor(image_processor) if image_processor is not None else PatchGeometry()
        self.min_pixels, self.max_pixels, self.fps = min_pixels, max_pixels, fps
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        if self.image_token_id is None or self.video_token_id is None:
            raise ValueError(f"the tokenizer lacks {IMAGE_PAD} or {VIDEO_PAD}")

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "Qwen2_5_VLFrameProcessor":
        """Tokenizer and PIL image processor of a Qwen2.5-VL checkpoint (local dir or hub id)."""
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
        return cls(tokenizer, image_processor, **kwargs)

    # -- text helpers, so that the processor can stand where a transformers processor stands --------------

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    # -- the call ------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence | None = None,
        videos: Sequence | None = None,
        *,
        fps: float | Sequence[float] | None = None,
        return_tensors: str = "pt",
        **unused,
    ) -> dict[str, torch.Tensor]:
        """Tokenise prompts and build the pixel tensors; returns plain torch tensors (return_tensors="pt")."""
        if return_tensors != "pt":
            raise ValueError("only return_tensors='pt' is supported")
        texts = [text] if isinstance(text, str) else list(text)
        out: dict[str, torch.Tensor] = {}
        image_counts: list[int] = []
        video_counts: list[int] = []
        merge_unit = self.geometry.merge_size**2

        if images is not None and len(images) > 0:
            if self.image_processor is None:
                raise ValueError("images given but the processor has no image processor")
            image_out = self.image_processor(images=list(images), return_tensors="pt")
            out["pixel_values"] = image_out["pixel_values"]
            out["image_grid_thw"] = image_out["image_grid_thw"]
            image_counts = (out["image_grid_thw"].prod(-1) // merge_unit).tolist()

        if videos is not None and len(videos) > 0:
            fps = self.fps if fps is None else fps
            fps_list = [float(fps)] * len(videos) if np.isscalar(fps) else [float(f) for f in fps]
            if len(fps_list) != len(videos):
                raise ValueError(f"{len(fps_list)} fps values for {len(videos)} videos")
            pixels, grids = zip(*(
                patchify_frames(v, self.geometry, min_pixels=self.min_pixels, max_pixels=self.max_pixels) for v in videos
            ))
            out["pixel_values_videos"] = torch.cat(pixels, dim=0)
            out["video_grid_thw"] = torch.stack(grids)
            # Seconds covered by one temporal patch: Qwen's MRoPE spaces temporal ids by this (x tokens_per_second).
            out["second_per_grid_ts"] = torch.tensor(
                [self.geometry.temporal_patch_size / f for f in fps_list], dtype=torch.float32
            )
            video_counts = (out["video_grid_thw"].prod(-1) // merge_unit).tolist()

        return {**self.tokenize_prompts(texts, image_counts, video_counts), **out}

    def tokenize_prompts(
        self, texts: Sequence[str], image_counts: Sequence[int], video_counts: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Left-padded input_ids, attention_mask and mm_token_type_ids of prompts whose items have these token counts.

        Every `<|image_pad|>` / `<|video_pad|>` (in order, row by row) becomes as many placeholders as the
        next item's count; the counts must be used up exactly.
        """
        image_counts, video_counts = list(image_counts), list(video_counts)
        rows = [self._tokenize(t, image_counts, video_counts) for t in texts]
        if image_counts or video_counts:
            raise ValueError(
                f"{len(image_counts)} image(s) and {len(video_counts)} video(s) have no {IMAGE_PAD} / {VIDEO_PAD} in the text"
            )
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, length - len(r) :] = torch.tensor(r, dtype=torch.long)  # left padding
            attention_mask[b, length - len(r) :] = 1
        mm = torch.zeros_like(input_ids, dtype=torch.int32)  # 0 text, 1 image, 2 video (Qwen's convention)
        mm[input_ids == self.image_token_id] = 1
        mm[input_ids == self.video_token_id] = 2
        return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm}

    def _tokenize(self, text: str, image_counts: list[int], video_counts: list[int]) -> list[int]:
        """Token ids of one prompt, each pad placeholder expanded to its item's count (consumed from the lists)."""
        ids: list[int] = []
        pieces = _split_keep(text, (IMAGE_PAD, VIDEO_PAD))
        for piece in pieces:
            if piece == IMAGE_PAD:
                if not image_counts:
                    raise ValueError(f"more {IMAGE_PAD} in the text than images given")
                ids += [self.image_token_id] * image_counts.pop(0)
            elif piece == VIDEO_PAD:
                if not video_counts:
                    raise ValueError(f"more {VIDEO_PAD} in the text than videos given")
                ids += [self.video_token_id] * video_counts.pop(0)
            elif piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def video_question_inputs(
        self, frames, questions: str | Sequence[str], *, fps: float | None = None, system: str | None = SYSTEM_PROMPT
    ) -> dict[str, torch.Tensor]:
        """One clip and Q questions -> a left-padded batch of Q rows, each with its own copy of the clip.

        For many questions about one clip, `Qwen2_5_VLAdapter.answer_video` encodes the clip once instead.
        """
        qs = [questions] if isinstance(questions, str) else list(questions)
        return self(text=[video_prompt(q, system) for q in qs], videos=[frames] * len(qs), fps=fps)


def _split_keep(text: str, tokens: tuple[str, ...]) -> list[str]:
    """Split text around any of `tokens`, keeping them as their own pieces, in order."""
    return re.split("(" + "|".join(re.escape(t) for t in tokens) + ")", text)
