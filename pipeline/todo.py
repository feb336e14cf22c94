"""The plan as Ray Data stages: listing, questions and the incremental filter without a row per video in
the driver (pipeline.run.plan picks it for inventories and input.list_on_workers).

    from pipeline.todo import plan_on_workers
    todo, counts = plan_on_workers(cfg, input_uri, questions)   # questions: pipeline.run.questions_of (or None)

    listing (inventory / manifest / folder, read on workers)     one row per video, errors included
      -> units: one row per (video, question, range) asked       common questions x videos; the QUESTIONS
                                                                 table in one full_outer join on the canonical URI
      -> left_anti join with answers/ (same settings_id)  on UNIT_KEY    } sampling.segments mode none; otherwise
      -> left_anti join with permanent decode failures    on VIDEO_KEY   } the planner skips per segment
      -> regroup the units left into one LISTED row per video (questions in asking order, ranges parallel)
      + listing error rows, questions_file videos the listing lacks (error rows, questions.not_listed)

Each join hash-partitions both sides over Ray's workers (Dataset.join runs polars per partition); the
driver holds block references and the counts, never keys (the questions file is the exception: the driver
reads it once, as on the driver path, since the writer joins its labels). The to-do set is materialised in
the object store (a few percent of the listing on an incremental rerun); pipeline.run.plan_dataset reads it.

The join key. UNIT_KEY is (video_uri, version_key, question) within one settings_id: the answers are read
filtered to the run's settings_id, so the settings need no column in the key. version_key is
video_version with null as "" (a store without versions), so nulls match each other as the driver path
did. A question asked over several ranges is one key, as in the driver's drop_done.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import JobConfig
from pipeline.inventory import is_inventory, read_inventory
from pipeline.listing import GLOB_CHARS, MANIFEST_SUFFIXES, ListVideos, list_on_workers, manifest_on_workers
from pipeline.questions import canonical_uris, not_listed, own_questions
from pipeline.schema import LISTED
from pipeline.storage import arrow_filesystem, filesystem, join
from pipeline.tables import answered_filter, permanent_failure_filter

VIDEO_KEY = ["video_uri", "version_key"]
UNIT_KEY = [*VIDEO_KEY, "question"]
UNITS = pa.schema([("video_uri", pa.string()), ("version_key", pa.string()), ("video_size", pa.int64()),
                   ("question", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()), ("position", pa.int64())])
ROWS_PER_PARTITION = 1_000_000  # join partition size: a partition is joined in one polars call
READ_TASKS_PER_CPU = 2  # read tasks of a listing input or an output table, per CPU of the cluster


def read_tasks() -> int:
    """How many tasks read a listing input or an output table: READ_TASKS_PER_CPU per CPU of the cluster, not
    one per file. Ray Data keeps 20-90 KB in the driver for every task and block it runs, not freed with the
    dataset (Ray 2.60; benchmarks/driver_blocks.py), so a task count that follows the cluster, with blocks
    that grow with the collection up to Ray's target block size, keeps the driver flat where one task per
    file grows with the collection."""
    import ray

    return max(1, READ_TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))


def partitions_for(rows: int) -> int:
    """How many hash partitions a join of `rows` rows gets: about ROWS_PER_PARTITION each. Each partition is
    one aggregator actor, whose start costs more than joining a million rows."""
    return max(1, math.ceil(rows / ROWS_PER_PARTITION))


# ---- per-batch steps (run inside map_batches on workers) -----------------------------------------------------


def healthy_rows(batch: pa.Table, errors: bool = False) -> pa.Table:
    """The rows without an error (or, errors=True, with one)."""
    failed = pc.is_valid(batch.column("error"))
    return batch.filter(failed if errors else pc.invert(failed))


def common_units(batch: pa.Table, questions: Sequence[str]) -> pa.Table:
    """UNITS: each video of the batch times each common question, position = the question's index."""
    n, k = batch.num_rows, len(questions)
    rows = np.repeat(np.arange(n), k)  # (n*k,) video of each unit
    which = np.tile(np.arange(k), n)  # (n*k,) question of each unit
    return pa.table({
        "video_uri": batch.column("video_uri").take(rows),
        "version_key": pc.fill_null(batch.column("video_version"), "").take(rows),
        "video_size": batch.column("video_size").take(rows),
        "question": pa.array(list(questions), pa.string()).take(which),
        "start_s": pa.nulls(n * k, pa.float64()),
        "end_s": pa.nulls(n * k, pa.float64()),
        "position": pa.array(which, pa.int64()),
    }, schema=UNITS)


def keys_of(batch: pa.Table, columns: Sequence[str], where=None) -> pa.Table:
    """Key columns of an answers/errors batch (video_version as version_key), rows matching `where`."""
    if where is not None:
        batch = batch.filter(where)
    out = {"video_uri": batch.column("video_uri"), "version_key": pc.fill_null(batch.column("video_version"), "")}
    return pa.table({**out, **{c: batch.column(c) for c in columns if c not in ("video_uri", "video_version")}})


def regroup(units: pa.Table) -> pa.Table:
    """LISTED rows from units, one per video: its questions in asking order (position), each (question,
    range) once, the ranges in question_start_s / question_end_s at the same positions (null lists when
    the block has no ranged question, as attach_questions leaves them). The units of a video are in one
    block (to_listed hash-partitions them by VIDEO_KEY first)."""
    # A null range (the whole video) grouped as -1: group keys are compared as values.
    units = units.set_column(units.schema.get_field_index("start_s"), "start_s", pc.fill_null(units.column("start_s"), -1.0))
    units = units.set_column(units.schema.get_field_index("end_s"), "end_s", pc.fill_null(units.column("end_s"), -1.0))
    first = units.group_by([*UNIT_KEY, "start_s", "end_s"], use_threads=False).aggregate([("position", "min"), ("video_size", "max")])
    first = first.sort_by([("video_uri", "ascending"), ("version_key", "ascending"), ("position_min", "ascending")])
    ranged = pc.greater_equal(first.column("start_s"), 0.0)
    for name in ("start_s", "end_s"):
        first = first.set_column(first.schema.get_field_index(name), name,
                                 pc.if_else(ranged, first.column(name), pa.scalar(None, pa.float64())))
    videos = first.group_by(VIDEO_KEY, use_threads=False).aggregate(
        [("question", "list"), ("start_s", "list"), ("end_s", "list"), ("video_size_max", "max")])
    n = videos.num_rows
    version = videos.column("version_key")
    nothing = pa.nulls(n, pa.string())
    any_range = pc.any(ranged).as_py()
    starts, ends = ((pc.cast(videos.column(f"{c}_list"), LISTED.field(f"question_{c}").type) if any_range
                     else pa.nulls(n, LISTED.field(f"question_{c}").type)) for c in ("start_s", "end_s"))
    return pa.Table.from_arrays([
        videos.column("video_uri"), pc.if_else(pc.equal(version, ""), nothing, version),
        videos.column("video_size_max_max"), pc.cast(videos.column("question_list"), LISTED.field("questions").type),
        starts, ends, nothing, nothing, nothing,
    ], schema=LISTED)


def with_questions(batch: pa.Table) -> pa.Table:
    """Listing error rows as LISTED (no questions asked of a video that could not be listed)."""
    return pa.table({n: batch.column(n) if n in batch.column_names else pa.nulls(batch.num_rows, LISTED.field(n).type)
                     for n in LISTED.names}, schema=LISTED)


def materialized(ds, schema: pa.Schema):
    """ds executed into the object store, without its empty blocks: a read task that finds nothing leaves a
    block without columns, and Ray 2.60's hash shuffle then fails to concatenate its shards with typed ones.
    The driver holds one reference per block."""
    import ray

    bundles = ds.materialize().iter_internal_ref_bundles()
    refs = [ref for b in bundles for ref, meta in zip(b.block_refs, b.metadata) if meta.num_rows]
    return ray.data.from_arrow_refs(refs) if refs else ray.data.from_arrow(schema.empty_table())


# ---- reading the output tables as datasets --------------------------------------------------------------


def table_dataset(output_uri: str, name: str, columns: list[str], storage_options: Optional[Mapping[str, Any]] = None):
    """One output table (answers, errors) as a lazy Ray dataset of `columns`, read by read_tasks() tasks; None
    when it has no files. The driver lists the table's files (one per run and writer, not per video)."""
    import ray

    fs, root = filesystem(output_uri, storage_options)
    fs.invalidate_cache()
    path = join(root, name)
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet")) if fs.exists(path) else []
    if not files:
        return None
    return ray.data.read_parquet(files, filesystem=arrow_filesystem(fs), columns=columns, partitioning=None,
                                 override_num_blocks=min(len(files), read_tasks()))


def answered_units(output_uri: str, settings_id: str, storage_options=None):
    """(video_uri, version_key, question) answered under settings_id, as a dataset (None: none yet)."""
    ds = table_dataset(output_uri, "answers", ["video_uri", "video_version", "question", "settings_id"], storage_options)
    return None if ds is None else ds.map_batches(
        keys_of, fn_kwargs=dict(columns=["question"], where=answered_filter(settings_id)), batch_format="pyarrow")


def failed_videos(output_uri: str, settings_id: str, storage_options=None, retry: str = "transient"):
    """(video_uri, version_key) whose decode failed for good under settings_id (None: none, or retry=all)."""
    if retry == "all":
        return None
    ds = table_dataset(output_uri, "errors", ["video_uri", "video_version", "stage", "error_type", "settings_id"], storage_options)
    return None if ds is None else ds.map_batches(
        keys_of, fn_kwargs=dict(columns=[], where=permanent_failure_filter(settings_id)), batch_format="pyarrow")


# ---- the listing and the questions file as datasets --------------------------------------------------------


def plans_on_workers(cfg: JobConfig, input_uri: str) -> bool:
    """Whether the run plans with plan_on_workers: input.list_on_workers, or an inventory input."""
    return cfg.input.list_on_workers or cfg.input.inventory or is_inventory(input_uri)


def list_rows(batch: pa.Table, extensions: Sequence[str], storage_options=None, allowed_prefixes: Sequence[str] = ()) -> pa.Table:
    """For `map_batches`: pipeline.listing.ListVideos in a task (a glob or a single file)."""
    return ListVideos(extensions, storage_options, allowed_prefixes)(batch)


def _one_listing(cfg: JobConfig, uri: str):
    import ray

    options, extensions = cfg.storage_options, cfg.input.extensions
    if cfg.input.inventory or is_inventory(uri):
        return read_inventory(uri, extensions, cfg.input.inventory_prefix, options, tasks=read_tasks()).map_batches(
            with_questions, batch_format="pyarrow")
    fs, path = filesystem(uri, options)
    if not (GLOB_CHARS & set(path)):
        if fs.isdir(path):
            return list_on_workers(uri, extensions, options)
        if path.lower().endswith(MANIFEST_SUFFIXES):
            return manifest_on_workers(uri, options, cfg.input.allowed_prefixes)
    return ray.data.from_items([{"input_uri": uri}]).map_batches(
        list_rows, fn_kwargs=dict(extensions=list(extensions), storage_options=options, allowed_prefixes=list(cfg.input.allowed_prefixes)),
        batch_size=1, batch_format="pyarrow")


def listing_dataset(cfg: JobConfig, input_uri: str):
    """LISTED rows (questions empty) of input_uri and input.extra_uris, listed on workers: a lazy dataset."""
    from pipeline.run import input_locations

    parts = [_one_listing(cfg, uri) for uri in input_locations(cfg, input_uri)]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


MISSING = pa.schema([("uri_key", pa.string()), ("question", pa.string()), ("position", pa.int64())])  # questions of unlisted videos


def video_keys(batch: pa.Table) -> pa.Table:
    """(video_uri, version_key, video_size, listed_ok, uri_key) of LISTED rows; listed_ok: no listing error."""
    return pa.table({"video_uri": batch.column("video_uri"), "version_key": pc.fill_null(batch.column("video_version"), ""),
                     "video_size": batch.column("video_size"), "listed_ok": pc.is_null(batch.column("error")),
                     "uri_key": canonical_uris(batch.column("video_uri"))})


def asked_units(batch: pa.Table) -> pa.Table:
    """Rows of the listing x questions join with both sides: UNITS of listed videos."""
    found = pc.and_(pc.fill_null(batch.column("listed_ok"), False), pc.is_valid(batch.column("question")))
    return batch.filter(found).select(UNITS.names).cast(UNITS)


def unlisted_questions(batch: pa.Table) -> pa.Table:
    """Rows of the listing x questions join without a listed video: MISSING."""
    return batch.filter(pc.is_null(batch.column("video_uri"))).select(MISSING.names).cast(MISSING)


def unasked_videos(batch: pa.Table) -> pa.Table:
    """Rows of the listing x questions join of listed videos the questions file does not name."""
    return batch.filter(pc.and_(pc.fill_null(batch.column("listed_ok"), False), pc.is_null(batch.column("question")))).select(["uri_key"])


def missing_rows(batch: pa.Table, common: Sequence[str], input_uri: str, allowed_prefixes: Sequence[str]) -> pa.Table:
    """For `map_batches` over all of MISSING in one batch: one LISTED error row per questions_file video the
    listing lacks (pipeline.questions.not_listed)."""
    return not_listed(batch.rename_columns(["video_uri", "question", "position"]), common, input_uri, allowed_prefixes)


def questions_dataset(questions: pa.Table, common: Sequence[str], cfg: JobConfig, input_uri: str, listed, rows: int):
    """The QUESTIONS table (pipeline.run.questions_of) joined to the listing on the canonical video_uri, in
    one full outer join: (UNITS of listed videos, ranges kept; LISTED error rows of the videos it names that
    the listing lacks; listed videos it does not name, the skipped ones when there are no common questions)."""
    import ray

    own = own_questions(questions, common)
    asked = ray.data.from_arrow(own.rename_columns(["uri_key", *own.column_names[1:]]))
    videos = listed.map_batches(video_keys, batch_format="pyarrow")
    joined = materialized(videos.join(asked, join_type="full_outer", num_partitions=partitions_for(rows), on=("uri_key",)),
                          pa.schema([*video_keys(LISTED.empty_table()).schema, *own.schema.remove(0)]))
    units = joined.map_batches(asked_units, batch_format="pyarrow")
    # Few, by nature (each is an error row): gathered into one block, so a video's questions meet.
    missing = materialized(joined.map_batches(unlisted_questions, batch_format="pyarrow"), MISSING).repartition(1).map_batches(
        missing_rows, fn_kwargs=dict(common=list(common), input_uri=input_uri, allowed_prefixes=list(cfg.input.allowed_prefixes)),
        batch_size=None, batch_format="pyarrow")
    skipped = 0 if common else joined.map_batches(unasked_videos, batch_format="pyarrow").count()
    return units, materialized(missing, LISTED), skipped


# ---- the plan ----------------------------------------------------------------------------------------


def left_to_do(units, answered, failed, rows: int):
    """The units of `units` not answered and not of a video that failed for good: two left_anti joins,
    each hash-partitioned over the workers. `rows` (about the units' count) sizes the first join's partitions,
    what it leaves the second's. What the first join leaves is materialised before the second shuffle starts
    (two shuffles in one execution each reserve aggregator memory and CPU, and on a small cluster they can
    starve the map tasks that feed them), and so is the result, once."""
    if answered is not None:
        units = units.join(answered, join_type="left_anti", num_partitions=partitions_for(rows), on=tuple(UNIT_KEY))
    units = materialized(units, UNITS)
    if failed is not None and failed.count():  # usually no permanent failures: no second shuffle then
        units = materialized(units.join(failed, join_type="left_anti", num_partitions=partitions_for(units.count()), on=tuple(VIDEO_KEY)), UNITS)
    return units


def to_listed(units, rows: int):
    """One LISTED row per video from its units: hash-partitioned by VIDEO_KEY, so a video's units meet in one
    block, then regrouped there in Arrow (no Python call per video)."""
    return units.repartition(partitions_for(rows), keys=VIDEO_KEY).map_batches(regroup, batch_size=None, batch_format="pyarrow")


def plan_on_workers(cfg: JobConfig, input_uri: str, questions: Optional[pa.Table] = None) -> tuple[Any, dict[str, int]]:
    """The run's to-do set as a materialised Ray dataset of LISTED rows (error rows included), and its counts
    from aggregates: videos_listed, videos_skipped (no question to ask), videos_already_done, videos_to_do.
    questions: the questions file as read once by the driver (pipeline.run.questions_of), or None. With
    sampling.segments the answered units are skipped per segment by the planner, not here."""
    listed = materialized(listing_dataset(cfg, input_uri), LISTED)  # in the object store; the driver holds block refs
    listed_rows = listed.count()
    healthy = listed.map_batches(healthy_rows, batch_format="pyarrow")
    errors = listed.map_batches(healthy_rows, fn_kwargs=dict(errors=True), batch_format="pyarrow").map_batches(
        with_questions, batch_format="pyarrow")
    units = None
    common = list(dict.fromkeys(cfg.questions))
    if common:
        units = healthy.map_batches(common_units, fn_kwargs=dict(questions=common), batch_format="pyarrow")
    missing, skipped = None, 0
    if questions is not None and questions.num_rows:
        own, missing, skipped = questions_dataset(questions, common, cfg, input_uri, listed, listed_rows)
        units = own if units is None else units.union(own)
    elif units is None:  # nothing to ask: only error rows stay
        skipped = listed_rows - errors.count()
    if units is None:
        todo = errors
    else:
        rows = listed_rows * max(1, len(cfg.questions))  # about the units asked
        if cfg.incremental and cfg.sampling.segments.mode == "none":
            answered = answered_units(cfg.output.uri, cfg.settings_id(), cfg.storage_options)
            failed = failed_videos(cfg.output.uri, cfg.settings_id(), cfg.storage_options, cfg.incremental_retry)
            units = left_to_do(units, answered, failed, rows)
            rows = units.count()  # what is left (materialised: read off its blocks' metadata)
        todo = to_listed(units, rows).union(errors)
    if missing is not None:
        todo = todo.union(missing)
    todo = materialized(todo, LISTED)
    error_rows = errors.count()
    to_do = todo.count()
    missing_rows = 0 if missing is None else missing.count()
    healthy_to_do = to_do - error_rows - missing_rows
    already = listed_rows - error_rows - skipped - healthy_to_do
    return todo, {"videos_listed": listed_rows + missing_rows, "videos_skipped": skipped,
                  "videos_already_done": already, "videos_to_do": to_do}

