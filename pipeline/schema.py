"""pyarrow schemas of the rows between stages and of the output tables.

Every stage returns a table with exactly one of these schemas, so Ray never has to guess or unify
types (a batch of only failures has the same columns as a batch of successes). Each output field
carries a description in its metadata; `describe` prints them, and docs/pipeline.md's tables are generated
from them (`python -m pipeline.schema --update docs/pipeline.md`; tests/test_docs.py fails when they differ).

Output layout under output.uri (Hive-partitioned by the run's UTC date; a run's files appear when it
commits, see pipeline/commit.py and docs/operations.md; _staging/ holds runs in progress and is never read):
    answers/date=YYYY-MM-DD/<run_id>-<digest>.parquet   one row per (video, segment, question)
    errors/date=YYYY-MM-DD/<run_id>-<digest>.parquet    one row per failed video or segment
    runs/date=YYYY-MM-DD/<run_id>.parquet               one row per run
    evaluations/date=YYYY-MM-DD/<run_id>.parquet        one row per (item, setting) of an evaluation
The `date` column comes from the folder name (hive partitioning), not from the files.
"""

from __future__ import annotations

import re

import pyarrow as pa


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"description": doc})


TIMESTAMP = pa.timestamp("us", tz="UTC")

# Error columns carried by every intermediate row: null while the video is healthy. Only the writer
# splits failed rows from good ones, so nothing is dropped on the way.
_ERROR_FIELDS = [
    _f("error_stage", pa.string(), "stage that failed: list, plan, read, decode, answer"),
    _f("error_type", pa.string(), "exception class name"),
    _f("error", pa.string(), "readable message"),
]

# Which Ray node decoded and answered a row: carried between stages, summed into the run record's `nodes`.
_NODE_FIELDS = [
    _f("decode_node", pa.string(), "Ray node id of the decode actor (null outside Ray)"),
    _f("answer_node", pa.string(), "Ray node id of the model actor (null outside Ray)"),
]

_VIDEO_FIELDS = [
    _f("video_uri", pa.string(), "full URI of the video (file:///..., s3://bucket/key)", nullable=False),
    _f("video_version", pa.string(), "S3 ETag, or size:mtime for files; a changed object gets a new version"),
    _f("video_size", pa.int64(), "bytes"),
]

# The time segment a row is about (sampling.segments); a whole video is segment 0 over [0, duration].
_SEGMENT_FIELDS = [
    _f("segment_index", pa.int32(), "position of the time segment in the video, from 0 (sampling.segments; a whole video: 0)"),
    _f("start_s", pa.float64(), "segment start, seconds from the start of the video"),
    _f("end_s", pa.float64(), "segment end (exclusive), seconds from the start of the video; a whole video: its duration"),
]

# ---- between stages (internal) -------------------------------------------------------------------

LISTED = pa.schema(
    [
        *_VIDEO_FIELDS,
        _f("questions", pa.list_(pa.string()), "questions to ask of this video"),
        # A questions-file row may name a time range: asked only of the segments that overlap it.
        _f("question_start_s", pa.list_(pa.float64()), "parallel to questions: start of the range it asks about; null: the whole video"),
        _f("question_end_s", pa.list_(pa.float64()), "parallel to questions: end of that range; null: the whole video"),
        *_ERROR_FIELDS,
    ]
)

# One row per time segment (pipeline/plan.py), the unit of work from decoding on.
PLANNED = pa.schema([*LISTED, *_SEGMENT_FIELDS])

DECODED = pa.schema(
    [
        *PLANNED,
        # Raw uint8 RGB bytes of the sampled frames in C order, shape in frames_shape: plain Arrow, so
        # no Ray tensor extension type is needed to pass them between actors.
        _f("frames", pa.large_binary(), "sampled frames, uint8 RGB, C order"),
        _f("frames_shape", pa.list_(pa.int32()), "(T, H, W, 3)"),
        _f("frame_indices", pa.list_(pa.int32()), "source frame index of each sampled frame"),
        _f("num_frames", pa.int64(), "frames in the source video"),
        _f("duration_s", pa.float64(), "source duration in seconds"),
        _f("fps", pa.float64(), "source average frame rate"),
        _f("width", pa.int32(), "source width as displayed (after rotation metadata)"),
        _f("height", pa.int32(), "source height as displayed"),
        _f("decode_backend", pa.string(), "decord or pyav (the fallback)"),
        _f("decode_ms", pa.float64(), "read + decode + resize time of this video"),
        _f("bytes_read", pa.int64(), "bytes read from storage for this row (a segment reads only its range)"),
        _NODE_FIELDS[0],
    ]
)

# ---- output tables ---------------------------------------------------------------------------------

ANSWERS = pa.schema(
    [
        *_VIDEO_FIELDS,
        *_SEGMENT_FIELDS,
        _f("question_index", pa.int16(), "position of the question in the video's question list"),
        _f("question", pa.string(), "the question"),
        _f("answer", pa.string(), "the model's answer"),
        _f("expected", pa.string(), "the label from the questions file's answer column; null when unlabelled"),
        _f("correct", pa.bool_(), "answer matches expected after pipeline.scoring.normalize_answer; null when unlabelled"),
        _f("model", pa.string(), "model.name from the config"),
        _f("budget", pa.int32(), "selection.budget: kept visual tokens per frame on average over the clip (Qwen2.5-VL: per frame pair); null: no pruning"),
        _f("frames", pa.int16(), "frames sampled from the video and shown to the model"),
        _f("frame_size", pa.int16(), "side of the square frames given to the model (sampling.size)"),
        _f("tokens_kept", pa.int32(), "visual tokens given to the language model, whole clip"),
        _f("tokens_total", pa.int32(), "visual tokens before pruning, whole clip"),
        _f("kept", pa.list_(pa.list_(pa.int16())), "kept visual-token indices, one list per frame (Qwen2.5-VL: per frame pair, its temporal token group)"),
        _f("kept_important", pa.list_(pa.list_(pa.bool_())), "parallel to kept: true = kept as important (question/saliency), false = diverse background; null when nothing was pruned"),
        _f("latency_ms", pa.float64(), "model time of the video's call divided by its number of questions"),
        _f("decode_ms", pa.float64(), "read + decode + resize time of the video"),
        _f("decode_backend", pa.string(), "decord or pyav"),
        _f("duration_s", pa.float64(), "source duration in seconds"),
        _f("fps", pa.float64(), "source average frame rate"),
        _f("width", pa.int32(), "source width as displayed"),
        _f("height", pa.int32(), "source height as displayed"),
        _f("settings_id", pa.string(), "hash of model, sampling and selection settings: same id, same answers"),
        _f("run_id", pa.string(), "the run that wrote the row", nullable=False),
        _f("created_at", TIMESTAMP, "when the answer was produced (UTC)"),
    ]
)

ERRORS = pa.schema(
    [
        _VIDEO_FIELDS[0],
        _VIDEO_FIELDS[1],
        *_SEGMENT_FIELDS,
        _f("stage", pa.string(), "stage that failed: list, plan, read, decode, answer", nullable=False),
        _f("error_type", pa.string(), "exception class name"),
        _f("error", pa.string(), "readable message"),
        _f("settings_id", pa.string(), "hash of model, sampling and selection settings"),
        _f("run_id", pa.string(), "the run that wrote the row", nullable=False),
        _f("created_at", TIMESTAMP, "when the failure was recorded (UTC)"),
    ]
)

# What the answer stage emits: answer rows and error rows in one schema; the writer splits them.
ANSWERED = pa.schema([*ANSWERS, *_ERROR_FIELDS, *_NODE_FIELDS])

RUNS = pa.schema(
    [
        _f("run_id", pa.string(), "run identifier", nullable=False),
        _f("status", pa.string(), "succeeded or failed"),
        _f("started_at", TIMESTAMP, "UTC"),
        _f("finished_at", TIMESTAMP, "UTC"),
        _f("input_uri", pa.string(), "input.uri"),
        _f("output_uri", pa.string(), "output.uri"),
        _f("model", pa.string(), "model.name"),
        _f("settings_id", pa.string(), "hash of model, sampling and selection settings"),
        _f("config", pa.string(), "the validated config as JSON, credentials replaced by ***"),
        _f("versions", pa.string(), "JSON: python, flashvlm, ray, pyarrow, torch, transformers, decord, av"),
        _f("videos_listed", pa.int64(), "inputs: videos listed plus manifest/questions-file entries not found; = ok + failed + skipped + already_done"),
        _f("videos_ok", pa.int64(), "videos with answers (with sampling.segments: segments)"),
        _f("videos_failed", pa.int64(), "videos with an error row (with sampling.segments: segments)"),
        _f("videos_skipped", pa.int64(), "listed videos with no questions (only a questions_file names them)"),
        _f("videos_already_done", pa.int64(), "incremental runs: listed videos not processed because every question was answered (or the version failed to decode) under the same settings_id before"),
        _f("incremental", pa.bool_(), "whether the run skipped work already done"),
        _f("answers", pa.int64(), "rows written to answers/"),
        _f("frames_decoded", pa.int64(), "frames sampled over the answered videos"),
        _f("tokens_kept", pa.int64(), "sum of tokens_kept over answers"),
        _f("tokens_total", pa.int64(), "sum of tokens_total over answers"),
        _f("answers_labelled", pa.int64(), "answers with an expected answer (questions_file `answer` column)"),
        _f("answers_correct", pa.int64(), "labelled answers that are correct"),
        _f("wall_s", pa.float64(), "whole run, seconds"),
        _f("listing_s", pa.float64(), "listing and question join, seconds"),
        _f("ray_init_s", pa.float64(), "starting or connecting to Ray, seconds"),
        _f("pipeline_s", pa.float64(), "decode + answer + write (streaming together), seconds"),
        _f("decode_s", pa.float64(), "sum of per-video decode times (over all decode actors)"),
        _f("answer_s", pa.float64(), "sum of per-video model times (over all model actors)"),
        _f("error", pa.string(), "why the run failed (null when it succeeded)"),
        _f("nodes", pa.list_(pa.string()), "Ray node ids that ran decode or answer work, sorted"),
    ]
)

# One row per write batch: what the driver sums into the run record.
WRITE_SUMMARY = pa.schema(
    [
        pa.field("answers", pa.int64()),
        pa.field("errors", pa.int64()),
        pa.field("videos_ok", pa.int64()),
        pa.field("videos_failed", pa.int64()),
        pa.field("frames_decoded", pa.int64()),
        pa.field("tokens_kept", pa.int64()),
        pa.field("tokens_total", pa.int64()),
        pa.field("answers_labelled", pa.int64()),
        pa.field("answers_correct", pa.int64()),
        pa.field("decode_ms", pa.float64()),
        pa.field("answer_ms", pa.float64()),
        pa.field("files", pa.list_(pa.string())),
        pa.field("nodes", pa.list_(pa.string())),
        # videos that failed in the answer stage, by "ErrorType: message": what the failure policy weighs
        pa.field("answer_errors", pa.list_(pa.struct([("error", pa.string()), ("videos", pa.int64())]))),
    ]
)

# The evaluation's table (pipeline/evaluate.py): one row per (item, setting), scored.
EVALUATIONS = pa.schema(
    [
        *_VIDEO_FIELDS[:2],
        *_SEGMENT_FIELDS,
        _f("item", pa.int32(), "the item's number in this run (labels file order, then config questions); with segments, "
           "asked of every segment its range overlaps: an evaluated item is (item, segment_index)"),
        _f("question", pa.string(), "the question"),
        _f("question_type", pa.string(), "the labels file's question_type (null if none)"),
        _f("choices", pa.list_(pa.string()), "multiple-choice options (null: open question)"),
        _f("method", pa.string(), "selector (flashvlm.selectors.METHODS), or full for the full-budget reference"),
        _f("options", pa.string(), "the method's options as JSON"),
        _f("budget", pa.int32(), "visual tokens kept per frame; null: all (method full)"),
        _f("frames", pa.int16(), "frames shown to the model"),
        _f("tokens_kept", pa.int32(), "visual tokens given to the language model, whole clip"),
        _f("tokens_total", pa.int32(), "visual tokens before pruning, whole clip"),
        _f("answer", pa.string(), "the model's answer (multiple choice: the most likely option)"),
        _f("choice_scores", pa.list_(pa.float64()), "multiple choice: log-likelihood of each option"),
        _f("expected", pa.string(), "the label; null when unlabelled"),
        _f("correct", pa.bool_(), "answer matches the label (pipeline.scoring); null when unlabelled"),
        _f("agrees_with_full", pa.bool_(), "answer equals the same model's full-budget answer"),
        _f("object_recall", pa.float64(), "share of the item's object_patches kept; null without them"),
        _f("latency_ms", pa.float64(), "model time of this answer (the setting's call / its items)"),
        _f("encode_ms", pa.float64(), "the video's vision features, computed once for every setting"),
        _f("decode_ms", pa.float64(), "read + decode + resize time of the video"),
        _f("model", pa.string(), "model.name"),
        _f("settings_id", pa.string(), "hash of model, sampling and this row's selection setting"),
        _f("run_id", pa.string(), "the evaluation run", nullable=False),
        _f("created_at", TIMESTAMP, "UTC"),
        *_ERROR_FIELDS,
    ]
)

TABLES = {"answers": ANSWERS, "errors": ERRORS, "runs": RUNS, "evaluations": EVALUATIONS}


MAX_ERROR_CHARS = 2000


def error_text(exc: BaseException) -> str:
    """An exception as the `error` column holds it: one line, Ray's colour codes dropped, at most
    MAX_ERROR_CHARS; the exception's class name when it has no message."""
    message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return message[:MAX_ERROR_CHARS] or type(exc).__name__


def frames_of(row) -> "numpy.ndarray":
    """The (T, H, W, 3) uint8 frames of a DECODED row (a read-only view of its bytes)."""
    import numpy

    return numpy.frombuffer(row["frames"], dtype=numpy.uint8).reshape(row["frames_shape"])


def describe(schema: pa.Schema) -> str:
    """A Markdown table of a schema's columns, types and descriptions."""
    rows = ["| column | type | description |", "|---|---|---|"]
    for field in schema:
        doc = (field.metadata or {}).get(b"description", b"").decode()
        rows.append(f"| `{field.name}` | {field.type} | {doc} |")
    return "\n".join(rows)


# docs/pipeline.md holds the output tables between these two lines, as `tables_markdown` writes them.
TABLES_BEGIN = "<!-- generated by `python -m pipeline.schema --update docs/pipeline.md`: do not edit by hand -->"
TABLES_END = "<!-- end of generated tables -->"


def tables_markdown() -> str:
    """Every output table (TABLES) as a heading and its `describe` table."""
    return "\n\n".join(f"**{name}/**\n\n{describe(schema)}" for name, schema in TABLES.items())


def with_tables(doc: str) -> str:
    """`doc` with the text between TABLES_BEGIN and TABLES_END replaced by `tables_markdown()`."""
    head, begin, rest = doc.partition(TABLES_BEGIN)
    _, end, tail = rest.partition(TABLES_END)
    if not begin or not end:
        raise ValueError(f"the document needs the lines {TABLES_BEGIN!r} and {TABLES_END!r}")
    return f"{head}{TABLES_BEGIN}\n\n{tables_markdown()}\n\n{TABLES_END}{tail}"


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="The output tables' columns, as Markdown")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print them")
    action.add_argument("--update", metavar="DOC", type=Path, help="rewrite them in DOC, between the generated-table markers")
    args = parser.parse_args()
    if args.update:
        args.update.write_text(with_tables(args.update.read_text()))
    else:
        print(tables_markdown())
