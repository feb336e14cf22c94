"""Stage 2 of a segmented run (sampling.segments.mode fixed or scenes): one listed video in, one row per
time segment out (LISTED -> PLANNED), on Ray workers, so the driver never holds the segments.

    fixed    windows [0, L), [L, 2L), ... of length_s; a last window shorter than min_s joins the one before
    scenes   shots between the cuts PySceneDetect's ContentDetector finds on frames sampled detect_fps
             times a second; a shot shorter than min_s joins its neighbour, one longer than length_s is
             cut into windows as `fixed` cuts a video

Planning reads the container's metadata through an fsspec file object (MP4: the index only); shot
detection decodes the whole video once, at low resolution. Each segment gets the video's questions that
concern it (pipeline.questions.segment_questions); an incremental run also drops the (segment, question)
pairs already answered under its settings_id. A video that cannot be planned is one error row (stage "plan").
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa

from flashvlm.decode import iter_frames, probe
from pipeline.questions import segment_questions
from pipeline.schema import PLANNED, error_text
from pipeline.storage import RangeReader, filesystem
from pipeline.tables import segment_done_keys

SCAN_FETCH = 16 << 20  # bytes a range read fetches while shot detection decodes a whole video

Bounds = list[tuple[float, float]]


def fixed_windows(start_s: float, end_s: float, length_s: float, min_s: float = 0.0) -> Bounds:
    """[start_s, end_s) cut into windows of length_s; a last window shorter than min_s joins the one before."""
    edges = [start_s]
    while edges[-1] + length_s < end_s - 1e-9:
        edges.append(edges[-1] + length_s)
    if len(edges) > 1 and end_s - edges[-1] < min_s:
        edges.pop()
    return list(zip(edges, [*edges[1:], end_s]))


def scene_windows(cuts: Sequence[float], duration_s: float, length_s: Optional[float] = None, min_s: float = 0.0) -> Bounds:
    """Shots between `cuts` (seconds); shots shorter than min_s join the shot before (the first joins the
    next), shots longer than length_s are cut into fixed windows."""
    edges = [0.0, *sorted(c for c in cuts if 0.0 < c < duration_s), duration_s]
    shots = list(zip(edges[:-1], edges[1:]))
    merged: Bounds = []
    for start, end in shots:
        if merged and (end - start < min_s or merged[-1][1] - merged[-1][0] < min_s):
            merged[-1] = (merged[-1][0], end)  # this shot, or the one before, is too short: one shot
        else:
            merged.append((start, end))
    if not length_s:
        return merged
    return [w for start, end in merged for w in fixed_windows(start, end, length_s, min_s)]


def detect_cuts(file, rate: float = 8.0, threshold: float = 27.0, min_shot_s: float = 0.5) -> list[float]:
    """Times (s) of the hard cuts PySceneDetect's ContentDetector finds on frames sampled `rate` times a
    second (flashvlm.decode.iter_frames): a cut is reported at the first sampled frame of the new shot."""
    from scenedetect import FrameTimecode
    from scenedetect.detectors import ContentDetector

    detector = ContentDetector(threshold=threshold, min_scene_len=f"{min_shot_s}s")
    times, cuts = [], []  # the detector counts sampled frames; times[i] is frame i's true timestamp
    for i, (t, image) in enumerate(iter_frames(file, rate)):
        times.append(t)
        cuts += [times[c.frame_num] for c in detector.process_frame(FrameTimecode(i, fps=rate), image)]
    return cuts


def plan_video(uri: str, segments: Mapping[str, Any], storage_options: Optional[Mapping[str, Any]] = None,
               size: Optional[int] = None) -> Bounds:
    """The [start_s, end_s) of each segment of one video under the config's `sampling.segments` (size: the
    listing's, if known)."""
    fs, path = filesystem(uri, storage_options)
    reader = RangeReader(fs, path, size)  # the index: a few small range reads
    duration = probe(reader)["duration_s"]
    if segments["mode"] == "fixed":
        return fixed_windows(0.0, duration, segments["length_s"], segments["min_s"])
    reader.seek(0)
    reader.fetch = SCAN_FETCH  # shot detection decodes the whole video: large sequential reads
    cuts = detect_cuts(reader, segments["detect_fps"], segments["threshold"])
    return scene_windows(cuts, duration, segments.get("length_s"), segments["min_s"])


def plan_segments(batch: pa.Table, segments: Mapping[str, Any], storage_options: Optional[Mapping[str, Any]] = None,
                  done: Optional[Mapping[str, Any]] = None) -> pa.Table:
    """For `map_batches(batch_format="pyarrow")` on Ray tasks (planning holds no state worth an actor): LISTED
    rows in, PLANNED rows out. done: for incremental runs, dict(output_uri, settings_id, storage_options, retry)
    of the answers to skip."""
    rows = batch.to_pylist()
    answered, failed = set(), set()
    if done:
        uris = [r["video_uri"] for r in rows if r["error"] is None]
        answered, failed = segment_done_keys(uris=uris, **done)
    out = []
    for row in rows:
        if row["error"] is not None:
            out.append({**row, "segment_index": None, "start_s": None, "end_s": None})
            continue
        try:
            bounds = plan_video(row["video_uri"], segments, storage_options, row["video_size"])
        except Exception as exc:
            out.append({**row, "segment_index": None, "start_s": None, "end_s": None, "error_stage": "plan",
                        "error_type": type(exc).__name__, "error": error_text(exc)})
            continue
        version = row["video_version"]
        for k, (start, end) in enumerate(bounds):
            if (row["video_uri"], version, k) in failed:
                continue
            asked = segment_questions(row["questions"] or [], row["question_start_s"], row["question_end_s"], start, end)
            keep = [i for i, q in enumerate(asked[0]) if (row["video_uri"], version, k, q) not in answered]
            if not keep:
                continue
            questions, starts, ends = ([part[i] for i in keep] for part in asked)
            ranged = any(s is not None for s in starts)
            out.append({**row, "questions": questions, "question_start_s": starts if ranged else None,
                        "question_end_s": ends if ranged else None, "segment_index": k, "start_s": start, "end_s": end})
    return pa.Table.from_pylist(out, schema=PLANNED)
