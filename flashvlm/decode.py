"""Decoding a video: bytes or a local file in, a uniform sample of frames at the model's input size out.

    from flashvlm.decode import Sampling, decode_file
    frames, meta = decode_file("clip.mp4", Sampling(frames=8, size=336))   # (8, 336, 336, 3) uint8

decord first (fast seeking); when it fails on a file (no duration in the header, unusual pixel formats,
some WebM), PyAV decodes it instead; only when both fail is it a DecodeError that gives both reasons.
Frames are resized here to the model's square input size, so full-resolution frames never travel further.
Rotation metadata is applied (decord does it itself; PyAV frames are rotated here), so frames are upright
as a player shows them. Reading from object storage, timeouts and error rows are the pipeline's
(pipeline/decode.py).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import numpy as np

_MAX_ERROR_CHARS = 2000
RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class Sampling:
    """Which frames, at what size: `frames` at the centres of equal segments (at most duration * fps with
    `fps`), resized to size x size by `resize` ("crop": shortest side to size, centre crop; "squash")."""

    frames: int = 8
    fps: Optional[float] = None
    size: int = 336
    resize: str = "crop"
    threads: int = 0  # decoder threads; 0: the decoder's choice (every core)

    def __post_init__(self) -> None:
        for name in ("frames", "size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {self.fps!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {self.threads!r}")


class DecodeError(RuntimeError):
    """Neither decord nor PyAV could decode the video; the message holds both reasons."""


def sample_count(frames: int, fps: Optional[float] = None, duration_s: Optional[float] = None) -> int:
    """How many frames a clip (or segment) of duration_s yields: `frames`, at most duration * fps with fps."""
    if fps and duration_s:
        return max(1, min(frames, int(duration_s * fps)))
    return frames


def sample_indices(num_frames: int, frames: int, fps: Optional[float] = None, duration_s: Optional[float] = None) -> np.ndarray:
    """Indices of `frames` frames at the centres of equal segments (fewer with `fps`: duration * fps).

    Short videos repeat frames, so a clip always yields the configured count (models expect it).
    """
    if num_frames < 1:
        raise DecodeError("the video has no frames")
    count = sample_count(frames, fps, duration_s)
    idx = ((np.arange(count) + 0.5) * num_frames / count).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def resize_frames(frames: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3); crop: shortest side to size then centre crop."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")

    out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame)
        if mode == "squash":
            img = img.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
        else:
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        out[i] = np.asarray(img)
    return out


def _rotate(frames: np.ndarray, rotation: float) -> np.ndarray:
    """Apply display-matrix rotation (degrees counter-clockwise, FFmpeg's convention)."""
    k = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _clean(message: str) -> str:
    """Drop decord's '[hh:mm:ss] /path/file.cc:123: ' prefixes so the reason reads first."""
    message = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(message))
    return " ".join(message.split())[:_MAX_ERROR_CHARS]


def _decode_decord(data: bytes, s: Sampling) -> tuple[np.ndarray, dict]:
    from decord import VideoReader, cpu

    reader = VideoReader(io.BytesIO(data), ctx=cpu(0), num_threads=s.threads)
    n = len(reader)
    fps = float(reader.get_avg_fps() or 0) or None
    duration = n / fps if fps else None
    idx = sample_indices(n, s.frames, s.fps, duration)
    frames = reader.get_batch(idx.tolist()).asnumpy()
    del reader  # decord applies rotation metadata itself (checked on video_90.mov against PyAV)
    return frames, {"frame_indices": idx, "num_frames": n, "duration_s": duration, "fps": fps, "backend": "decord"}


def _decode_pyav(data: bytes, s: Sampling) -> tuple[np.ndarray, dict]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        n = stream.frames
        if not n:  # no count in the header (e.g. some WebM): count packets, which needs no decoding
            n = sum(1 for packet in container.demux(stream) if packet.size)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        if container.duration:
            duration = container.duration / 1e6
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = n / fps if fps else None
    idx = sample_indices(n, s.frames, s.fps, duration)
    wanted, last = set(idx.tolist()), int(idx.max())
    picked: dict[int, np.ndarray] = {}
    rotation, decoded, previous = 0.0, 0, None
    with av.open(io.BytesIO(data)) as container:  # reopened: seeking back is unreliable without an index
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if s.threads:
            stream.thread_count = s.threads
        for i, frame in enumerate(container.decode(stream)):
            decoded, previous = i + 1, frame
            if i in wanted:
                picked[i] = frame.to_ndarray(format="rgb24")
                rotation = float(frame.rotation or 0)
            if i >= last:
                break
    if not decoded:
        raise DecodeError("no frame could be decoded")
    if len(picked) < len(wanted):  # the stream was shorter than its packet count: reuse the last frame
        fallback = picked[max(picked)] if picked else previous.to_ndarray(format="rgb24")
        picked = {i: picked.get(i, fallback) for i in wanted}
    frames = _rotate(np.stack([picked[i] for i in idx.tolist()]), rotation)
    return frames, {"frame_indices": idx, "num_frames": n, "duration_s": duration, "fps": fps, "backend": "pyav"}


def decode_bytes(data: bytes, sampling: Sampling) -> tuple[np.ndarray, dict]:
    """Decode and resize; (frames (T, size, size, 3) uint8, metadata). Raises DecodeError."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        frames, meta = _decode_decord(data, sampling)
    except Exception as decord_error:
        try:
            frames, meta = _decode_pyav(data, sampling)
        except Exception as pyav_error:
            raise DecodeError(
                f"decord: {type(decord_error).__name__}: {_clean(decord_error)}; "
                f"pyav: {type(pyav_error).__name__}: {_clean(pyav_error)}"
            ) from None
    meta["height"], meta["width"] = int(frames.shape[1]), int(frames.shape[2])
    return resize_frames(frames, sampling.size, sampling.resize), meta


# --------------------------------------------------------------------------------------------------
# Time ranges of a file object (long videos): PyAV seeks, so only the range's bytes are read
# --------------------------------------------------------------------------------------------------


def _open_stream(file: BinaryIO, threads: int = 0):
    """(container, its first video stream) over a file object; decoding errors raise instead of being
    concealed (err_detect explode), so a damaged range fails instead of yielding grey frames."""
    import av

    container = av.open(file, mode="r")
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if threads:
        stream.thread_count = threads
    stream.codec_context.options = {"err_detect": "explode"}
    return container, stream


def _stream_info(container, stream) -> dict:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1e6
    else:
        duration = stream.frames / fps if stream.frames and fps else None
    start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
    return {"duration_s": duration, "fps": fps, "num_frames": int(stream.frames or 0), "start_offset_s": start,
            "width": stream.codec_context.width, "height": stream.codec_context.height}


def probe(file: BinaryIO) -> dict:
    """Container metadata of a video file object without decoding a frame: duration_s, fps, num_frames,
    width, height (coded, before rotation) and start_offset_s (the first timestamp). MP4 reads only its index."""
    container, stream = _open_stream(file)
    with container:
        info = _stream_info(container, stream)
    if not info["duration_s"]:
        raise DecodeError("the container gives no duration")
    return info


def sample_times(start_s: float, end_s: float, frames: int, fps: Optional[float] = None) -> np.ndarray:
    """(T,) instants at the centres of equal parts of [start_s, end_s): the time-range form of sample_indices."""
    if not end_s > start_s:
        raise ValueError(f"end_s must be > start_s, got [{start_s}, {end_s})")
    count = sample_count(frames, fps, end_s - start_s)
    return start_s + (np.arange(count) + 0.5) * (end_s - start_s) / count


def decode_range(file: BinaryIO, start_s: float, end_s: float, sampling: Sampling) -> tuple[np.ndarray, dict]:
    """The sampled frames of [start_s, end_s) (seconds from the video's start) of a video file object.

    PyAV seeks to the keyframe at or before start_s and decodes forward until the last instant of
    sample_times, so only that stretch of the file is read (plus the container's index). The frame
    taken for an instant is the one on screen then (the last with a timestamp <= it). Raises DecodeError
    when the range holds no decodable frame or the stream is damaged inside it.
    """
    times = sample_times(start_s, end_s, sampling.frames, sampling.fps)
    picked: list[np.ndarray] = []
    rotation = 0.0
    try:
        container, stream = _open_stream(file, sampling.threads)
        with container:
            info = _stream_info(container, stream)
            base = info["start_offset_s"]
            container.seek(int((start_s + base) / stream.time_base), stream=stream, backward=True)
            step = 1.0 / info["fps"] if info["fps"] else 0.0  # how long a frame stays on screen
            shown = None

            def take(frame) -> None:
                nonlocal rotation
                picked.append(frame.to_ndarray(format="rgb24"))
                rotation = float(frame.rotation or 0)

            try:
                for frame in container.decode(stream):
                    t = (frame.time if frame.time is not None else 0.0) - base
                    while len(picked) < len(times) and t > times[len(picked)] and shown is not None:
                        take(shown)  # the instant fell before this frame: the one before was on screen
                    while len(picked) < len(times) and t <= times[len(picked)] < t + step:
                        take(frame)  # on screen at the instant: no need to decode further
                    if len(picked) == len(times):
                        break
                    shown = frame
                else:  # the stream ended first: its last frame stays on screen (if it lies in the range)
                    if shown is not None and shown.time is not None and shown.time - base < end_s:
                        while len(picked) < len(times):
                            take(shown)
            except Exception:
                if len(picked) < len(times):  # damage the decoder met after the range (threads read ahead) is not ours
                    raise
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"pyav: {type(exc).__name__}: {_clean(exc)}") from None
    if len(picked) < len(times):
        raise DecodeError(f"no decodable frame in [{start_s:g}, {end_s:g}) s")
    frames = _rotate(np.stack(picked), rotation)
    meta = {**info, "times": times, "frame_indices": np.rint(times * (info["fps"] or 0)).astype(np.int64),
            "backend": "pyav", "height": int(frames.shape[1]), "width": int(frames.shape[2])}
    return resize_frames(frames, sampling.size, sampling.resize), meta


def iter_frames(file: BinaryIO, rate: float, width: int = 128) -> Iterator[tuple[float, np.ndarray]]:
    """(time_s, (h, width, 3) uint8 BGR) about `rate` times a second over the whole video, for shot
    detection: every frame is decoded (H.264 needs them), only the kept ones are scaled and converted."""
    container, stream = _open_stream(file)
    with container:
        base = _stream_info(container, stream)["start_offset_s"]
        next_t = 0.0
        for frame in container.decode(stream):
            t = (frame.time or 0.0) - base
            if t + 1e-6 < next_t:
                continue
            next_t = t + 1.0 / rate
            height = max(2, round(frame.height * width / frame.width / 2) * 2)
            yield t, frame.reformat(width=width, height=height, format="bgr24").to_ndarray()


def decode_file(path: str | os.PathLike, sampling: Sampling) -> tuple[np.ndarray, dict]:
    """decode_bytes on a local file's contents."""
    with open(path, "rb") as f:
        return decode_bytes(f.read(), sampling)
