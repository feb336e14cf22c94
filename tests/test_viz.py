"""Kept-token pictures: size, and brightness of kept against pruned tokens where the indices say."""

import numpy as np
from PIL import Image

from flashvlm.viz import CAPTION_HEIGHT, PRUNED_BRIGHTNESS, draw_kept, main, token_grid
from tiny_models import LLAVA_PATH


def cell_mean(image: np.ndarray, frame: int, index: int, grid, size: int, columns: int) -> float:
    """Mean brightness inside one token cell (1 px margin skips its outline)."""
    rows, cols = grid
    r, c = divmod(index, cols)
    cell = size // cols
    top = CAPTION_HEIGHT + (frame // columns) * size + r * cell
    left = (frame % columns) * size + c * cell
    return float(image[top + 1 : top + cell - 1, left + 1 : left + cell - 1].mean())


def test_token_grid():
    assert token_grid(576, 336, 336) == (24, 24)
    assert token_grid(16 * 24, 448, 672) == (16, 24)


def test_kept_tokens_are_bright_and_pruned_ones_dimmed():
    frames = np.full((2, 336, 336, 3), 200, dtype=np.uint8)
    kept = [[0, 5, 100], [575]]
    image = np.asarray(draw_kept(frames, kept, [[True, False, True], [False]], grid=(24, 24), caption="x"))
    assert image.shape == (CAPTION_HEIGHT + 336, 2 * 336, 3)
    assert cell_mean(image, 0, 5, (24, 24), 336, 2) == 200
    assert cell_mean(image, 1, 575, (24, 24), 336, 2) == 200
    assert cell_mean(image, 0, 6, (24, 24), 336, 2) == int(200 * PRUNED_BRIGHTNESS)
    assert cell_mean(image, 1, 0, (24, 24), 336, 2) == int(200 * PRUNED_BRIGHTNESS)


def test_cli_draws_a_real_clip(shared_videos, flashvlm_cache, tmp_path):
    out = tmp_path / "kept.png"
    main([str(shared_videos / "chaplin.mp4"), "--question", "What is the man holding?", "--frames", "4",
          "--budget", "32", "--model", LLAVA_PATH, "--out", str(out)])
    image = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    assert image.shape == (CAPTION_HEIGHT + 336, 4 * 336, 3)

    # Recompute the same answer to know which tokens were kept, then compare brightness per cell.
    import flashvlm
    from flashvlm.decode import Sampling, decode_file

    frames, _ = decode_file(shared_videos / "chaplin.mp4", Sampling(frames=4, size=336))
    vlm = flashvlm.wrap(flashvlm.load(LLAVA_PATH)[0], budget=32)
    answer = vlm.answer_video(frames, ["What is the man holding?"], max_new_tokens=1)[0]
    assert answer.tokens_kept == 4 * 32 and answer.tokens_total == 4 * 576
    for t, kept in enumerate(answer.kept):
        pruned = sorted(set(range(576)) - set(kept))
        original = frames[t].astype(np.float64)
        for index in kept[:8]:
            r, c = divmod(index, 24)
            assert cell_mean(image, t, index, (24, 24), 336, 4) == np.mean(original[r * 14 + 1 : r * 14 + 13, c * 14 + 1 : c * 14 + 13])
        for index in pruned[:8]:
            r, c = divmod(index, 24)
            expected = np.mean((original[r * 14 + 1 : r * 14 + 13, c * 14 + 1 : c * 14 + 13] * PRUNED_BRIGHTNESS).astype(np.uint8))
            assert abs(cell_mean(image, t, index, (24, 24), 336, 4) - expected) < 1e-9


def test_cli_draws_one_time_segment(shared_videos, flashvlm_cache, tmp_path):
    import pytest

    from flashvlm.decode import Sampling, decode_file, decode_range

    video, out = shared_videos / "chaplin.mp4", tmp_path / "segment.png"
    with pytest.raises(SystemExit):  # --start without --end
        main([str(video), "--question", "Q?", "--start", "1", "--model", LLAVA_PATH, "--out", str(out)])
    main([str(video), "--question", "What is the man holding?", "--frames", "2", "--budget", "576",
          "--start", "1", "--end", "3", "--model", LLAVA_PATH, "--out", str(out)])
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)[CAPTION_HEIGHT:].reshape(336, 2, 336, 3)
    with open(video, "rb") as f:
        segment, _ = decode_range(f, 1.0, 3.0, Sampling(frames=2, size=336))
    whole, _ = decode_file(video, Sampling(frames=2, size=336))
    inside = (np.arange(336) % 14 > 0) & (np.arange(336) % 14 < 13)  # every 14 px token cell, its outline left out
    cells = np.ix_(inside, inside)
    for t in range(2):  # nothing pruned at 576 a frame: each frame is the segment's, not the whole video's
        here = np.abs(drawn[:, t][cells] - segment[t][cells]).mean()
        assert here < 1.0 < np.abs(drawn[:, t][cells] - whole[t][cells]).mean()
