"""Stage 4: split answered rows into the answers and errors tables and write them as Parquet.

Layout (Hive-partitioned by the run's UTC date, so `date` is a column for every reader):
    <output.uri>/answers/date=YYYY-MM-DD/<run_id>-<digest>.parquet
    <output.uri>/errors/date=YYYY-MM-DD/<run_id>-<digest>.parquet
    <output.uri>/runs/date=YYYY-MM-DD/<run_id>.parquet

Labels (a questions file's `answer` column, pipeline.questions.labels_of) are joined to the answers here,
after answering, on (video_uri, question); a label with a time range labels the answers of the segments it
overlaps, the one that overlaps a segment most where several do: `expected` and `correct` (pipeline.scoring.is_correct).

<digest> hashes the (video_uri, video_version, question_index, question, segment_index) keys of the rows in the file, so
a retried task, which writes the same rows, overwrites its own file instead of adding a duplicate.
The run writes under its staging folder `<output.uri>/_staging/<run_id>/` with the same layout, and
`pipeline.commit` moves the files into place when the run commits (see that module). Every
file is written whole (`pipeline.storage.write_atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.questions import canonical_uris
from pipeline.schema import ANSWERS, ERRORS, RUNS, WRITE_SUMMARY
from pipeline.scoring import is_correct
from pipeline.storage import filesystem, join, write_atomic

COMPRESSION = "zstd"


def partition_dir(root: str, table: str, run_date: str) -> str:
    return join(root, table, f"date={run_date}")


def _digest(table: pa.Table) -> str:
    # segment 0 (a whole video) leaves the key as it was before segments, so whole-video names do not change
    keys = sorted(
        f"{u}\x00{v}\x00{i}\x00{q}" + (f"\x00{s}" if s else "")
        for u, v, i, q, s in zip(
            table.column("video_uri").to_pylist(),
            table.column("video_version").to_pylist(),
            table.column("question_index").to_pylist(),
            table.column("question").to_pylist(),
            table.column("segment_index").to_pylist(),
        )
    )
    return hashlib.sha1("\x01".join(keys).encode()).hexdigest()[:16]


class ParquetWriter:
    """Writes whole tables as Parquet files under one output URI, each file atomically."""

    def __init__(self, output_uri: str, storage_options: Optional[Mapping[str, Any]] = None):
        self.fs, self.root = filesystem(output_uri, storage_options)

    def write(self, table: pa.Table, directory: str, name: str) -> str:
        buffer = pa.BufferOutputStream()  # a few MB at most: one answers batch
        pq.write_table(table, buffer, compression=COMPRESSION)
        path = join(directory, name)
        write_atomic(self.fs, path, buffer.getvalue().to_pybytes())
        return path


class WriteTables:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")`: ANSWERED rows in, one WRITE_SUMMARY row out.

    output_uri: where the tables go; the run passes its staging folder (pipeline.commit.staging_uri).
    labels: LABELS rows (pipeline.questions.labels_of), joined to the answers; None: no labels.
    """

    def __init__(self, output_uri: str, storage_options: Optional[Mapping[str, Any]], run_id: str, run_date: str,
                 labels: Optional[pa.Table] = None):
        self.writer = ParquetWriter(output_uri, storage_options)
        self.run_id, self.run_date, self.labels = run_id, run_date, labels

    def labelled(self, answers: pa.Table) -> pa.Table:
        """The answers with `expected` (the label of their canonical video URI and question; of a ranged label,
        the one overlapping the answer's segment most) and `correct`."""
        if self.labels is None or not answers.num_rows:
            return answers
        keys = pa.table({"video_uri": canonical_uris(answers.column("video_uri")), "question": answers.column("question"),
                         "row": pa.array(range(answers.num_rows), pa.int64()),
                         "segment_start": answers.column("start_s"), "segment_end": answers.column("end_s")})
        found = keys.join(self.labels, ["video_uri", "question"], join_type="inner", use_threads=False)
        inf = pa.scalar(float("inf"))
        overlap = pc.if_else(  # a label without a range labels the whole video
            pc.is_null(found.column("start_s")), inf,
            pc.subtract(pc.min_element_wise(pc.fill_null(found.column("segment_end"), inf), found.column("end_s")),
                        pc.max_element_wise(pc.fill_null(found.column("segment_start"), 0.0), found.column("start_s"))))
        found = found.append_column("overlap", overlap).filter(pc.greater(overlap, 0.0))
        best = found.sort_by([("row", "ascending"), ("overlap", "descending")])
        expected = [None] * answers.num_rows
        for row, label in zip(reversed(best.column("row").to_pylist()), reversed(best.column("expected").to_pylist())):
            expected[row] = label  # reversed: each row's largest overlap is written last
        correct = [is_correct(a, e) for a, e in zip(answers.column("answer").to_pylist(), expected)]
        answers = answers.set_column(answers.schema.get_field_index("expected"), ANSWERS.field("expected"), pa.array(expected, pa.string()))
        return answers.set_column(answers.schema.get_field_index("correct"), ANSWERS.field("correct"), pa.array(correct, pa.bool_()))

    def __call__(self, batch: pa.Table) -> pa.Table:
        failed = pc.is_valid(batch.column("error"))
        answers = self.labelled(batch.filter(pc.invert(failed)).select(ANSWERS.names).cast(ANSWERS))
        failed_rows = batch.filter(failed)
        errors = failed_rows.rename_columns({"error_stage": "stage"}).select(ERRORS.names).cast(ERRORS)
        in_answer = errors.filter(pc.equal(errors.column("stage"), "answer"))
        reasons = pa.table({"error": pc.binary_join_element_wise(
            pc.fill_null(in_answer.column("error_type"), ""), pc.fill_null(in_answer.column("error"), ""), ": ")})
        by_reason = reasons.group_by("error", use_threads=False).aggregate([([], "count_all")])  # (error, count_all)
        name = f"{self.run_id}-{_digest(batch)}.parquet"
        files = []
        if answers.num_rows:
            files.append(self.writer.write(answers, partition_dir(self.writer.root, "answers", self.run_date), name))
        if errors.num_rows:
            files.append(self.writer.write(errors, partition_dir(self.writer.root, "errors", self.run_date), name))
        first = answers.filter(pc.equal(answers.column("question_index"), 0))  # one row per answered video
        summary = {
            "answers": answers.num_rows,
            "errors": errors.num_rows,
            "videos_ok": first.num_rows,
            "videos_failed": errors.num_rows,
            "frames_decoded": int(pc.sum(first.column("frames")).as_py() or 0),
            "tokens_kept": int(pc.sum(answers.column("tokens_kept")).as_py() or 0),
            "tokens_total": int(pc.sum(answers.column("tokens_total")).as_py() or 0),
            "answers_labelled": int(pc.sum(pc.is_valid(answers.column("correct")).cast(pa.int64())).as_py() or 0),
            "answers_correct": int(pc.sum(pc.fill_null(answers.column("correct"), False).cast(pa.int64())).as_py() or 0),
            "decode_ms": float(pc.sum(first.column("decode_ms")).as_py() or 0.0)
            + float(pc.sum(failed_rows.column("decode_ms")).as_py() or 0.0),
            "answer_ms": float(pc.sum(answers.column("latency_ms")).as_py() or 0.0),
            "files": files,
            "nodes": sorted({n for c in ("decode_node", "answer_node") for n in batch.column(c).to_pylist() if n}),
            "answer_errors": [{"error": e, "videos": n} for e, n in
                              zip(by_reason.column("error").to_pylist(), by_reason.column("count_all").to_pylist())],
        }
        return pa.Table.from_pylist([summary], schema=WRITE_SUMMARY)


def write_run_record(output_uri: str, storage_options: Optional[Mapping[str, Any]], record: Mapping[str, Any], run_date: str) -> str:
    """Write the one-row runs/ table of a run (named by run id, so a rerun with that id replaces it)."""
    writer = ParquetWriter(output_uri, storage_options)
    table = pa.Table.from_pylist([dict(record)], schema=RUNS)
    return writer.write(table, partition_dir(writer.root, "runs", run_date), f"{record['run_id']}.parquet")
