"""The run: recover, list, drop what is done, decode -> answer -> write on Ray Data, commit or roll back,
and the run record with its totals. jobs/video_qa.py is the command line over `run`.

    from pipeline.config import load_config
    from pipeline.run import run, summary_text
    cfg = load_config("configs/demo.yaml", ["selection.budget=32"])
    record = run(cfg)                       # the run record, also written to <output.uri>/runs/
    print(summary_text(cfg, record))

list (driver) -> plan (workers; sampling.segments) -> decode (CPU actor pool) -> answer (model actor pool)
-> write (Parquet) -> run record.
Ray: `ray.address` from the config, else RAY_ADDRESS (set by `ray job submit`), else a new local Ray.

Incremental runs (`incremental: true`) answer only the (video_uri, video_version, question) not yet
answered under the same settings_id (per segment_index too with sampling.segments). The run's life
(recover, stage, commit or roll back, the run record) is pipeline.lifecycle.staged_run; what a reader
sees during a commit is in docs/operations.md.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.answer import AnswerQuestions
from pipeline.cluster import check_shared_storage
from pipeline.config import JobConfig, check_model_name
from pipeline.decode import DecodeVideos
from pipeline.lifecycle import RunRecord, check_answer_failures, staged_run
from pipeline.listing import ListVideos
from pipeline.plan import plan_segments
from pipeline.questions import attach_questions, labels_of, read_questions, whole_videos
from pipeline.schema import LISTED
from pipeline.storage import arrow_filesystem, filesystem, is_local, join
from pipeline.tables import done_scans
from pipeline.todo import plan_on_workers, plans_on_workers
from pipeline.write import WriteTables

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"
MAX_BLOCKS = 10_000


# --------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------


def init_ray(cfg: JobConfig) -> None:
    """Connect to ray.address / RAY_ADDRESS, or start a local Ray; reuse one this process already has."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=cfg.ray.log_to_driver)
        return
    # Local workers inherit this environment: make the checkout importable even without `pip install -e`.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    # address="local": always a new Ray, never the latest `ray start` cluster found in /tmp/ray.
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=cfg.ray.dashboard, log_to_driver=cfg.ray.log_to_driver)


def ray_initialized() -> bool:
    import ray

    return ray.is_initialized()


def missing_locally(uri: str) -> bool:
    """A local path that does not exist (a demo generates or leaves it out); remote locations never are."""
    if not is_local(uri):
        return False
    fs, path = filesystem(uri)
    return not fs.exists(path)


def resolve_input(cfg: JobConfig) -> str:
    """input.uri, or (demo) generated clips when that local path does not exist: a shapes split written
    there (input.generate_shapes), or short synthetic clips in a temporary folder (generate_if_missing)."""
    uri = cfg.input.uri
    missing = missing_locally(uri)
    shapes = cfg.input.generate_shapes
    if shapes is not None and missing:
        path = Path(filesystem(uri)[1])
        if path.name != shapes.split:
            raise ValueError(f"input.generate_shapes: input.uri {uri} must end in the split's name {shapes.split!r}")
        from shapes.clips import write_split

        labels = write_split(path.parent, shapes.split, shapes.clips, frames=shapes.frames)
        print(f"{uri} not found: generated {shapes.clips} shapes clips ({shapes.split} split) and {labels}", flush=True)
    elif cfg.input.generate_if_missing and missing:
        folder = Path(tempfile.gettempdir()) / "flashvlm-demo-clips"
        from shapes.clips import make_clips

        make_clips(folder, cfg.input.generate_if_missing)
        print(f"{uri} not found: using {cfg.input.generate_if_missing} generated clips in {folder}", flush=True)
        return str(folder)
    return uri


def long_demo(cfg: JobConfig) -> Optional[JobConfig]:
    """The demo's second run (input.generate_long), or None: its labelled long shapes videos, written to
    that local folder when it does not exist, answered per time segment (its `segments`) with their
    time-ranged labels, into the same output. Only in a demo (input.generate_shapes or
    generate_if_missing set): a config pointed at one's own videos does not grow a second run."""
    long = cfg.input.generate_long
    if long is None or not is_demo(cfg):
        return None
    if missing_locally(long.uri):
        from shapes.clips import write_long_videos

        labels = write_long_videos(Path(filesystem(long.uri)[1]), "test", long.videos, scenes=long.scenes,
                                   scene_s=long.scene_s, frames=long.frames)
        print(f"{long.uri} not found: generated {long.videos} long shapes video(s) of {long.scenes} scenes and {labels}",
              flush=True)
    return cfg.model_copy(update=dict(
        input=cfg.input.model_copy(update=dict(uri=long.uri, extra_uris=[], generate_shapes=None, generate_if_missing=0,
                                               generate_long=None)),
        questions=[], questions_file=join(long.uri, "long_questions.jsonl"),
        sampling=cfg.sampling.model_copy(update=dict(segments=long.segments)),
        run_id=f"{cfg.run_id}-long" if cfg.run_id else None,
    ))


def is_demo(cfg: JobConfig) -> bool:
    """A demo config: one that generates its input when missing (input.generate_shapes, generate_if_missing)."""
    return cfg.input.generate_shapes is not None or cfg.input.generate_if_missing > 0


def input_locations(cfg: JobConfig, input_uri: str) -> list[str]:
    """input_uri and input.extra_uris; in a demo (input.generate_*), local extras that do not exist are left out."""
    out = [input_uri]
    for uri in cfg.input.extra_uris:
        if is_demo(cfg) and missing_locally(uri):
            print(f"{uri} not found: left out of the demo", flush=True)
            continue
        out.append(uri)
    return out


def model_gpus(cfg: JobConfig) -> float:
    """GPUs per model actor: the config's, else 1 when the cluster has a GPU and the model may use it."""
    import ray

    if cfg.ray.num_gpus is not None:
        return cfg.ray.num_gpus
    wants_cpu = (cfg.model.device or "").split(":")[0] == "cpu"
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and not wants_cpu else 0.0


def pool(size: Any):
    import ray

    lo, hi = (size, size) if isinstance(size, int) else size
    return ray.data.ActorPoolStrategy(size=lo) if lo == hi else ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def questions_of(cfg: JobConfig, input_uri: str) -> Optional[pa.Table]:
    """The questions file, read once (pipeline.questions.QUESTIONS); None without one."""
    return read_questions(cfg.questions_file, cfg.storage_options, input_uri) if cfg.questions_file else None


def list_inputs(cfg: JobConfig, input_uri: str, questions: Optional[pa.Table]) -> tuple[pa.Table, int]:
    """The videos to process, with their questions (LISTED), and how many listed videos had none.
    questions: the questions file (questions_of), or None."""
    listed = ListVideos(cfg.input.extensions, cfg.storage_options, cfg.input.allowed_prefixes)(
        pa.table({"input_uri": input_locations(cfg, input_uri)})
    )
    return attach_questions(listed, cfg.questions, questions, input_uri, cfg.input.allowed_prefixes)


def plan(cfg: JobConfig, input_uri: str, questions: Optional[pa.Table]) -> tuple[Any, int, int, int]:
    """What the run answers: (LISTED rows to do, how many, videos skipped for want of questions, videos
    already done). questions: the questions file (questions_of), or None. On the driver as a LISTED table,
    or, for an inventory or input.list_on_workers, as a Ray dataset of LISTED rows planned on workers
    (pipeline.todo) with counts from aggregates. With sampling.segments, incremental runs skip per segment
    in the planner (plan_dataset), not here."""
    if plans_on_workers(cfg, input_uri):
        todo, counts = plan_on_workers(cfg, input_uri, questions)
        return todo, counts["videos_to_do"], counts["videos_skipped"], counts["videos_already_done"]
    listed, skipped = list_inputs(cfg, input_uri, questions)
    already = 0
    if cfg.incremental and cfg.sampling.segments.mode == "none":
        listed, already = drop_done(cfg, listed)
    return listed, listed.num_rows, skipped, already


def drop_done(cfg: JobConfig, listed: pa.Table) -> tuple[pa.Table, int]:
    """Incremental runs: remove the questions already answered under this settings_id (same video
    version); returns (what is left to do, videos with nothing left). Error rows are always kept.

    Joins in Arrow, never a Python set of keys: see left_to_do."""
    answered, failed = done_scans(cfg.output.uri, cfg.settings_id(), cfg.storage_options, cfg.incremental_retry)
    return left_to_do(listed, answered, failed)


def left_to_do(listed: pa.Table, answered: Iterable, failed: Iterable) -> tuple[pa.Table, int]:
    """drop_done on given keys: `answered` yields tables or record batches of (video_uri, video_version,
    question), `failed` of (video_uri, video_version) (pipeline.tables.done_scans). Returns (LISTED rows
    left, videos with nothing left).

    Each key batch is joined on (video_uri, video_version) to the listing's row numbers, so only
    (row, question) pairs of listed videos are kept; the listing's (row, question) pairs are then
    anti-joined against them. Memory: the listing, its questions and one key batch."""
    import pyarrow.compute as pc

    listed = listed.combine_chunks()
    healthy = pc.is_null(listed.column("error"))
    errors, ok = listed.filter(pc.invert(healthy)), listed.filter(healthy)
    videos = pa.table({
        "video_uri": ok.column("video_uri"), "video_version": pc.fill_null(ok.column("video_version"), ""),
        "row": pa.array(np.arange(ok.num_rows, dtype=np.int64)),
    })

    def rows_of(parts: Iterable, extra: list[str]) -> pa.Table:
        """(row, *extra) of the listed videos whose (video_uri, video_version) each key row names."""
        found = [pa.table({"row": pa.array([], pa.int64()), **{c: pa.array([], pa.string()) for c in extra}})]
        for part in ([parts] if isinstance(parts, (pa.Table, pa.RecordBatch)) else parts):
            part = pa.table({c: part.column(c) for c in ("video_uri", "video_version", *extra)})
            part = part.set_column(1, "video_version", pc.fill_null(part.column("video_version"), ""))
            found.append(videos.join(part, ["video_uri", "video_version"], join_type="inner", use_threads=False)
                         .select(["row", *extra]))
        return pa.concat_tables(found)

    questions = ok.column("questions").combine_chunks() if ok.num_rows else pa.array([], LISTED.field("questions").type)
    parent = pc.list_parent_indices(questions)  # (Q,) row of each asked question
    asked = pa.table({"row": parent, "position": pa.array(np.arange(len(parent), dtype=np.int64)),
                      "question": pc.list_flatten(questions)})
    left = asked.join(rows_of(answered, ["question"]), ["row", "question"], join_type="left anti", use_threads=False)
    left = left.join(rows_of(failed, []), ["row"], join_type="left anti", use_threads=False)
    left = left.sort_by([("row", "ascending"), ("position", "ascending")])
    rows = left.column("row").to_numpy()
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
    offsets = pa.array(np.r_[starts, len(rows)].astype(np.int32))
    todo = ok.take(rows[starts])
    todo = todo.set_column(todo.schema.get_field_index("questions"), LISTED.field("questions"),
                           pa.ListArray.from_arrays(offsets, left.column("question").combine_chunks()))
    for name in ("question_start_s", "question_end_s"):  # parallel to questions: kept at the same positions
        if ok.column(name).null_count < ok.num_rows:
            flat = pa.array([v for qs, vs in zip(questions.to_pylist(), ok.column(name).to_pylist())
                             for v in (vs or [None] * len(qs or []))], pa.float64())
            todo = todo.set_column(todo.schema.get_field_index(name), LISTED.field(name),
                                   pa.ListArray.from_arrays(offsets, flat.take(left.column("position").combine_chunks())))
    return pa.concat_tables([todo, errors]).sort_by("video_uri"), ok.num_rows - todo.num_rows


def plan_dataset(cfg: JobConfig, listed):
    """list -> plan, as a lazy Ray dataset of PLANNED rows, one per time segment. `listed` is the driver's
    LISTED table, or a Ray dataset of LISTED rows (planned on workers, pipeline.todo). Whole videos
    (sampling.segments.mode none) are one segment each, made in Arrow; otherwise pipeline.plan runs on Ray
    workers, and its rows are cut into blocks of decode_batch_size so one video's segments spread over
    every decode actor. Planning runs to the end before decoding starts (see below)."""
    import ray

    segmented = cfg.sampling.segments.mode != "none"
    if isinstance(listed, pa.Table):
        if not segmented:
            listed = whole_videos(listed)
        # Small blocks, so every actor gets work early; at most MAX_BLOCKS of them, so a million videos
        # are not a million object refs in the driver.
        per_block = max(1 if segmented else cfg.ray.decode_batch_size, -(-listed.num_rows // MAX_BLOCKS))
        ds = ray.data.from_arrow([listed.slice(i, per_block) for i in range(0, listed.num_rows, per_block)])
    elif not segmented:
        ds = listed.map_batches(whole_videos, batch_format="pyarrow")
    else:
        ds = listed
    if not segmented:
        return ds
    done = None
    if cfg.incremental:  # skipped per segment by the planner (the listing cannot know the segments)
        done = dict(output_uri=cfg.output.uri, settings_id=cfg.settings_id(), storage_options=cfg.storage_options,
                    retry=cfg.incremental_retry)
    planned = ds.map_batches(
        plan_segments,
        fn_kwargs=dict(segments=cfg.sampling.segments.model_dump(), storage_options=cfg.storage_options, done=done),
        batch_size=1,
        batch_format="pyarrow",
    ).repartition(target_num_rows_per_block=cfg.ray.decode_batch_size)
    # Planned in an execution of its own, before the decode and model pools exist: in one execution their
    # actors hold their CPUs from the start, and a planning task that finds none left waits forever (a
    # 2-CPU Ray with one decode and one model actor). The segments stay blocks in the object store; the
    # driver holds their references only.
    return planned.materialize()


def decode_dataset(cfg: JobConfig, listed, planned=None):
    """list -> plan -> decode, as a lazy Ray dataset of DECODED rows (the pipeline's first half); `listed` as
    plan_dataset takes it; `planned`: plan_dataset(cfg, listed) already made (benchmarks time the decode alone)."""
    return (plan_dataset(cfg, listed) if planned is None else planned).map_batches(
        DecodeVideos,
        fn_constructor_kwargs=dict(
            **cfg.sampling.frame_options(), storage_options=cfg.storage_options, timeout_s=cfg.ray.decode_timeout_s,
            threads=cfg.ray.decode_threads,
        ),
        batch_size=cfg.ray.decode_batch_size,
        batch_format="pyarrow",
        compute=pool(cfg.ray.decode_actors),
        num_cpus=cfg.ray.decode_num_cpus,
    )


def build_dataset(cfg: JobConfig, listed, stage_uri: str, record: RunRecord, labels: Optional[pa.Table] = None):
    """list -> decode -> answer -> write, as one lazy Ray dataset of WRITE_SUMMARY rows; the tables are
    written under stage_uri (the run's staging folder) for the commit to publish, the labels joined by the writer."""
    ds = decode_dataset(cfg, listed)
    ds = ds.map_batches(
        AnswerQuestions,
        fn_constructor_kwargs=dict(
            model=cfg.model.model_dump(),
            selection=cfg.selection.model_dump(),
            selection_options=cfg.selection.library_options(),
            frame_size=cfg.sampling.size,
            run_id=record.run_id,
            settings_id=record.settings_id,
        ),
        batch_size=cfg.ray.model_batch_size,
        batch_format="pyarrow",
        compute=pool(cfg.ray.model_actors),
        num_cpus=cfg.ray.model_num_cpus,
        num_gpus=model_gpus(cfg),
    )
    return ds.map_batches(
        WriteTables,
        fn_constructor_kwargs=dict(
            output_uri=stage_uri, storage_options=cfg.storage_options, run_id=record.run_id, run_date=record.run_date,
            labels=labels,
        ),
        batch_size=cfg.ray.write_batch_size,
        batch_format="pyarrow",
        compute=pool(1),
        num_cpus=cfg.ray.write_num_cpus,
    )


def add_totals(record: RunRecord, summaries: list[dict[str, Any]]) -> Counter:
    """Sum the writers' WRITE_SUMMARY rows into the record; returns the answer stage's failures by error."""
    for key in ("answers", "videos_ok", "videos_failed", "frames_decoded", "tokens_kept", "tokens_total",
                "answers_labelled", "answers_correct"):
        setattr(record, key, sum(int(s[key]) for s in summaries))
    record.decode_s = sum(s["decode_ms"] for s in summaries) / 1000.0
    record.answer_s = sum(s["answer_ms"] for s in summaries) / 1000.0
    record.nodes = sorted({n for s in summaries for n in s.get("nodes") or []})
    failures: Counter = Counter()
    for s in summaries:
        for item in s.get("answer_errors") or []:
            failures[item["error"]] += int(item["videos"])
    return failures


def run(cfg: JobConfig) -> RunRecord:
    """Run the whole job; returns the run record (also written to runs/). Raises if the run fails.

    All or nothing (pipeline.lifecycle.staged_run): the run's files are staged and committed at the end;
    a run that raises is rolled back (its record, status failed, still goes to runs/). model.name is
    checked first, and local storage on a cluster of several nodes is refused, before anything is written
    (ConfigError).
    """
    check_model_name(cfg.model.name)
    ray_init_s = None
    if cfg.ray.address or os.environ.get("RAY_ADDRESS") or ray_initialized():
        # An existing cluster may have several nodes: refuse local storage before anything is read or written.
        t1 = time.perf_counter()
        init_ray(cfg)
        ray_init_s = time.perf_counter() - t1
        check_shared_storage(cfg)
    with staged_run(cfg, kind="run") as staged:
        record = staged.record
        record.ray_init_s = ray_init_s
        input_uri = resolve_input(cfg)
        questions = questions_of(cfg, input_uri)
        if plans_on_workers(cfg, input_uri):
            t1 = time.perf_counter()
            init_ray(cfg)
            record.ray_init_s = record.ray_init_s or time.perf_counter() - t1
        listed, to_do, skipped, already = plan(cfg, input_uri, questions)
        record.videos_listed, record.videos_skipped, record.videos_already_done = to_do + skipped + already, skipped, already
        record.listing_s = staged.elapsed()
        print(f"run {record.run_id}: {to_do} videos to answer ({skipped} without questions skipped, "
              f"{already} already done)", flush=True)
        summaries: list[dict[str, Any]] = []
        if to_do:
            t1 = time.perf_counter()
            init_ray(cfg)
            record.ray_init_s = record.ray_init_s or time.perf_counter() - t1
            t1 = time.perf_counter()
            summaries = build_dataset(cfg, listed, staged.staging_uri, record, labels_of(questions)).take_all()
            record.pipeline_s = time.perf_counter() - t1
        failures = add_totals(record, summaries)
        check_answer_failures(record.videos_ok, failures, cfg.run.max_answer_failure_share)
        staged.staged += [f for s in summaries for f in s["files"]]
    return record


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def failures(cfg: JobConfig, record: RunRecord, limit: int = 10) -> list[str]:
    """One line per failed video of this run, read back from the error files it wrote."""
    fs, _ = filesystem(cfg.output.uri, cfg.storage_options)
    fs.invalidate_cache()  # a retry rewrote these files: s3fs must not reuse an earlier ETag
    lines = []
    for path in (f for f in record.files if "/errors/" in f):
        for row in pq.read_table(path, filesystem=arrow_filesystem(fs)).to_pylist():
            name = row["video_uri"].rsplit("/", 1)[-1]
            lines.append(f"    {name:<32} {row['stage']:<7} {row['error_type']}: {(row['error'] or '')[:90]}")
    return sorted(lines)[:limit] + ([f"    ... and {len(lines) - limit} more"] if len(lines) > limit else [])


def accuracy(record: RunRecord) -> str:
    """'c of n (p%)' of a run record's labelled answers ('no labels' without)."""
    n = record.answers_labelled or 0
    return f"{record.answers_correct} of {n} ({100.0 * record.answers_correct / n:.1f}%)" if n else "no labels"


def long_demo_line(long_cfg: JobConfig, clips: RunRecord, long: RunRecord) -> str:
    """The demo's accuracy on the clips beside that on the long videos per segment (long_demo's run)."""
    return (f"accuracy: clips {accuracy(clips)}; long videos in {long_cfg.sampling.segments.mode} mode, per segment"
            f" ({long.videos_ok} segments): {accuracy(long)}")


def summary_text(cfg: JobConfig, record: RunRecord) -> str:
    """What the job prints at the end: counts, time per stage, failed videos, where the tables are, and a
    DuckDB one-liner that runs as printed."""
    kept, total = record.tokens_kept, record.tokens_total
    share = f" ({100.0 * kept / total:.1f}%)" if total else ""
    out = cfg.output.uri.rstrip("/")
    answers_glob = f"{out}/answers/**/*.parquet"
    lines = [
        "",
        f"run {record.run_id} {record.status} in {record.wall_s:.1f} s",
        f"  {'videos' if cfg.sampling.segments.mode == 'none' else 'segments'}: {record.videos_ok} ok,"
        f" {record.videos_failed} failed, {record.videos_skipped} skipped,"
        f" {record.videos_already_done or 0} already done (of {record.videos_listed} listed);"
        f" frames decoded: {record.frames_decoded}",
        f"  answers: {record.answers} rows; visual tokens kept {kept} of {total}{share}",
        *([f"  accuracy on labelled questions: {accuracy(record)} at"
           f" {cfg.selection.budget or 'every'} visual tokens a frame"] if record.answers_labelled else []),
        f"  time: listing {record.listing_s or 0:.1f} s, ray start {record.ray_init_s or 0:.1f} s,"
        f" pipeline {record.pipeline_s or 0:.1f} s"
        f" (decode {record.decode_s:.1f} s, model {record.answer_s:.1f} s summed over actors)",
    ]
    if record.videos_failed:
        lines += ["  failed videos:", *failures(cfg, record)]
    lines += [
        "  tables (Parquet, Hive-partitioned by date):",
        *(f"    {name:<8} {join(out, name)}/date={record.run_date}/" for name in ("answers", "errors", "runs")),
        "  query them with DuckDB:",
        f"    python -c \"import duckdb; duckdb.sql(\\\"SELECT video_uri, question, answer, tokens_kept, tokens_total"
        f" FROM read_parquet('{answers_glob}', hive_partitioning=true) WHERE run_id = '{record.run_id}'\\\").show()\"",
    ]
    if not is_local(cfg.output.uri):
        lines.append("    (S3: `INSTALL httpfs; LOAD httpfs;` first, or pipeline.tables.duckdb_connect for fsspec credentials)")
    return "\n".join(lines)
