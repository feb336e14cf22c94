"""Stage 3: read each video (or time segment) through fsspec and decode it with flashvlm.decode: one
DECODED row per PLANNED row.

Decoding itself (decord, the PyAV fallback, uniform sampling, resizing to the model's input size at decode
time, rotation, seeking to a time range) is the library's (flashvlm/decode.py); this stage adds storage, a
per-row timeout and error rows. A whole video (end_s null: sampling.segments.mode none) is read whole and
decoded as before; a segment [start_s, end_s) is decoded from a RangeReader (pipeline/storage.py), so
PyAV's seek turns into byte-range reads (S3: HTTP range GETs): the container index, held for the next
segment of the same object, then the segment's frames in one request. A segment never reads the whole object.

decord can hang forever on some files, and a hung C call cannot be interrupted in-thread, so with a
timeout (the default) each actor reads and decodes in a helper process that is killed and restarted
when one video exceeds `timeout_s`. The helper also restarts every `_RECYCLE_AFTER` videos, which
bounds decord's memory leak on long files.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any, Mapping, Optional

import numpy as np
import pyarrow as pa

from flashvlm.decode import Sampling, decode_bytes, decode_range, probe
from pipeline.cluster import current_node
from pipeline.schema import DECODED, error_text
from pipeline.storage import RANGE_BLOCK, RangeReader, filesystem

_RECYCLE_AFTER = 200  # videos per helper process
RANGE_SEGMENT_MAX = 32 << 20  # bytes one request for a segment's frames fetches at most
_STARTUP_TIMEOUT_S = 120.0  # the helper imports numpy, decord, av, s3fs: slow on a busy machine


class DecodeTimeout(TimeoutError):
    pass


class StageError(Exception):
    """An error with the stage it belongs to (read or decode), for the error row."""

    def __init__(self, stage: str, error_type: str, message: str):
        super().__init__(message)
        self.stage, self.error_type, self.message = stage, error_type, message


_held: Optional[tuple[tuple[str, Optional[str]], RangeReader]] = None  # this process's last object


def _reader(uri: str, version: Optional[str], size: Optional[int], storage_options) -> RangeReader:
    """A RangeReader of (uri, version), the same one as for this process's last segment when that was of
    the same object: its container index is then held already (a decode actor takes several segments of
    one video), so the segment's frames are its only request."""
    global _held
    if _held is None or _held[0] != (uri, version):
        fs, path = filesystem(uri, storage_options)
        _held = ((uri, version), RangeReader(fs, path, size))
    return _held[1]


def read_and_decode(
    uri: str, sampling: Sampling, storage_options: Optional[Mapping[str, Any]] = None,
    start_s: Optional[float] = None, end_s: Optional[float] = None,
    version: Optional[str] = None, size: Optional[int] = None,
) -> tuple[np.ndarray, dict]:
    """Read one object and decode it (only [start_s, end_s) when end_s is given); StageError carries
    'read' or 'decode' for the error row. meta["bytes_read"]: bytes fetched from storage.

    A segment is read through a RangeReader: the container index first (probe: small reads, held for the
    next segment of this object), then the segment's frames in one request of the segment's share of the
    file at its mean bitrate (`version` and `size`, the listing's, name the object and spare a HEAD)."""
    try:
        if end_s is None:
            fs, path = filesystem(uri, storage_options)
            data = fs.cat_file(path)
        else:
            reader = _reader(uri, version, size, storage_options)
            before = reader.bytes_read
    except Exception as exc:
        raise StageError("read", type(exc).__name__, error_text(exc)) from None
    try:
        if end_s is None:
            frames, meta = decode_bytes(data, sampling)
            meta["bytes_read"] = len(data)
            return frames, meta
        start_s = start_s or 0.0
        reader.seek(0)
        reader.fetch = RANGE_BLOCK
        duration_s = probe(reader)["duration_s"]
        share = reader.size * (end_s - start_s) / duration_s
        reader.fetch = int(min(max(share, RANGE_BLOCK), RANGE_SEGMENT_MAX))
        reader.seek(0)
        frames, meta = decode_range(reader, start_s, end_s, sampling)
        meta["bytes_read"] = reader.bytes_read - before
        return frames, meta
    except Exception as exc:
        raise StageError("decode", type(exc).__name__, error_text(exc)) from None


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
        uri, sampling, options, segment = request
        try:
            _send(out, ("ok", read_and_decode(uri, Sampling(**sampling), options, **segment)))
        except StageError as exc:
            _send(out, ("error", exc.stage, exc.error_type, exc.message))
        except Exception as exc:
            _send(out, ("error", "decode", type(exc).__name__, error_text(exc)))


class _Helper:
    """One helper process; `run` returns its result or raises StageError (timeouts and crashes too)."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.served = 0

    def _start(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.decode"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
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

    def run(self, uri: str, sampling: Sampling, options: Mapping[str, Any], timeout_s: float, **segment):
        """read_and_decode(uri, sampling, options, **segment) in the helper process, within timeout_s."""
        if self.proc is None or self.proc.poll() is not None or self.served >= _RECYCLE_AFTER:
            self.stop()
            self._start()
        self.served += 1
        try:
            reply = self._call((uri, asdict(sampling), dict(options), segment), timeout_s)
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
    """Callable for `Dataset.map_batches(batch_format="pyarrow")` on a CPU actor pool: PLANNED -> DECODED.

    Rows that already carry an error pass through untouched; a video or segment that cannot be read or
    decoded gets error_stage/error_type/error and no frames. Never raises for one row; the timeout is per row.
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
        self.node = current_node()

    def _decode(self, row: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
        segment = {k: row.get(k) for k in ("start_s", "end_s")}
        if segment["end_s"] is not None:  # the object's identity for the reader held between segments
            segment.update(version=row.get("video_version"), size=row.get("video_size"))
        if self.helper is None:
            return read_and_decode(row["video_uri"], self.sampling, self.storage_options, **segment)
        return self.helper.run(row["video_uri"], self.sampling, self.storage_options, self.timeout_s, **segment)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            out = dict.fromkeys(DECODED.names)
            out.update(row)
            out["decode_node"] = self.node
            if row.get("error") is None:
                start = time.perf_counter()
                try:
                    frames, meta = self._decode(row)
                    if out.get("end_s") is None:  # a whole video: segment 0 is [0, duration]
                        out.update(segment_index=0, start_s=0.0, end_s=meta["duration_s"])
                    out.update(
                        bytes_read=meta.get("bytes_read"),
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
                    out.update(error_stage="decode", error_type=type(exc).__name__, error=error_text(exc))
                out["decode_ms"] = (time.perf_counter() - start) * 1000.0
            rows.append(out)
        return pa.Table.from_pylist(rows, schema=DECODED)

    def __del__(self) -> None:
        if getattr(self, "helper", None) is not None:
            self.helper.stop()


if __name__ == "__main__":
    _serve()
