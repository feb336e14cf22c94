"""Short synthetic clips (a coloured square moving over a gradient), for the demo and tests when the
sample clips in ../shared/videos are absent. Written with PyAV's bundled libx264 encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_COLOURS = [(230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 200, 30), (200, 60, 220)]


def make_clip(path: str | Path, *, frames: int = 24, fps: int = 12, width: int = 160, height: int = 120, seed: int = 0) -> Path:
    """Write an H.264 MP4 of `frames` frames; returns its path."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour = np.array(_COLOURS[seed % len(_COLOURS)], dtype=np.uint8)
    background = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    side = max(8, min(width, height) // 4)
    x, y = rng.integers(0, width - side), rng.integers(0, height - side)
    dx, dy = 1 + seed % 3, 1 + (seed + 1) % 3
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = background.copy()
            image[y : y + side, x : x + side] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
            x, y = (x + dx * 3) % (width - side), (y + dy * 2) % (height - side)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clips(folder: str | Path, count: int) -> list[Path]:
    """`count` clips named clip_00.mp4, clip_01.mp4, ... (existing ones are kept)."""
    folder = Path(folder)
    return [p if (p := folder / f"clip_{i:02d}.mp4").exists() else make_clip(p, seed=i) for i in range(count)]
