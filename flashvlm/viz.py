"""Pictures of what FlashVLM kept: sampled frames with kept tokens bright, pruned tokens dimmed.

    python -m flashvlm.viz VIDEO --question "What is the man holding?" [--model NAME_OR_PATH]
                           [--budget 64] [--frames 8] [--start S --end S] [--out kept.png]

--start / --end draw one time segment of a long video (its frames sampled as the pipeline samples a segment).

Important tokens are outlined in orange, diverse (background) tokens in cyan. `draw_kept` is the pure
drawing function; `draw_answer` draws a `VideoAnswer` (or anything with its kept, important, tokens_kept
and tokens_total, such as a row of the pipeline's answers table) over the frames it was computed on.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMPORTANT_COLOUR = (255, 140, 0)
DIVERSE_COLOUR = (0, 200, 255)
PRUNED_BRIGHTNESS = 0.3  # pruned tokens keep 30% of their brightness
COLUMNS = 4
CAPTION_HEIGHT = 44


def token_grid(tokens_per_frame: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of the token grid of a frame, from its token count and the frame's aspect ratio."""
    rows = max(1, round(math.sqrt(tokens_per_frame * height / width)))
    while tokens_per_frame % rows:
        rows -= 1
    return rows, tokens_per_frame // rows


def draw_frame(
    frame: np.ndarray, kept: Sequence[int], important: Sequence[bool] | None, grid: tuple[int, int]
) -> Image.Image:
    """One frame (H, W, 3) uint8 with its kept tokens, given as indices into its row-major token grid."""
    rows, cols = grid
    H, W, _ = frame.shape
    # Token cell edges in pixels: the grid covers the whole frame (frames are at model input size).
    ys = np.linspace(0, H, rows + 1).round().astype(int)
    xs = np.linspace(0, W, cols + 1).round().astype(int)
    mask = np.zeros((rows, cols), dtype=bool)
    kept = np.asarray(kept, dtype=np.int64)
    mask.flat[kept] = True
    # Upsample the token mask to pixels: cell (r, c) covers ys[r]:ys[r+1], xs[c]:xs[c+1].
    row_of_pixel = np.searchsorted(ys, np.arange(H), side="right") - 1
    col_of_pixel = np.searchsorted(xs, np.arange(W), side="right") - 1
    pixel_kept = mask[row_of_pixel][:, col_of_pixel]  # (H, W)
    shaded = np.where(pixel_kept[:, :, None], frame, (frame * PRUNED_BRIGHTNESS).astype(np.uint8))
    image = Image.fromarray(shaded)
    draw = ImageDraw.Draw(image)
    flags = np.ones(len(kept), dtype=bool) if important is None else np.asarray(important, dtype=bool)
    for index, is_important in zip(kept.tolist(), flags.tolist()):
        r, c = divmod(index, cols)
        colour = IMPORTANT_COLOUR if is_important else DIVERSE_COLOUR
        draw.rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], outline=colour)
    return image


def draw_kept(
    frames: np.ndarray,
    kept: Sequence[Sequence[int]],
    important: Sequence[Sequence[bool]] | None = None,
    *,
    grid: tuple[int, int] | None = None,
    caption: str = "",
) -> Image.Image:
    """A grid of frames (T, H, W, 3) uint8 with each frame's kept token indices highlighted.

    `kept` has one list per token frame. When a model groups frames (Qwen2.5-VL merges 2 frames into one
    temporal patch), pass one list per group: each list is drawn on every frame of its group.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    if not kept or T % len(kept):
        raise ValueError(f"kept has {len(kept)} token frames, which does not divide the {T} frames")
    per_group = T // len(kept)
    if grid is None:
        raise ValueError("grid (rows, cols) of tokens per frame is required")
    tiles = []
    for t in range(T):
        g = t // per_group
        tiles.append(draw_frame(frames[t], kept[g], None if important is None else important[g], grid))

    columns = min(COLUMNS, T)
    lines = math.ceil(T / columns)
    canvas = Image.new("RGB", (columns * W, CAPTION_HEIGHT + lines * H), (0, 0, 0))
    for t, tile in enumerate(tiles):
        canvas.paste(tile, ((t % columns) * W, CAPTION_HEIGHT + (t // columns) * H))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((6, 4), caption, fill=(255, 255, 255), font=font)
    draw.text((6, 24), "orange: important   cyan: diverse   dimmed: pruned", fill=(180, 180, 180), font=font)
    return canvas


def draw_answer(frames: np.ndarray, answer, *, question: str = "", budget: int | None = None) -> Image.Image:
    """Draw a `VideoAnswer` (or an answers-table row's kept lists) over the frames it was computed on."""
    kept = answer.kept
    important = getattr(answer, "important", None)
    tokens_per_token_frame = answer.tokens_total // len(kept)
    grid = token_grid(tokens_per_token_frame, frames.shape[1], frames.shape[2])
    caption = (
        f"budget {budget if budget is not None else 'all'}/frame   kept {answer.tokens_kept}/{answer.tokens_total}"
        f"   Q: {question}"
    )
    return draw_kept(frames, kept, important, grid=grid, caption=caption)


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    import flashvlm
    from flashvlm.decode import Sampling, decode_file, decode_range

    parser = argparse.ArgumentParser(prog="python -m flashvlm.viz", description=__doc__.split("\n")[0])
    parser.add_argument("video", help="a local video file")
    parser.add_argument("--question", required=True)
    parser.add_argument("--model", default="flashvlm-tiny/shapes", help="hub id, local path or registered name (default: the shapes model)")
    parser.add_argument("--budget", type=int, default=64, help="visual tokens kept per frame")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=336, help="frame size the model reads")
    parser.add_argument("--start", type=float, default=None, help="a segment's start, seconds (with --end)")
    parser.add_argument("--end", type=float, default=None, help="a segment's end, seconds")
    parser.add_argument("--out", default="kept.png")
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("--start and --end go together")

    sampling = Sampling(frames=args.frames, size=args.size)
    if args.start is None:
        frames, _ = decode_file(args.video, sampling)
    else:
        with open(args.video, "rb") as f:
            frames, _ = decode_range(f, args.start, args.end, sampling)
    model, processor = flashvlm.load(args.model)
    vlm = flashvlm.wrap(model, budget=args.budget)
    answer = vlm.answer_video(frames, [args.question], max_new_tokens=1)[0]
    when = "" if args.start is None else f"{args.start:g}-{args.end:g} s   "
    draw_answer(frames, answer, question=when + args.question, budget=args.budget).save(args.out)
    print(f"wrote {args.out}: kept {answer.tokens_kept}/{answer.tokens_total} tokens over {len(frames)} frames")


if __name__ == "__main__":
    main()
