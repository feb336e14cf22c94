"""FlashVLM inside Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): images and video, original MRoPE ids.

What is Qwen2.5-VL-specific, and nothing else:

- saliency: the tower has no [CLS], so a token's saliency is the attention it RECEIVES in the last vision
  block, averaged over heads and over the queries of its attention window, then averaged over the 2x2
  merge window that becomes one language-model token. `ReceivedAttentionSaliency` hooks that block's qkv
  projection (whose output the block computes anyway) and scores one window (`cu_seqlens`: one image or
  one video frame for full-attention blocks, a 112 px window otherwise) at a time, chunked, so memory
  stays linear in the number of frames and the tower keeps its own sdpa attention;
- features for diversity: the last block's hidden states, i.e. what the patch merger reads, averaged
  over each 2x2 merge window (Dv = 1280 for the real tower). They are the tower's own (visual) space, as
  the rule asks for diversity, cost nothing extra (the tower returns them) and are 4x narrower than the
  merger's concatenated input. Relevance uses the merged tokens (after the merger, in the language
  model's input space) against the guide text's input embeddings;
- positions: Qwen2.5-VL rotates every token by 3-D (t, h, w) ids. They are computed by the model's own
  `get_rope_index` on the FULL prompt, and the kept tokens take their columns: a kept patch keeps its
  place in space and time, and the text after the vision block keeps its ids, so the rope offset used
  while decoding (last id + 1) is the one of the unpruned prompt;
- placeholders: `<|image_pad|>` (mm type 1) and `<|video_pad|>` (mm type 2); `<|vision_start|>`,
  `<|vision_end|>` and all text are never pruned.

Budgets: for an image, `budget` tokens are kept; for a video, `budget` is the average per frame (temporal
patch of 2 frames), so a clip of t temporal patches keeps `budget * t` tokens. The adapter's `method`
(`flashvlm.selectors.METHODS`, flashvlm by default) picks them: `select` for an image, `select_video` for a
clip, over merged tokens; uniform gets the merged-token grid (h / 2, w / 2) of the image or of each
temporal patch, which need not be square. Whatever the method, kept tokens keep their original ids.

Shapes: B prompts, S prompt length, P vision-tower rows (patches), H vision heads, Dv tower width,
D language-model width, n tokens of one image or clip, T temporal patches, N tokens per temporal patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from flashvlm import selectors
from flashvlm.models.base import (
    KeptTokens,
    Prompts,
    PrunedPrompt,
    SaliencyHooks,
    TokenSelectionAdapter,
    VideoBatch,
    VideoFeatures,
    check_budget,
    check_fps,
    check_frames,
    check_guide_text,
    check_prompt,
    generate_pruned,
    kept_mask,
    left_align,
    prune_sequences,
)
from flashvlm.models.qwen2_5_vl_inputs import Qwen2_5_VLFrameProcessor, patchify_frames, video_prompt

# Qwen's mm_token_type_ids convention.
TEXT, IMAGE, VIDEO = 0, 1, 2

# Attention scores materialised at once while computing saliency (floats): 2**22 is 16 MiB in float32, a
# block that stays in cache better than larger ones (measured: 4 frames x 1024 rows x 16 heads, 2**22 is
# 20% faster than 2**24, and 2**20 no faster).
SALIENCY_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------------------------------
# Saliency: attention received in the last vision block, window by window
# --------------------------------------------------------------------------------------------------


def received_attention(
    query: torch.Tensor, key: torch.Tensor, cu_seqlens: torch.Tensor, scaling: float, chunk_elements: int = SALIENCY_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Attention each token receives inside its window, averaged over heads and queries: (P,) float32.

    query, key: (P, H, hd) after the rotary embedding, in the tower's row order.
    cu_seqlens: (W + 1,) window boundaries (the block's own attention segments).

    a_j = 1 / (H * n) * sum_h sum_{i in window(j)} softmax_k(q_i . k_k * scaling)_j, n = the window's length.
    Windows of the same length are scored together; at most `chunk_elements` scores exist at a time, so
    memory is O(P) plus a constant, whatever the number of frames, and no score crosses a window.
    The softmax is never normalised elementwise: exp(s - max) is summed over queries weighted by each
    query's 1 / Z with one matmul, so the (queries x keys) block is written once and read twice.
    """
    P, H, hd = query.shape
    q = query.float() * scaling  # (P, H, hd) scaled once, not per score
    k = key.float()
    out = torch.zeros(P, dtype=torch.float32, device=query.device)
    starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    for n in torch.unique(lengths).tolist():
        if n == 0:
            continue
        rows = starts[lengths == n].to(query.device)[:, None] + torch.arange(n, device=query.device)  # (W_n, n)
        windows_per_chunk = max(1, chunk_elements // (H * n * n))
        queries_per_chunk = n if windows_per_chunk > 1 else max(1, min(n, chunk_elements // (H * n)))
        for w0 in range(0, rows.shape[0], windows_per_chunk):
            idx = rows[w0 : w0 + windows_per_chunk]  # (w, n)
            kw = k[idx].permute(0, 2, 3, 1)  # (w, H, hd, n)
            received = torch.zeros(idx.shape[0], H, 1, n, dtype=torch.float32, device=query.device)
            for i0 in range(0, n, queries_per_chunk):
                qw = q[idx[:, i0 : i0 + queries_per_chunk]].transpose(1, 2)  # (w, H, c, hd)
                scores = qw @ kw  # (w, H, c, n): each query's row over the window's keys
                scores -= scores.amax(dim=-1, keepdim=True)
                scores.exp_()
                inv_z = scores.sum(dim=-1).reciprocal_()  # (w, H, c) softmax denominators
                received += inv_z[:, :, None, :] @ scores  # (w, H, 1, n): sum over queries of softmax rows
            out[idx.reshape(-1)] = (received.sum(dim=1)[:, 0] / (H * n)).reshape(-1)
    return out


class ReceivedAttentionSaliency(SaliencyHooks):
    """Context manager recording the received attention of one Qwen2.5-VL vision block, per tower row.

        with ReceivedAttentionSaliency(visual.blocks[-1].attn) as probe:
            visual(pixel_values, grid_thw=grid_thw)
        probe.saliency  # (P,) float32, in the tower's (window-permuted) row order

    A pre-hook on the attention module reads the block's `cu_seqlens` and rotary (cos, sin); a hook on its
    qkv projection takes the queries and keys the block has just computed, so nothing of the tower is
    recomputed and its attention implementation (sdpa, flash) is untouched.
    """

    def __init__(self, attention: nn.Module, chunk_elements: int = SALIENCY_CHUNK_ELEMENTS) -> None:
        for name in ("qkv", "num_heads", "scaling"):
            if not hasattr(attention, name):
                raise ValueError(f"attention must be a Qwen2.5-VL vision attention with {name}, got {type(attention).__name__}")
        self.attention = attention
        self.chunk_elements = chunk_elements
        self.saliency: torch.Tensor | None = None
        self._block_kwargs: dict[str, Any] = {}
        self._handles: list[Any] = []

    def register(self) -> list[Any]:
        return [
            self.attention.register_forward_pre_hook(self._on_attention, with_kwargs=True),
            self.attention.qkv.register_forward_hook(self._on_qkv),
        ]

    def clear(self) -> None:
        self._block_kwargs = {}

    def _on_attention(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._block_kwargs = {"cu_seqlens": kwargs["cu_seqlens"], "position_embeddings": kwargs["position_embeddings"]}

    def _on_qkv(self, module: nn.Module, args: tuple, qkv: torch.Tensor) -> None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

        P = qkv.shape[0]
        H = self.attention.num_heads
        query, key, _ = qkv.reshape(P, 3, H, -1).unbind(1)  # (P, H, hd) each, as the block splits them
        cos, sin = self._block_kwargs["position_embeddings"]
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        self.saliency = received_attention(
            query, key, self._block_kwargs["cu_seqlens"], self.attention.scaling, self.chunk_elements
        )


# --------------------------------------------------------------------------------------------------
# Encoded images and clips
# --------------------------------------------------------------------------------------------------


@dataclass
class EncodedVisual:
    """One image or clip after the vision tower, every tensor in the language model's token order.

    merged: (n, D) the merger's output, what the language model reads (n = t * h * w / merge**2).
    features: (n, Dv) last-block hidden states averaged over each merge window (diversity features).
    saliency: (n,) float32 received attention pooled over each merge window, or None when not needed.
    grid: (t, h, w) in patches.
    """

    merged: torch.Tensor
    features: torch.Tensor
    saliency: torch.Tensor | None
    grid: tuple[int, int, int]

    @property
    def frames(self) -> int:
        return self.grid[0]

    def __len__(self) -> int:
        return self.merged.shape[0]


@dataclass
class PreparedPrompt:
    """What generate needs after selection: the pruned prompt and (4, B, S') position ids; and what was kept."""

    pruned: PrunedPrompt
    position_ids: torch.Tensor
    kept: KeptTokens  # images, then videos


def merge_window_order(visual: nn.Module, grid_thw: torch.Tensor) -> torch.Tensor:
    """(P / merge**2,) the tower's window permutation of merge windows, as its forward computes it."""
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size, patch_size=visual.patch_size
    )
    return window_index.to(grid_thw.device)


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class Qwen2_5_VLAdapter(TokenSelectionAdapter):
    """FlashVLM token selection in front of a `Qwen2_5_VLForConditionalGeneration`.

        vlm = flashvlm.wrap(model, budget=64)
        out, kept = vlm.generate(**inputs, guide_text=["What is the man holding?"], max_new_tokens=32, return_kept=True)
        kept.indices  # per image, then per video: kept indices (a clip's are flat, frame-major)

    split / min_per_frame: how a clip's budget is spread over its frames (see `select_video_tokens`).
    method / method_options: the selector (`flashvlm.selectors.METHODS`) and its own options, for images and
    clips alike.
    """

    # The chat prompt ends "<|im_start|>assistant\n": an option's text follows it directly.
    CHOICE_PREFIX = ""

    def __init__(self, model: Any, budget: int | None = None, **kwargs: Any) -> None:
        if not hasattr(model, "model") or not hasattr(model.model, "visual") or not hasattr(model.model, "get_rope_index"):
            raise ValueError(f"model must be a Qwen2_5_VLForConditionalGeneration, got {type(model).__name__}")
        super().__init__(model, budget, **kwargs)

    # -- model facts --------------------------------------------------------------------------------------

    @property
    def visual(self) -> nn.Module:
        return self.model.model.visual

    @property
    def merge_unit(self) -> int:
        return self.visual.spatial_merge_size**2

    def _token_ids(self) -> dict[str, int]:
        c = self.model.config
        return {
            "image": c.image_token_id,
            "video": c.video_token_id,
            "start": c.vision_start_token_id,
            "end": c.vision_end_token_id,
        }

    def frame_processor(self) -> Qwen2_5_VLFrameProcessor:
        """The processor as the torchvision-free frame processor (same tokenizer and image processor)."""
        processor = self.processor
        if isinstance(processor, Qwen2_5_VLFrameProcessor):
            return processor
        return Qwen2_5_VLFrameProcessor(processor.tokenizer, getattr(processor, "image_processor", None))

    # -- vision ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, *, saliency: bool = True) -> list[EncodedVisual]:
        """Run the vision tower once over images (or clips) and split its outputs per item.

        pixel_values: (P, C * 2 * 14 * 14) Qwen's flat patches; grid_thw: (M, 3).
        With saliency=False (nothing will be pruned) the tower runs without the probe.
        """
        grid_thw = grid_thw.to(self.visual.device)
        pixel_values = pixel_values.to(self.visual.device)
        probe = ReceivedAttentionSaliency(self.visual.blocks[-1].attn) if saliency else None
        if probe is not None:
            with probe:
                out = self.model.model.get_image_features(pixel_values, grid_thw)
        else:
            out = self.model.model.get_image_features(pixel_values, grid_thw)
        # get_image_features and get_video_features run the same tower; only the placeholder differs.
        hidden = out.last_hidden_state  # (P, Dv) in the tower's window order
        P, Dv = hidden.shape
        restore = torch.argsort(merge_window_order(self.visual, grid_thw))  # window order -> token order
        features = hidden.view(P // self.merge_unit, self.merge_unit, Dv).mean(dim=1)[restore]  # (P/4, Dv)
        pooled_saliency = None
        if probe is not None:
            pooled_saliency = probe.saliency.view(P // self.merge_unit, self.merge_unit).mean(dim=1)[restore]  # (P/4,)
        sizes = (grid_thw.prod(-1) // self.merge_unit).tolist()
        merged = out.pooler_output  # tuple of (n_i, D), already in token order
        feats = features.split(sizes)
        sal = pooled_saliency.split(sizes) if pooled_saliency is not None else [None] * len(sizes)
        return [
            EncodedVisual(merged=m, features=f, saliency=s, grid=tuple(g))
            for m, f, s, g in zip(merged, feats, sal, grid_thw.tolist())
        ]

    # -- selection ------------------------------------------------------------------------------------------

    @staticmethod
    def _needs_pruning(item: EncodedVisual, is_video: bool, budget: int | None) -> bool:
        if budget is None:
            return False
        return budget * (item.frames if is_video else 1) < len(item)

    def _prunes_any(self, grid_thw: torch.Tensor | None, budget: int | None) -> bool:
        """Whether any image or clip of these grids loses tokens: only then is saliency worth computing.

        An image keeps `budget` of t*h*w/4 tokens (t = 1); a clip `budget * t` of them: the same test,
        budget < h*w/4, tokens per frame.
        """
        if budget is None or grid_thw is None:
            return False
        return bool((budget < grid_thw[:, 1] * grid_thw[:, 2] // self.merge_unit).any())

    def token_grid(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        """(rows, cols) of the merged tokens of one image or temporal patch of patch grid (t, h, w)."""
        m = self.visual.spatial_merge_size
        return grid[1] // m, grid[2] // m

    def select(
        self,
        items: Sequence[EncodedVisual],
        rows: Sequence[int],
        guide: torch.Tensor | None,
        guide_mask: torch.Tensor | None,
        *,
        is_video: bool,
        budget: int | None,
        method: str,
        options: dict[str, Any] | None,
    ) -> KeptTokens:
        """Kept token indices of every item (ascending), items of the same shape selected together.

        rows[i]: the prompt row item i belongs to, whose guide text ranks its tokens. guide (B, L, D) and
        guide_mask (B, L): the guide text of every prompt row (None when no item needs pruning). Images keep
        `budget` tokens each (`flashvlm.selectors.select`); a clip keeps `budget * frames` over its temporal
        patches (`select_video`), by `method` with its `options`. Items that keep every token have no
        important flags.
        """
        kept: list[torch.Tensor | None] = [None] * len(items)
        important: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            if self._needs_pruning(item, is_video, budget):
                groups.setdefault(item.grid, []).append(i)
            else:
                kept[i] = torch.arange(len(item), device=item.merged.device)
        for grid, members in groups.items():
            member_rows = torch.tensor([rows[i] for i in members], device=guide.device)
            text, mask = guide[member_rows], guide_mask[member_rows]  # (G, L, D), (G, L)
            vision = torch.stack([items[i].features for i in members])  # (G, n, Dv)
            projected = torch.stack([items[i].merged for i in members])  # (G, n, D)
            saliency = torch.stack([items[i].saliency for i in members])  # (G, n)
            kwargs = self.selector_options(method, options, self.token_grid(grid), video=is_video)
            if is_video:
                G, T = len(members), grid[0]
                N = vision.shape[1] // T  # merged tokens per temporal patch, raster order
                chosen, flags = selectors.select_video(
                    method,
                    vision.view(G, T, N, -1),
                    projected.view(G, T, N, -1),
                    saliency.view(G, T, N),
                    text,
                    budget * T,
                    text_mask=mask,
                    return_important=True,
                    **kwargs,
                )  # (G, budget * T) flat frame-major, and important flags
            else:
                chosen, flags = selectors.select(
                    method, vision, projected, saliency, text, budget, text_mask=mask, return_important=True, **kwargs
                )  # (G, budget) each
            for j, i in enumerate(members):
                kept[i], important[i] = chosen[j], flags[j]
        return KeptTokens(indices=kept, important=important)  # type: ignore[arg-type]

    # -- the pruned prompt ----------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        images: Sequence[EncodedVisual],
        videos: Sequence[EncodedVisual],
        image_grid_thw: torch.Tensor | None,
        video_grid_thw: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | None,
        guide_text: list[str] | None,
        *,
        budget: int | None,
        method: str,
        options: dict[str, Any] | None,
    ) -> PreparedPrompt:
        """Select (`budget`, `method`, `options`: see `select`) and prune: the language model's pruned
        prompt, its position ids, and what was kept.

        position_ids is (4, B, S'): row 0 the plain 1-D index of each kept token in its pruned row (what
        generate builds for Qwen2.5-VL, used for the attention mask), rows 1-3 the ORIGINAL (t, h, w)
        MRoPE ids of the kept tokens, taken from `get_rope_index` on the full prompt.
        """
        inner = self.model.model
        inner.rope_deltas = None  # never reuse the offset of a previous call
        ids = self._token_ids()
        is_image = input_ids == ids["image"]  # (B, S)
        is_video = input_ids == ids["video"]  # (B, S)
        image_rows = _item_rows(is_image, [len(x) for x in images], "image")
        video_rows = _item_rows(is_video, [len(x) for x in videos], "video")

        # Full-prompt 3-D positions: (3, B, S); padding columns are 0.
        positions, _ = inner.get_rope_index(
            input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            attention_mask=attention_mask,
        )

        guide = guide_mask = None
        if any(self._needs_pruning(x, False, budget) for x in images) or any(self._needs_pruning(x, True, budget) for x in videos):
            guide, guide_mask = self.guide_embeddings(
                input_ids, attention_mask, guide_text, skip_ids=list(ids.values())
            )  # (B, L, D), (B, L)
        setting = dict(budget=budget, method=method, options=options)
        kept_images = self.select(images, image_rows, guide, guide_mask, is_video=False, **setting)
        kept_videos = self.select(videos, video_rows, guide, guide_mask, is_video=True, **setting)

        # Which visual placeholders survive, and their rows, in the row-major order the model fills them.
        is_visual = is_image | is_video  # (B, S)
        image_in_visual = is_image[is_visual]  # (V,) which visual slots are image slots
        keep_visual = torch.zeros(int(is_visual.sum()), dtype=torch.bool, device=input_ids.device)  # (V,)
        embed_dtype = self.embed_tokens.weight.dtype
        D = self.embed_tokens.weight.shape[1]
        visual_rows = torch.zeros(keep_visual.shape[0], D, dtype=embed_dtype, device=input_ids.device)  # (V, D)
        for slots, items, kept in ((image_in_visual, images, kept_images), (~image_in_visual, videos, kept_videos)):
            if not items:
                continue
            keep_items = torch.cat([kept_mask(k[None], len(x))[0] for k, x in zip(kept.indices, items)])
            keep_visual[slots] = keep_items.to(keep_visual.device)
            visual_rows[slots] = torch.cat([x.merged for x in items]).to(visual_rows.device, embed_dtype)
        pruned = prune_sequences(
            input_ids, attention_mask, is_visual, keep_visual, visual_rows[keep_visual], self.embed_tokens, self.pad_token_id
        )

        # Kept columns of the original 3-D ids, and generate's 1-D row on the pruned sequence.
        mrope = left_align(positions.permute(1, 2, 0), pruned.keep, fill=0).permute(2, 0, 1)  # (3, B, S')
        mask = pruned.attention_mask.to(mrope.device)
        text_row = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, S')
        position_ids = torch.cat([text_row[None], mrope], dim=0)  # (4, B, S')
        # The offset a later cached forward without position_ids would add: last id + 1 - kept length,
        # the same rule as get_rope_index, now on the pruned row.
        inner.rope_deltas = (mrope.amax(dim=(0, 2)) + 1 - mask.sum(-1))[:, None]  # (B, 1)
        kept = KeptTokens(
            indices=[k.cpu() for k in (*kept_images.indices, *kept_videos.indices)],
            important=[None if f is None else f.cpu() for f in (*kept_images.important, *kept_videos.important)],
        )
        return PreparedPrompt(pruned=pruned, position_ids=position_ids, kept=kept)

    # -- public API -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        guide_text: str | Sequence[str] | None = None,
        return_kept: bool = False,
        **generate_kwargs: Any,
    ) -> Any:
        """`model.generate` on the processor's outputs, the language model seeing only the kept visual tokens.

        Returns what `model.generate(**inputs)` returns: the ORIGINAL prompt ids followed by the new tokens.
        guide_text: one question per prompt (or one for all); None guides by the prompt's text tokens. Only
        guide_text needs the processor. return_kept: return `(output, KeptTokens)`, images first, then videos.
        """
        input_ids, attention_mask = check_prompt(input_ids, attention_mask)
        device = self.embed_tokens.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        guide_text = check_guide_text(guide_text, input_ids.shape[0])
        if (pixel_values is None) != (image_grid_thw is None) or (pixel_values_videos is None) != (video_grid_thw is None):
            raise ValueError("pixel_values needs image_grid_thw and pixel_values_videos needs video_grid_thw")
        if mm_token_type_ids is None:  # the model would silently fall back to 1-D positions without them
            mm_token_type_ids = self._mm_token_types(input_ids)
        if second_per_grid_ts is not None and not isinstance(second_per_grid_ts, torch.Tensor):
            second_per_grid_ts = torch.tensor(list(second_per_grid_ts), dtype=torch.float32)
        images = videos = []
        if pixel_values is not None:
            images = self.encode(pixel_values, image_grid_thw, saliency=self._prunes_any(image_grid_thw, self.budget))
        if pixel_values_videos is not None:
            videos = self.encode(pixel_values_videos, video_grid_thw, saliency=self._prunes_any(video_grid_thw, self.budget))
        prepared = self.prepare(
            input_ids,
            attention_mask,
            mm_token_type_ids.to(device),
            images,
            videos,
            None if image_grid_thw is None else image_grid_thw.to(device),
            None if video_grid_thw is None else video_grid_thw.to(device),
            second_per_grid_ts,
            guide_text,
            budget=self.budget,
            method=self.method,
            options=self.method_options,
        )
        out = generate_pruned(self.model, input_ids, prepared.pruned, position_ids=prepared.position_ids, **generate_kwargs)
        return (out, prepared.kept) if return_kept else out

    def _mm_token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = self._token_ids()
        mm = torch.zeros_like(input_ids, dtype=torch.int32)
        mm[input_ids == ids["image"]] = IMAGE
        mm[input_ids == ids["video"]] = VIDEO
        return mm

    # -- video: the clip's features once, then any selection setting --------------------------------------

    def _clip_features(self, frames: Any, fps: float | None, *, saliency: bool | None) -> VideoFeatures:
        """One vision-tower pass over checked uint8 (T, H, W, 3) frames. saliency: compute it (True), or
        only when the adapter's budget prunes this clip (None; features for that budget alone)."""
        processor = self.frame_processor()
        fps = processor.fps if fps is None else fps
        pixel_values, grid = patchify_frames(
            frames, processor.geometry, min_pixels=processor.min_pixels, max_pixels=processor.max_pixels
        )  # (P, C*2*14*14), (3,)
        if saliency is None:
            saliency = self._prunes_any(grid[None], self.budget)
        clip = self.encode(pixel_values, grid[None], saliency=saliency)[0]
        T = clip.frames
        N = len(clip) // T  # merged tokens per temporal patch
        return VideoFeatures(
            vision=clip.features.view(T, N, -1),  # (T, N, Dv)
            projected=clip.merged.view(T, N, -1),  # (T, N, D)
            saliency=None if clip.saliency is None else clip.saliency.view(T, N),  # (T, N)
            grid=self.token_grid(clip.grid),
            seconds_per_frame=processor.geometry.temporal_patch_size / fps,  # one temporal patch
        )

    @torch.no_grad()
    def encode_video(self, frames: Any, fps: float | None = None) -> VideoFeatures:
        """The clip's vision side for every later selection setting: uint8 (T, H, W, 3) frames sampled at
        `fps` (None: the processor's default, 2) -> VideoFeatures of its t = ceil(T / 2) temporal patches
        (its "frames"), each N = h * w / 4 merged tokens on the (h / 2, w / 2) grid, saliency included."""
        return self._clip_features(check_frames(frames), check_fps(fps), saliency=True)

    def video_batch(self, frames: Any, questions: list[str], fps: float | None) -> VideoBatch:
        """The clip goes through the vision tower ONCE; each question then selects its own `budget * t` tokens
        (t = ceil(T / 2) temporal patches) from the shared features. A "frame" of the answer is a temporal patch."""
        features = self._clip_features(frames, fps, saliency=None)
        return self.feature_batch(features, self.feature_prompts(questions, features), self.budget, self.method, self.method_options)

    def check_features(self, features: object) -> VideoFeatures:
        features = super().check_features(features)
        if features.seconds_per_frame is None:
            raise ValueError("features must be this adapter's encode_video(frames) result (they have no seconds_per_frame)")
        return features

    def feature_prompts(self, questions: list[str], features: VideoFeatures) -> Prompts:
        n = features.frames * features.tokens_per_frame
        text = self.frame_processor().tokenize_prompts([video_prompt(q) for q in questions], image_counts=[], video_counts=[n] * len(questions))
        return Prompts(questions, text["input_ids"], text["attention_mask"])

    @torch.no_grad()
    def feature_batch(self, features: VideoFeatures, prompts: Prompts, budget: int | None, method: str, options: dict | None) -> VideoBatch:
        """Select with `method` at `budget` tokens per temporal patch (None: all) and prune the (Q, S) prompts
        over one clip; the kept tokens keep the MRoPE ids of the full prompt (`prepare`)."""
        budget = check_budget(budget)
        T, N = features.frames, features.tokens_per_frame
        rows, cols = features.grid
        m = self.visual.spatial_merge_size
        clip = EncodedVisual(
            merged=features.projected.reshape(T * N, -1),
            features=features.vision.reshape(T * N, -1),
            saliency=None if features.saliency is None else features.saliency.reshape(T * N),
            grid=(T, rows * m, cols * m),
        )
        Q = prompts.input_ids.shape[0]
        device = self.embed_tokens.weight.device
        input_ids = prompts.input_ids.to(device)
        prepared = self.prepare(
            input_ids,
            prompts.attention_mask.to(device),
            self._mm_token_types(input_ids),
            [],
            [clip] * Q,  # the same features for every question: no second pass through the tower
            None,
            torch.tensor([clip.grid] * Q, device=device),  # (Q, 3)
            torch.full((Q,), float(features.seconds_per_frame)),
            prompts.questions if self.guide == "question" else None,
            budget=budget,
            method=method,
            options=options,
        )
        kept = torch.stack(prepared.kept.indices)  # (Q, K) flat frame-major
        flags = prepared.kept.important  # every question's clip is pruned alike: all None or none
        important = None if flags[0] is None else torch.stack(flags)  # (Q, K)
        return VideoBatch(
            input_ids, prepared.pruned, kept, important, frames=T, tokens_per_frame=N,
            generate_kwargs={"position_ids": prepared.position_ids},
        )


def _item_rows(placeholders: torch.Tensor, sizes: Sequence[int], kind: str) -> list[int]:
    """Prompt row of every item, from its placeholders (filled row-major, item by item); checks the counts."""
    total = int(placeholders.sum())
    if total != sum(sizes):
        raise ValueError(
            f"input_ids holds {total} {kind} placeholder tokens but the {kind}s given have {sum(sizes)} tokens "
            f"(per {kind}: {list(sizes)}); build the prompt with the model's processor"
        )
    if not sizes:
        return []
    row_of_slot = placeholders.nonzero()[:, 0]  # (total,) row-major
    starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    rows = row_of_slot[starts.to(row_of_slot.device)]
    ends = row_of_slot[(starts + torch.tensor(list(sizes)) - 1).to(row_of_slot.device)]
    if bool((rows != ends).any()):
        raise ValueError(f"a {kind}'s placeholder tokens span two prompts; the {kind} grids do not match input_ids")
    return rows.tolist()
