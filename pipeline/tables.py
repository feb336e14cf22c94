"""Reading the output tables back: pyarrow datasets and a DuckDB connection with one view per table.

    from pipeline.tables import read_table, duckdb_connect
    answers = read_table("s3://bucket/qa", "answers")            # pyarrow.Table, with the `date` column
    committed = read_committed("s3://bucket/qa", "answers")       # only rows of runs that committed
    con = duckdb_connect("s3://bucket/qa")                        # views: answers, errors, runs, evaluations
    con.sql("SELECT model, avg(tokens_kept / tokens_total) FROM answers GROUP BY model").show()
    draw_answer_row(answers.to_pylist()[0]).save("row.png")     # what the model kept (flashvlm.viz)

A run writes under <output.uri>/_staging/<run_id>/ and moves its files into answers/, errors/,
evaluations/ and runs/ when it commits (pipeline/commit.py), one file at a time and its run record last.
So a reader that lists a table during a commit may see part of a run; one that reads only the rows of
runs whose record says succeeded, reading runs/ first, never does (`read_committed`; the rule and its SQL
are in docs/operations.md, "Commits: what a reader sees"). The same (video, question) can have rows from several
runs (a rerun without --incremental, a changed object, a retried failure): `latest_answers` and
LATEST_ANSWERS_SQL keep the newest row per (video_uri, question, settings_id).

DuckDB reads S3 here through the same fsspec/s3fs filesystem (`register_filesystem`), which works
offline; with internet access `INSTALL httpfs; LOAD httpfs;` and DuckDB's own S3 settings work too.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.schema import TABLES
from pipeline.storage import arrow_filesystem, filesystem, is_local, join, to_uri

PARTITIONING = pads.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


def read_table(
    output_uri: str, name: str, storage_options: Optional[Mapping[str, Any]] = None, columns: Optional[list[str]] = None
) -> pa.Table:
    """One output table (answers, errors or runs) across all run dates; empty (with schema) if none yet."""
    return read_columns(output_uri, name, columns or _with_date(name).names, storage_options)


# Newest row per (video_uri, question, settings_id): a changed object's new answers replace the old
# version's; add video_version to the PARTITION BY to keep one row per version instead.
LATEST_ANSWERS_SQL = """
SELECT * FROM answers
QUALIFY row_number() OVER (
    PARTITION BY video_uri, question, settings_id ORDER BY created_at DESC, run_id DESC) = 1
"""

# Decode failures that the same settings will hit again for the same object version; others (read,
# list, answer, a timeout or a crashed decoder) may be transient and are retried by incremental runs.
_TRANSIENT_DECODE_ERRORS = ("TimeoutError", "DecoderCrashed")


def latest_answers(
    output_uri: str, storage_options: Optional[Mapping[str, Any]] = None, settings_id: Optional[str] = None,
    per_version: bool = False,
) -> pa.Table:
    """The answers table with only the newest row per (video_uri, question, settings_id) (also per
    video_version when per_version), optionally for one settings_id."""
    import duckdb

    answers = read_table(output_uri, "answers", storage_options)
    sql = LATEST_ANSWERS_SQL
    if per_version:
        sql = sql.replace("PARTITION BY video_uri,", "PARTITION BY video_uri, video_version,")
    con = duckdb.connect()
    con.register("answers", answers)
    params = {}
    if settings_id is not None:
        sql, params = sql.replace("QUALIFY", "WHERE settings_id = $sid QUALIFY"), {"sid": settings_id}
    result = con.execute(sql + " ORDER BY video_uri, question_index", params).to_arrow_table()
    return result.cast(answers.schema)


def committed_runs(output_uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> pa.Array:
    """The run ids whose run record says succeeded: runs whose every file is in place (the record moves last)."""
    import pyarrow.compute as pc

    runs = read_columns(output_uri, "runs", ["run_id"], storage_options, filter=pc.field("status") == "succeeded")
    return runs.column("run_id").combine_chunks()


def read_committed(
    output_uri: str, name: str, storage_options: Optional[Mapping[str, Any]] = None, columns: Optional[list[str]] = None
) -> pa.Table:
    """One table's rows of committed runs only: runs/ is read first, then the table, keeping the rows whose
    run_id had a succeeded record then. A run committing meanwhile is left out whole, never seen in part."""
    import pyarrow.compute as pc

    committed = committed_runs(output_uri, storage_options)
    return read_columns(output_uri, name, columns or _with_date(name).names, storage_options,
                        filter=pc.field("run_id").isin(committed))


def _dataset(output_uri: str, name: str, storage_options: Optional[Mapping[str, Any]] = None):
    """The pyarrow dataset of one output table, None when it has no files yet."""
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()  # files may have been rewritten since this process last looked (s3fs caches ETags)
    path = join(root, name)
    if not fs.exists(path):
        return None
    return pads.dataset(
        path, filesystem=arrow_filesystem(fs), format="parquet", partitioning=PARTITIONING,
        schema=_with_date(name), exclude_invalid_files=False,
    )


def _with_date(name: str) -> pa.Schema:
    return pa.schema([*TABLES[name], pa.field("date", pa.string())])


def read_columns(
    output_uri: str, name: str, columns: list[str], storage_options: Optional[Mapping[str, Any]] = None, filter=None
) -> pa.Table:
    """Only `columns` of one output table, rows matching `filter` (a pyarrow.compute expression)."""
    dataset = _dataset(output_uri, name, storage_options)
    if dataset is None:
        return _with_date(name).empty_table().select(columns)
    return dataset.to_table(columns=columns, filter=filter)


def scan_columns(
    output_uri: str, name: str, columns: list[str], storage_options: Optional[Mapping[str, Any]] = None, filter=None,
    batch_rows: int = 262_144,
) -> Iterator[pa.RecordBatch]:
    """read_columns as a stream of record batches, one file at a time: Parquet reads only those column
    chunks, and memory stays at about a batch however many rows the table has."""
    dataset = _dataset(output_uri, name, storage_options)
    if dataset is None:
        return iter(())
    return dataset.to_batches(columns=columns, filter=filter, batch_size=batch_rows, batch_readahead=1, fragment_readahead=1)


def answered_filter(settings_id: str):
    """The answers rows an incremental run may skip: those written under settings_id."""
    import pyarrow.compute as pc

    return pc.field("settings_id") == settings_id


def permanent_failure_filter(settings_id: str):
    """The errors rows an incremental run may skip: decode failures under settings_id that the same object
    version will hit again (not a timeout or a crashed decoder)."""
    import pyarrow.compute as pc

    return ((pc.field("settings_id") == settings_id) & (pc.field("stage") == "decode")
            & pc.field("video_version").is_valid() & ~pc.field("error_type").isin(list(_TRANSIENT_DECODE_ERRORS)))


def done_scans(
    output_uri: str, settings_id: str, storage_options: Optional[Mapping[str, Any]] = None, retry: str = "transient"
) -> tuple[Iterator[pa.RecordBatch], Iterator[pa.RecordBatch]]:
    """What an incremental run may skip, as streams of key columns: (video_uri, video_version, question)
    answered under settings_id, and (video_uri, video_version) whose decode failed for good under
    settings_id (nothing when retry='all'). Keys may repeat; video_version may be null."""
    keys = ["video_uri", "video_version", "question"]
    answered = scan_columns(output_uri, "answers", keys, storage_options, answered_filter(settings_id))
    if retry == "all":
        return answered, iter(())
    return answered, scan_columns(output_uri, "errors", keys[:2], storage_options, permanent_failure_filter(settings_id))


def segment_done_keys(
    output_uri: str, settings_id: str, uris: list[str], storage_options: Optional[Mapping[str, Any]] = None,
    retry: str = "transient",
) -> tuple[set[tuple[str, str, int, str]], set[tuple[str, str, int]]]:
    """done_scans per time segment, for a few videos (a planning batch): (video_uri, video_version,
    segment_index, question) answered under settings_id, and (video_uri, video_version, segment_index)
    whose decode failed for good. Rows written before segments existed are segment 0."""
    import pyarrow.compute as pc

    if not uris:
        return set(), set()
    these = pc.field("video_uri").isin(uris)
    keys = ["video_uri", "video_version", "segment_index"]
    answered = read_columns(output_uri, "answers", [*keys, "question"], storage_options,
                            answered_filter(settings_id) & these).to_pylist()
    failed = []
    if retry != "all":
        failed = read_columns(output_uri, "errors", keys, storage_options, permanent_failure_filter(settings_id) & these).to_pylist()
    return ({(r["video_uri"], r["video_version"], r["segment_index"] or 0, r["question"]) for r in answered},
            {(r["video_uri"], r["video_version"], r["segment_index"] or 0) for r in failed})


def done_keys(
    output_uri: str, settings_id: str, storage_options: Optional[Mapping[str, Any]] = None, retry: str = "transient"
) -> tuple[set[tuple[str, str, str]], set[tuple[str, str]]]:
    """done_scans as Python sets, for looking at a small output by hand (the job joins the streams instead)."""
    answered, failed = done_scans(output_uri, settings_id, storage_options, retry)
    return ({tuple(r.values()) for b in answered for r in b.to_pylist()},
            {tuple(r.values()) for b in failed for r in b.to_pylist()})


def table_glob(output_uri: str, name: str) -> str:
    """The glob DuckDB, Polars or pandas read a table with, e.g. s3://bucket/qa/answers/**/*.parquet."""
    fs, root = filesystem(output_uri)
    return join(to_uri(fs, root) if not is_local(output_uri) else root, name, "**", "*.parquet")


def duckdb_connect(output_uri: str, storage_options: Optional[Mapping[str, Any]] = None):
    """A DuckDB connection with views answers, errors and runs (those that have files)."""
    import duckdb

    con = duckdb.connect()
    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    if not is_local(output_uri):
        con.register_filesystem(fs)
    for name in TABLES:
        if fs.exists(join(root, name)) and fs.glob(join(root, name, "*", "*.parquet")):
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{table_glob(output_uri, name)}', hive_partitioning = true)"
            )
    return con


def draw_answer_row(row: Mapping[str, Any], storage_options: Optional[Mapping[str, Any]] = None, size: Optional[int] = None):
    """flashvlm.viz's kept-token picture (a PIL image) of one answers-table row (a dict, e.g.
    `df.iloc[0].to_dict()`). The row's video is read and decoded again with its recorded frame count, at
    `size` (default: the row's frame_size), so the frames are the ones the model saw (uniform sampling is
    deterministic)."""
    from types import SimpleNamespace

    from flashvlm.decode import Sampling
    from flashvlm.viz import draw_answer
    from pipeline.decode import read_and_decode

    size = int(size or row["frame_size"])
    frames, _ = read_and_decode(row["video_uri"], Sampling(frames=int(row["frames"]), size=size), storage_options)
    important = row.get("kept_important")
    answer = SimpleNamespace(
        kept=[list(map(int, k)) for k in row["kept"]],
        important=None if important is None else [list(map(bool, f)) for f in important],
        tokens_kept=int(row["tokens_kept"]),
        tokens_total=int(row["tokens_total"]),
    )
    return draw_answer(frames, answer, question=row["question"], budget=row.get("budget"))
