"""FlashVLM inside LLaVA-1.5 (`LlavaForConditionalGeneration` with a CLIP vision tower).

What is LLaVA-specific, and nothing else:

- saliency: the attention from [CLS] to every patch at the layer LLaVA takes its features from
  (`vision_feature_layer`, -2 for LLaVA-1.5), averaged over heads. `ClsAttentionSaliency` hooks that
  layer's query and key projections and computes the one [CLS] row from their outputs, so the tower
  keeps its fused attention (sdpa) and no attention matrix is ever materialised;
- features: one pass of `get_image_features`, which returns both the chosen layer's patch features
  (Dv) and their projection (D); the kept rows of that one projection are what the language model sees;
- the prompt: every <image> placeholder run of N = 576 tokens is one image; video frames are T images
  in one LLaVA-1.5 prompt.

Shapes: B prompts, S prompt length, M images, T frames, N patches per image (576), Dv the CLIP width,
D the language model's width, H heads, K kept tokens per image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from flashvlm.models.base import (
    TokenSelectionAdapter,
    VideoAnswer,
    check_frames,
    check_guide_text,
    check_max_new_tokens,
    check_prompt,
    check_questions,
    generate_pruned,
    kept_mask,
    prune_sequences,
    split_by_frame,
    video_answers,
    visual_placeholders,
)
from flashvlm.selection import select_tokens

VIDEO_PROMPT = "USER: {images}\n{question} ASSISTANT:"  # LLaVA-1.5 chat format, one <image> per frame


class ClsAttentionSaliency:
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

    def __enter__(self) -> "ClsAttentionSaliency":
        self.saliency = None
        self._handles = [
            self.attention.q_proj.register_forward_hook(self._on_query),
            self.attention.k_proj.register_forward_hook(self._on_keys),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
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
        self.attention = layers[self.feature_layer].self_attn
        vision = config.vision_config
        self.tokens_per_image = (vision.image_size // vision.patch_size) ** 2  # N: 576 for LLaVA-1.5
        self.image_token_id = config.image_token_id

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
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be a tensor of shape (M, 3, H, W), got {getattr(pixel_values, 'shape', pixel_values)!r}")
        tower = self.model.model.vision_tower
        pixel_values = pixel_values.to(device=tower.device, dtype=tower.dtype)
        with ClsAttentionSaliency(self.attention) as hook:
            out = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        vision = out.hidden_states[self.model.config.vision_feature_layer][:, 1:]  # (M, N, Dv)
        projected = torch.stack(list(out.pooler_output))  # (M, N, D), the model's own projection
        if hook.saliency is None:
            raise RuntimeError("the saliency hook did not fire: the vision tower skipped its attention layer")
        return vision, projected, hook.saliency

    def _skip_ids(self) -> list[int]:
        return [self.image_token_id]

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
        **generate_kwargs: Any,
    ) -> Any:
        """`model.generate` with only `budget` visual tokens per image reaching the language model.

        Takes the processor's outputs unchanged (input_ids, attention_mask, pixel_values) plus generate's
        own arguments, and returns what `model.generate` returns: the prompt's ids followed by the new ids.
        guide_text: the question of each prompt (one str per prompt, or one for all), which guides the
        selection when guide="question"; without it every non-image prompt token does.
        Afterwards `last_kept[i]` holds image i's kept indices (ascending, into its N patches).
        """
        if "inputs_embeds" in generate_kwargs:
            raise ValueError("inputs_embeds is not supported: pass input_ids and pixel_values from the processor")
        input_ids, attention_mask = check_prompt(input_ids, attention_mask)
        guide = check_guide_text(guide_text, rows=input_ids.shape[0])
        if pixel_values is None:  # nothing to select
            self.last_kept = []
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

        device = self.model.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        M = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) else 0
        is_visual = visual_placeholders(input_ids, self.image_token_id, self.tokens_per_image, M)  # (B, S)
        vision, projected, saliency = self.encode_images(pixel_values)  # (M, N, Dv), (M, N, D), (M, N)
        kept = self.select(input_ids, attention_mask, is_visual, vision, projected, saliency, guide)  # (M, K)

        self.last_kept = [k.cpu() for k in kept]
        keep_visual = kept_mask(kept, self.tokens_per_image).reshape(-1)  # (M * N,) row-major, as placeholders
        rows = projected.gather(1, kept[:, :, None].expand(-1, -1, projected.shape[-1]))  # (M, K, D) kept rows
        pruned = prune_sequences(
            input_ids, attention_mask, is_visual, keep_visual, rows.reshape(-1, rows.shape[-1]),
            self.embed_tokens, self._pad_token_id(),
        )
        return generate_pruned(self.model, input_ids, pruned, **generate_kwargs)

    def select(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        is_visual: torch.Tensor,
        vision: torch.Tensor,
        projected: torch.Tensor,
        saliency: torch.Tensor,
        guide_text: list[str] | None,
    ) -> torch.Tensor:
        """(M, K) kept indices per image, each image guided by the text of the prompt it sits in."""
        M, N, _ = vision.shape
        if self.budget is None or self.budget >= N:
            return torch.arange(N, device=vision.device).expand(M, N).clone()
        text, text_mask = self.guide_embeddings(input_ids, attention_mask, guide_text, self._skip_ids())  # (B, L, D)
        row_of_image = torch.repeat_interleave(
            torch.arange(input_ids.shape[0], device=input_ids.device), is_visual.sum(dim=1) // N
        )  # (M,) the prompt each image belongs to
        return select_tokens(
            vision, projected, saliency, text[row_of_image], self.budget,
            text_mask=text_mask[row_of_image], config=self.config,
        )

    def _pad_token_id(self) -> int:
        for source in (self.model.generation_config, self.model.config, getattr(self.model.config, "text_config", None)):
            pad = getattr(source, "pad_token_id", None)
            if pad is not None:
                return int(pad)
        return 0  # any id will do: padded positions are masked out

    # ----------------------------------------------------------------------------------------------
    # Video
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def answer_video(
        self, frames: np.ndarray | torch.Tensor, questions: Sequence[str], *, max_new_tokens: int = 32
    ) -> list[VideoAnswer]:
        """Answer every question about one video in one batched generate call.

        frames: uint8 (T, H, W, 3). The T frames are T images of one LLaVA-1.5 prompt per question; the
        vision tower runs once for the clip, and each question chooses its own `budget * T` visual tokens
        across the clip (`flashvlm.select_video_tokens`). Greedy decoding.
        """
        from flashvlm.video import select_video_tokens

        frames = check_frames(frames)
        questions = check_questions(questions)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        T, N, Q = frames.shape[0], self.tokens_per_image, len(questions)

        pixel_values = self.processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        placeholders = self.processor.image_token * N  # the processor's own expansion of one <image>
        prompts = [VIDEO_PROMPT.format(images=placeholders * T, question=q) for q in questions]
        encoded = self.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
        device = self.model.device
        input_ids, attention_mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)  # (Q, S)
        is_visual = visual_placeholders(input_ids, self.image_token_id, N, Q * T)  # (Q, S), T * N per row

        vision, projected, saliency = self.encode_images(pixel_values)  # (T, N, Dv), (T, N, D), (T, N): once
        if self.budget is None or self.budget >= N:  # every frame keeps all its tokens
            kept = torch.arange(T * N, device=vision.device).expand(Q, T * N)  # (Q, T*N)
            important = None
        else:
            text, text_mask = self.guide_embeddings(
                input_ids, attention_mask, questions if self.guide == "question" else None, self._skip_ids()
            )  # (Q, L, D)
            kept, important = select_video_tokens(
                vision[None].expand(Q, -1, -1, -1),  # (Q, T, N, Dv) views: every question sees the same clip
                projected[None].expand(Q, -1, -1, -1),
                saliency[None].expand(Q, -1, -1),
                text,
                budget=self.budget * T,
                text_mask=text_mask,
                config=self.config,
                return_important=True,
                **self.video_options,
            )  # (Q, K) frame-major ascending into T*N, and (Q, K) important flags

        flat_projected = projected.reshape(T * N, -1)  # (T*N, D)
        rows = flat_projected[kept.reshape(-1)]  # (Q*K, D) the kept rows, question by question
        keep_visual = kept_mask(kept, T * N).reshape(-1)  # (Q*T*N,)
        pruned = prune_sequences(
            input_ids, attention_mask, is_visual, keep_visual, rows, self.embed_tokens, self._pad_token_id()
        )
        out = generate_pruned(self.model, input_ids, pruned, max_new_tokens=max_new_tokens, do_sample=False)
        texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)

        per_frame = split_by_frame(kept, T, N)  # Q lists of T LongTensors
        self.last_kept = [k for frames_kept in per_frame for k in frames_kept]  # question-major, frame by frame
        flags = None if important is None else split_by_frame(kept, T, N, important)
        return video_answers(texts, per_frame, T * N, flags)

