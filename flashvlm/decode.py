"""Stage 2: read each video through fsspec, decode a uniform sample of frames, resize for the model.

decord first (fast seeking); when it fails on a file (no duration in the header, unusual pixel formats,
some WebM), PyAV decodes it instead; only when both fail is the video an error row. Frames are resized
here, at decode time, to the model's square input size, so full-resolution frames never enter Ray's
object store. Rotation metadata is applied (decord does it itself; PyAV frames are rotated here), so
frames are upright as a player shows them.

decord can hang forever on some files, and a hung C call cannot be interrupted in-thread, so with a
timeout (the default) each actor reads and decodes in a helper process that is killed and restarted
when one video exceeds `timeout_s`. The helper also restarts every `_RECYCLE_AFTER` videos, which
bounds decord's memory leak on long files.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from pipeline.schema import DECODED
from pipeline.storage import filesystem

_RECYCLE_AFTER = 200  # videos per helper process
_STARTUP_TIMEOUT_S = 120.0  # the helper imports numpy, decord, av, s3fs: slow on a busy machine
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Sampling:
    frames: int = 8
    fps: Optional[float] = None
    size: int = 336
    resize: str = "crop"
    threads: int = 0  # decoder threads; 0: the decoder's choice (every core)


class DecodeError(RuntimeError):
    """Neither decord nor PyAV could decode the video; the message holds both reasons."""


class DecodeTimeout(TimeoutError):
    pass


class StageError(Exception):
    """An error with the stage it belongs to (read or decode), for the error row."""

    def __init__(self, stage: str, error_type: str, message: str):
        super().__init__(message)
        self.stage, self.error_type, self.message = stage, error_type, message


# --------------------------------------------------------------------------------------------------
# Pure functions: bytes in, frames out
# --------------------------------------------------------------------------------------------------


def sample_indices(num_frames: int, frames: int, fps: Optional[float] = None, duration_s: Optional[float] = None) -> np.ndarray:
    """Indices of `frames` frames at the centres of equal segments (fewer with `fps`: duration * fps).

    Short videos repeat frames, so a clip always yields the configured count (models expect it).
    """
    if num_frames < 1:
        raise DecodeError("the video has no frames")
    count = frames
    if fps and duration_s:
        count = max(1, min(frames, int(duration_s * fps)))
    idx = ((np.arange(count) + 0.5) * num_frames / count).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)


def resize_frames(frames: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3); crop: shortest side to size then centre crop."""
    from PIL import Image

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


def read_and_decode(uri: str, sampling: Sampling, storage_options: Optional[Mapping[str, Any]] = None) -> tuple[np.ndarray, dict]:
    """Read one object and decode it; StageError carries 'read' or 'decode' for the error row."""
    try:
        fs, path = filesystem(uri, storage_options)
        data = fs.cat_file(path)
    except Exception as exc:
        raise StageError("read", type(exc).__name__, _clean(exc) or type(exc).__name__) from None
    try:
        return decode_bytes(data, sampling)
    except Exception as exc:
        raise StageError("decode", type(exc).__name__, _clean(exc) or type(exc).__name__) from None


# --------------------------------------------------------------------------------------------------
# The helper process (so a hung decoder can be killed)
# --------------------------------------------------------------------------------------------------


def _send(stream, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(payload)))
    stream.write(payload)
    stream.flush()


def _recv(stream) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("decoder process closed its pipe")
    (size,) = struct.unpack(">Q", header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("decoder process closed its pipe")
    return pickle.loads(payload)


def _serve() -> None:
    """Helper-process loop: requests on stdin, results on a private copy of stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the result pipe
    inp = sys.stdin.buffer
    while True:
        try:
            request = _recv(inp)
        except EOFError:
            return  # the actor is gone
        if request is None:
            _send(out, "ready")
            continue
        uri, sampling, options = request
        try:
            _send(out, ("ok", read_and_decode(uri, Sampling(**sampling), options)))
        except StageError as exc:
            _send(out, ("error", exc.stage, exc.error_type, exc.message))
        except Exception as exc:
            _send(out, ("error", "decode", type(exc).__name__, _clean(exc)))


class _Helper:
    """One helper process; `run` returns its result or raises StageError (timeouts and crashes too)."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.served = 0

    def _start(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flashvlm.decode"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.served = 0
        self._call(None, _STARTUP_TIMEOUT_S)  # wait until imports are done, so they never count as a hang

    def _call(self, request: Any, timeout_s: float) -> Any:
        assert self.proc is not None
        _send(self.proc.stdin, request)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            self.stop()
            raise DecodeTimeout(f"no result within {timeout_s:g} s; the decoder process was killed")
        try:
            return _recv(self.proc.stdout)
        except EOFError:
            code = self.proc.wait(timeout=10)
            self.proc = None
            raise StageError("decode", "DecoderCrashed", f"the decoder process died (exit code {code})") from None

    def run(self, uri: str, sampling: Sampling, options: Mapping[str, Any], timeout_s: float):
        if self.proc is None or self.proc.poll() is not None or self.served >= _RECYCLE_AFTER:
            self.stop()
            self._start()
        self.served += 1
        try:
            reply = self._call((uri, asdict(sampling), dict(options)), timeout_s)
        except DecodeTimeout as exc:
            raise StageError("decode", "TimeoutError", str(exc)) from None
        if reply[0] == "error":
            raise StageError(*reply[1:])
        return reply[1]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


class DecodeVideos:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")` on a CPU actor pool: LISTED -> DECODED.

    Rows that already carry an error pass through untouched; a video that cannot be read or decoded
    gets error_stage/error_type/error and no frames. Never raises for one video.
    """

    def __init__(
        self,
        frames: int = 8,
        fps: Optional[float] = None,
        size: int = 336,
        resize: str = "crop",
        storage_options: Optional[Mapping[str, Any]] = None,
        timeout_s: Optional[float] = 120.0,
        threads: int = 0,
    ):
        self.sampling = Sampling(frames=frames, fps=fps, size=size, resize=resize, threads=threads)
        self.storage_options = dict(storage_options or {})
        self.timeout_s = timeout_s
        self.helper = _Helper() if timeout_s else None

    def _decode(self, uri: str) -> tuple[np.ndarray, dict]:
        if self.helper is None:
            return read_and_decode(uri, self.sampling, self.storage_options)
        return self.helper.run(uri, self.sampling, self.storage_options, self.timeout_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            out = dict.fromkeys(DECODED.names)
            out.update(row)
            if row.get("error") is None:
                start = time.perf_counter()
                try:
                    frames, meta = self._decode(row["video_uri"])
                    out.update(
                        frames=frames.tobytes(),
                        frames_shape=list(frames.shape),
                        frame_indices=[int(i) for i in meta["frame_indices"]],
                        num_frames=int(meta["num_frames"]),
                        duration_s=meta["duration_s"],
                        fps=meta["fps"],
                        width=meta["width"],
                        height=meta["height"],
                        decode_backend=meta["backend"],
                    )
                except StageError as exc:
                    out.update(error_stage=exc.stage, error_type=exc.error_type, error=exc.message)
                except Exception as exc:  # a bug here must still not lose the video
                    out.update(error_stage="decode", error_type=type(exc).__name__, error=_clean(exc))
                out["decode_ms"] = (time.perf_counter() - start) * 1000.0
            rows.append(out)
        return pa.Table.from_pylist(rows, schema=DECODED)

    def __del__(self) -> None:
        if getattr(self, "helper", None) is not None:
            self.helper.stop()


if __name__ == "__main__":
    _serve()
