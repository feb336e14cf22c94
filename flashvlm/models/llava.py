"""FlashVLM inside LLaVA-1.5 (`LlavaForConditionalGeneration` with a CLIP vision tower).

What is LLaVA-specific, and nothing else:

- saliency: the attention from [CLS] to every patch at the layer LLaVA takes its features from
  (`vision_feature_layer`, -2 for LLaVA-1.5), averaged over heads. `ClsAttentionSaliency` hooks that
  layer's query and key projections and computes the one [CLS] row from their outputs, so the tower
  keeps its fused attention (sdpa) and no attention matrix is ever materialised;
- features: one pass of the vision tower that stops after the layer the features come from (the layers
  above it are never needed: LLaVA-1.5 reads layer -2, so the last layer is skipped), then the model's
  own projector; the kept rows of that one projection are what the language model sees;
- the prompt: every <image> placeholder run of N = 576 tokens is one image; video frames are T images
  in one LLaVA-1.5 prompt.

`answer_video` prepares its inputs without the per-frame overheads of the generic processor call, with
identical results: frames already at the processor's crop size go through a per-channel lookup table
read off the image processor's own output (`PixelTable`), and prompts are tokenized with one <image>
per frame, then expanded to N placeholders (checked once against the processor's full expansion).

Shapes: B prompts, S prompt length, M images, T frames, N patches per image (576), Dv the CLIP width,
D the language model's width, H heads, K kept tokens per image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from flashvlm.models.base import (
    KeptTokens,
    Prompts,
    SaliencyHooks,
    TokenSelectionAdapter,
    VideoBatch,
    VideoFeatures,
    check_budget,
    check_frames,
    check_guide_text,
    check_prompt,
    generate_pruned,
    kept_mask,
    prune_sequences,
    visual_placeholders,
)
from flashvlm.selectors import select, select_video

VIDEO_PROMPT = "USER: {images}\n{question} ASSISTANT:"  # LLaVA-1.5 chat format, one <image> per frame


class ClsAttentionSaliency(SaliencyHooks):
    """Context manager that records the head-averaged [CLS] -> patch attention of one CLIP attention layer.

    Hooks the layer's q_proj and k_proj and reuses their outputs (already computed by the layer): from the
    queries only the [CLS] row is used, so the extra work is one (1 x S) score row per head instead of the
    layer's (S x S) matrix, and the layer itself still runs its own (sdpa) attention.

        with ClsAttentionSaliency(vision_tower.encoder.layers[i].self_attn) as hook:
            vision_tower(pixel_values)
        hook.saliency  # (M, N) in float32: softmax over all S = N + 1 keys, [CLS] column dropped
    """

    def __init__(self, attention: nn.Module) -> None:
        for name in ("q_proj", "k_proj", "num_heads", "head_dim", "scale"):
            if not hasattr(attention, name):
                raise ValueError(f"attention must be a CLIP-style attention module with {name}, got {type(attention).__name__}")
        self.attention = attention
        self.saliency: torch.Tensor | None = None
        self._cls_query: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._handles: list[Any] = []

    def register(self) -> list[Any]:
        return [
            self.attention.q_proj.register_forward_hook(self._on_query),
            self.attention.k_proj.register_forward_hook(self._on_keys),
        ]

    def clear(self) -> None:
        self._cls_query = self._keys = None

    def _on_query(self, module: nn.Module, args: Any, queries: torch.Tensor) -> None:
        self._cls_query = queries[:, 0]  # (M, Dv): only [CLS]'s query matters
        self._maybe_compute()

    def _on_keys(self, module: nn.Module, args: Any, keys: torch.Tensor) -> None:
        self._keys = keys  # (M, S, Dv)
        self._maybe_compute()

    def _maybe_compute(self) -> None:
        # Either projection may run first; compute once both outputs are in.
        if self._cls_query is None or self._keys is None:
            return
        att = self.attention
        M, S, _ = self._keys.shape
        q = self._cls_query.float().view(M, att.num_heads, att.head_dim)  # (M, H, hd)
        k = self._keys.float().view(M, S, att.num_heads, att.head_dim)  # (M, S, H, hd)
        logits = torch.einsum("mhd,mshd->mhs", q, k) * att.scale  # (M, H, S) the [CLS] row per head
        # Softmax over every key, [CLS] included, as the layer does; then drop the [CLS] column.
        self.saliency = logits.softmax(dim=-1)[:, :, 1:].mean(dim=1)  # (M, N)
        self._cls_query = self._keys = None


class _FeatureLayerReached(Exception):
    """Raised by the hook of `StopAfterLayer` to end the vision tower's forward early."""


class StopAfterLayer:
    """Context manager that ends a forward pass right after `layer` and keeps that layer's output.

    The layers above the feature layer feed nothing the adapter uses (LLaVA-1.5 reads layer -2, so
    running the tower to the end computes a whole layer for nothing). The tower runs its own code up to
    the layer; the exception that stops it is caught here.

        with StopAfterLayer(tower.encoder.layers[i]) as stop:
            tower(pixel_values)
        stop.output  # (M, S, Dv), what hidden_states[i + 1] would be
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.output: torch.Tensor | None = None
        self._handle: Any = None

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> None:
        self.output = output[0] if isinstance(output, (tuple, list)) else output
        raise _FeatureLayerReached

    def __enter__(self) -> "StopAfterLayer":
        self.output = None
        self._handle = self.layer.register_forward_hook(self._on_output)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._handle.remove()
        self._handle = None
        return exc_type is _FeatureLayerReached  # the early stop is the expected way out


class PixelTable:
    """An image processor's exact output for frames already at its crop size, as a lookup table.

    For an image of exactly the crop size, a CLIP-style processor (resize the shortest side to the crop
    size, centre crop, rescale, normalise) maps every pixel on its own: channel c of value v always
    becomes the same float. The table holds those 3 x 256 floats, read off the processor's own output
    for a probe image that contains every value in every channel, so the arithmetic is the processor's;
    `from_processor` returns None unless the processor is such a per-pixel map on that probe (the
    adapter then calls the processor itself). Applying the table is one gather per channel instead of
    the processor's per-frame PIL and float64 passes.
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = table  # (3, 256) in the processor's output dtype

    @classmethod
    def from_processor(cls, image_processor: Any, height: int, width: int) -> "PixelTable | None":
        if height * width < 256:
            return None
        probe = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        probe.reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value, every channel
        try:
            out = image_processor(images=[probe], return_tensors="pt")["pixel_values"]
        except Exception:
            return None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 3, height, width) or not out.is_floating_point():
            return None
        index = torch.from_numpy(probe).permute(2, 0, 1).reshape(3, -1).long()  # (3, H*W)
        values = out[0].reshape(3, -1)
        table = torch.zeros(3, 256, dtype=out.dtype).scatter_(1, index, values)
        if not torch.equal(table.gather(1, index), values):  # not a per-pixel map: no table
            return None
        return cls(table.numpy())

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> (T, 3, H, W) pixel values, equal to the processor's."""
        T, H, W, _ = frames.shape
        out = np.empty((T, 3, H, W), dtype=self.table.dtype)
        for c in range(3):
            np.take(self.table[c], frames[..., c], out=out[:, c])
        return torch.from_numpy(out)


def check_pixel_values(pixel_values: object) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be a tensor of shape (M, 3, H, W), got {getattr(pixel_values, 'shape', pixel_values)!r}")


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """Index of the encoder layer whose output is `hidden_states[vision_feature_layer]`.

    hidden_states[0] is the embedding output and hidden_states[i] the output of layer i - 1, so with
    L layers there are L + 1 entries and -2 names layer L - 2 (the penultimate layer).
    """
    position = vision_feature_layer % (num_layers + 1)
    if not -(num_layers + 1) <= vision_feature_layer <= num_layers or position == 0:
        raise ValueError(
            f"vision_feature_layer must name an encoder layer's output (1..{num_layers} or -1..-{num_layers}), "
            f"got {vision_feature_layer}"
        )
    return position - 1


class LlavaAdapter(TokenSelectionAdapter):
    """FlashVLM for `LlavaForConditionalGeneration` (LLaVA-1.5) with a CLIP vision tower."""

    def __init__(self, model: Any, budget: int | None = None, **kwargs: Any) -> None:
        super().__init__(model, budget, **kwargs)
        config = model.config
        if not isinstance(config.vision_feature_layer, int):
            raise ValueError(
                f"model.config.vision_feature_layer must be one int (LLaVA-1.5), got {config.vision_feature_layer!r}"
            )
        if config.vision_feature_select_strategy != "default":
            raise ValueError(
                "model.config.vision_feature_select_strategy must be 'default' ([CLS] dropped), got "
                f"{config.vision_feature_select_strategy!r}"
            )
        tower = model.model.vision_tower
        if not hasattr(tower, "encoder") or not hasattr(tower, "embeddings"):
            raise ValueError(f"model's vision tower must be a CLIP vision model, got {type(tower).__name__}")
        layers = tower.encoder.layers
        self.feature_layer = feature_layer_index(config.vision_feature_layer, len(layers))
        self.feature_block = layers[self.feature_layer]
        self.attention = self.feature_block.self_attn
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        self.token_grid = (side, side)  # an image's patches, raster order: 24 x 24 for LLaVA-1.5
        self.tokens_per_image = side * side  # N: 576 for LLaVA-1.5
        self.image_token_id = config.image_token_id
        self._pixel_tables: dict[tuple[int, int], PixelTable | None] = {}  # per frame size
        self._short_prompts: bool | None = None  # one <image> per frame, expanded: checked on first use

    # ----------------------------------------------------------------------------------------------
    # Vision side
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass of the vision tower and the projector.

        pixel_values: (M, 3, H, W). Returns vision (M, N, Dv) patch features at `vision_feature_layer`
        ([CLS] dropped), projected (M, N, D) their projection (the model's own, computed once) and
        saliency (M, N) float32, the head-averaged [CLS] attention of that layer.
        """
        check_pixel_values(pixel_values)
        tower = self.model.model.vision_tower
        pixel_values = pixel_values.to(device=tower.device, dtype=tower.dtype)
        # The tower runs up to the feature layer only: what get_image_features would compute, without
        # the layers above it (whose outputs LLaVA never reads).
        with ClsAttentionSaliency(self.attention) as hook, StopAfterLayer(self.feature_block) as stop:
            tower(pixel_values)
        if stop.output is None:
            raise RuntimeError("the vision tower never reached its feature layer")
        vision = stop.output[:, 1:]  # (M, N, Dv): hidden_states[vision_feature_layer], [CLS] dropped
        projected = self.model.model.multi_modal_projector(vision)  # (M, N, D), the model's own projection
        if hook.saliency is None:
            raise RuntimeError("the saliency hook did not fire: the vision tower skipped its attention layer")
        return vision, projected, hook.saliency

    # ----------------------------------------------------------------------------------------------
    # Images
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        *,
        guide_text: str | Sequence[str] | None = None,
        return_kept: bool = False,
        **generate_kwargs: Any,
    ) -> Any:
        """`model.generate` with only `budget` visual tokens per image reaching the language model.

        Takes the processor's outputs unchanged (input_ids, attention_mask, pixel_values) plus generate's
        own arguments, and returns what `model.generate` returns: the prompt's ids followed by the new ids.
        guide_text: the question of each prompt (one str per prompt, or one for all), which guides the
        selection when guide="question"; without it every non-image prompt token does. Only guide_text
        needs the processor. return_kept: return `(output, KeptTokens)`, image i's kept indices (ascending,
        into its N patches) at `indices[i]`.
        """
        if "inputs_embeds" in generate_kwargs:
            raise ValueError("inputs_embeds is not supported: pass input_ids and pixel_values from the processor")
        input_ids, attention_mask = check_prompt(input_ids, attention_mask)
        guide = check_guide_text(guide_text, rows=input_ids.shape[0])
        if pixel_values is None:  # nothing to select
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
            return (out, KeptTokens()) if return_kept else out
        check_pixel_values(pixel_values)

        device = self.model.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        M, N = pixel_values.shape[0], self.tokens_per_image
        is_visual = visual_placeholders(input_ids, self.image_token_id, N, M)  # (B, S)
        vision, projected, saliency = self.encode_images(pixel_values)  # (M, N, Dv), (M, N, D), (M, N)
        if self.budget is None or self.budget >= N:  # every image keeps all its tokens
            kept, important = torch.arange(N, device=vision.device).expand(M, N), None
        else:
            text, text_mask = self.guide_embeddings(input_ids, attention_mask, guide, [self.image_token_id])  # (B, L, D)
            row_of_image = torch.repeat_interleave(
                torch.arange(input_ids.shape[0], device=device), is_visual.sum(dim=1) // N
            )  # (M,) the prompt each image sits in, whose text guides it
            kept, important = select(
                self.method, vision, projected, saliency, text[row_of_image], self.budget,
                text_mask=text_mask[row_of_image], return_important=True,
                **self.selector_options(self.method, self.method_options, self.token_grid, video=False),
            )  # (M, K) each

        keep_visual = kept_mask(kept, N).reshape(-1)  # (M * N,) row-major, as placeholders
        rows = projected.gather(1, kept[:, :, None].expand(-1, -1, projected.shape[-1]))  # (M, K, D) kept rows
        pruned = prune_sequences(
            input_ids, attention_mask, is_visual, keep_visual, rows.reshape(-1, rows.shape[-1]),
            self.embed_tokens, self.pad_token_id,
        )
        out = generate_pruned(self.model, input_ids, pruned, **generate_kwargs)
        if not return_kept:
            return out
        flags = [None] * M if important is None else list(important.cpu())
        return out, KeptTokens(indices=list(kept.cpu()), important=flags)

    # ----------------------------------------------------------------------------------------------
    # Video
    # ----------------------------------------------------------------------------------------------

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """(T, 3, H', W') pixel values of uint8 (T, H, W, 3) frames, exactly as the image processor gives them.

        Frames already at the processor's crop size (the pipeline decodes them at that size) go through
        the processor's `PixelTable`; any other size, or a processor that is not a per-pixel map there,
        goes through the processor itself.
        """
        image_processor = self.processor.image_processor
        size = (int(frames.shape[1]), int(frames.shape[2]))
        if size not in self._pixel_tables:
            crop = getattr(image_processor, "crop_size", None)
            crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (getattr(crop, "height", None), getattr(crop, "width", None))
            self._pixel_tables[size] = PixelTable.from_processor(image_processor, *size) if crop == size else None
        table = self._pixel_tables[size]
        if table is None:
            return image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        return table(frames)

    def video_prompts(self, questions: Sequence[str], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (Q, S) input_ids and attention_mask of one LLaVA-1.5 video prompt per question.

        Tokenizing N * T placeholder strings per prompt costs more than everything else in the prompt;
        the prompts are tokenized with one <image> per frame and each image id is then repeated N
        times, which is the processor's own expansion whenever <image> is an atomic token. That is
        checked on the first call against the full expansion; should it ever differ, the full
        expansion is used from then on.
        """
        N = self.tokens_per_image
        image = self.processor.image_token
        if self._short_prompts is not False:
            short = [VIDEO_PROMPT.format(images=image * frames, question=q) for q in questions]
            encoded = self.tokenizer(short, padding=True, padding_side="left", return_tensors="pt")
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            repeats = torch.where(ids == self.image_token_id, N, 1)  # (Q, S0): every row has T images
            input_ids = torch.stack([row.repeat_interleave(r) for row, r in zip(ids, repeats)])
            attention_mask = torch.stack([row.repeat_interleave(r) for row, r in zip(mask, repeats)])
            if self._short_prompts:
                return input_ids, attention_mask
        full = [VIDEO_PROMPT.format(images=image * N * frames, question=q) for q in questions]
        encoded = self.tokenizer(full, padding=True, padding_side="left", return_tensors="pt")
        if self._short_prompts is None:
            self._short_prompts = torch.equal(input_ids, encoded["input_ids"]) and torch.equal(
                attention_mask, encoded["attention_mask"]
            )
        return encoded["input_ids"], encoded["attention_mask"]

    def video_batch(self, frames: np.ndarray, questions: list[str], fps: float | None) -> VideoBatch:
        """The T frames are T images of one LLaVA-1.5 prompt per question; the vision tower runs once for
        the clip, and each question chooses its own `budget * T` visual tokens across it with the adapter's
        method (`flashvlm.selectors.select_video`; flashvlm by default). (fps: unused.)"""
        features = self.encode_video(frames)
        return self.feature_batch(features, self.feature_prompts(questions, features), self.budget, self.method, self.method_options)

    # ----------------------------------------------------------------------------------------------
    # Features computed once per clip, reused across selection settings (the evaluation's sweep)
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray | torch.Tensor, fps: float | None = None) -> VideoFeatures:
        """The clip's vision features, projection and saliency: one vision-tower pass for uint8 (T, H, W, 3).
        (fps: unused, LLaVA's positions do not encode time.)"""
        frames = check_frames(frames)
        vision, projected, saliency = self.encode_images(self.pixel_values(frames))  # (T, N, Dv), (T, N, D), (T, N)
        return VideoFeatures(vision=vision, projected=projected, saliency=saliency, grid=self.token_grid)

    def check_features(self, features: object) -> VideoFeatures:
        features = super().check_features(features)
        if features.tokens_per_frame != self.tokens_per_image:
            raise ValueError(f"features must be this adapter's encode_video(frames) result ({self.tokens_per_image} tokens per frame)")
        return features

    def feature_prompts(self, questions: list[str], features: VideoFeatures) -> Prompts:
        return Prompts(questions, *self.video_prompts(questions, features.frames))

    def feature_batch(self, features: VideoFeatures, prompts: Prompts, budget: int | None, method: str, options: dict | None) -> VideoBatch:
        """Select with `method` at `budget` tokens per frame (None: all) and prune the (Q, S) prompts over one clip."""
        budget = check_budget(budget)
        input_ids, attention_mask, questions = prompts.input_ids, prompts.attention_mask, prompts.questions
        T, N, Q = features.frames, self.tokens_per_image, input_ids.shape[0]
        device = self.model.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        is_visual = visual_placeholders(input_ids, self.image_token_id, N, Q * T)  # (Q, S), T * N per row
        if budget is None or budget >= N:  # every frame keeps all its tokens
            kept, important = torch.arange(T * N, device=features.vision.device).expand(Q, T * N), None  # (Q, T*N)
        else:
            text, text_mask = self.guide_embeddings(
                input_ids, attention_mask, questions if self.guide == "question" else None, [self.image_token_id]
            )  # (Q, L, D)
            kept, important = select_video(
                method,
                features.vision[None].expand(Q, -1, -1, -1),  # (Q, T, N, Dv) views: every question sees the same clip
                features.projected[None].expand(Q, -1, -1, -1),
                features.saliency[None].expand(Q, -1, -1),
                text,
                budget * T,
                text_mask=text_mask,
                return_important=True,
                **self.selector_options(method, options, self.token_grid),
            )  # (Q, K) frame-major ascending into T*N, and (Q, K) important flags
        rows = features.projected.reshape(T * N, -1)[kept.reshape(-1)]  # (Q*K, D) the kept rows, question by question
        keep_visual = kept_mask(kept, T * N).reshape(-1)  # (Q*T*N,)
        pruned = prune_sequences(
            input_ids, attention_mask, is_visual, keep_visual, rows, self.embed_tokens, self.pad_token_id
        )
        return VideoBatch(input_ids, pruned, kept, important, frames=T, tokens_per_frame=N)
