"""What pruning costs in answers: one sample through the model at a grid of selection settings.

    from pipeline.eval_config import DEFAULT_CONFIG, load_eval_config
    from pipeline.evaluate import evaluate
    cfg = load_eval_config(DEFAULT_CONFIG, ["model.name=flashvlm-tiny/shapes"])
    report = evaluate(cfg)            # rows under <output.uri>/evaluations/, tables, plot, JSON summary

The sample is a labels file (`questions_file`: JSONL, Parquet or CSV) with one row per item:
    video_uri, question                 required (video_uri relative to input.uri, as for the main job)
    answer                              the label (null: unlabelled, scored by agreement only)
    choices                             a list of options: multiple choice, scored by log-likelihood
    question_type                       any grouping label (shapes: colour, shape, count, motion, exists)
    object_patches                      [[frame, index], ...]: the patches the question's object covers
    start_s, end_s                      the time range it asks about (null: the whole video)
plus `questions` from the config, asked of every video, unlabelled. With `sampling.segments` a video is
planned into segments as by the main job, and each segment is a clip of its own: an item with a time range
is asked of the segments that range overlaps, the others of every segment; an evaluated item is then
(item, segment_index), and the paired intervals resample segments.

The grid: `evaluation.budgets` (tokens per frame; null = all) x `evaluation.settings` (method + its
options). The full budget is run once (method "full"): every method keeps everything there, and it is
the reference of agreement and retention. Each video is decoded once (the main job's decode stage) and
its vision features computed once (`adapter.encode_video`); every setting reuses them
(`answer_features`, `score_choices`). Ray like the main job: ray.address / RAY_ADDRESS / a local Ray.

Scores per (item, setting) row:
    correct           open answers: pipeline.scoring.is_correct against the label; multiple choice:
                      the option with the highest log-likelihood is the label (its text or its letter);
    agrees_with_full  the answer equals the same model's full-budget answer (label-free);
    object_recall     share of the item's object_patches kept (pipeline.scoring.object_recall).
Output: <output.uri>/evaluations/date=D/<run_id>.parquet (pipeline.schema.EVALUATIONS), a run record in
runs/, both committed like the main job's (pipeline.lifecycle.staged_run); and
<output.uri>/reports/<run_id>/ with the printed tables (tables.txt), the JSON summary (summary.json) and
the plot (accuracy_vs_tokens.png).

The summary compares every method with flashvlm on the same items (pipeline/statistics.py: difference,
clip bootstrap interval, McNemar's p) and marks the question types whose full-budget accuracy is near chance.

Modules: eval_config.py (the config and the grid), eval_labels.py (the labels file and each video's items),
eval_actor.py (the model stage), eval_plot.py (the plot); here the run and its summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Optional

import pyarrow as pa

from pipeline.config import check_model_name
from pipeline.eval_actor import EvaluateVideos
from pipeline.eval_config import FULL, EvalConfig, grid_of
from pipeline.eval_labels import items_by_video, read_labels
from pipeline.eval_plot import plot
from pipeline.lifecycle import RunRecord, check_answer_failures, staged_run
from pipeline.run import decode_dataset, init_ray, list_inputs, model_gpus, pool, questions_of, resolve_input
from pipeline.report import machine
from pipeline.schema import EVALUATIONS
from pipeline.statistics import group_options, item_key, markdown_table, paired_summary
from pipeline.storage import filesystem, join
from pipeline.write import ParquetWriter, partition_dir

# --------------------------------------------------------------------------------------------------
# Summaries: tables, JSON
# --------------------------------------------------------------------------------------------------


def _mean(values: list[Any]) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]], by_type: bool = False) -> list[dict[str, Any]]:
    """One dict per (method, options, budget[, question_type]) over the scored rows, in grid order:
    accuracy, retention (accuracy / the full budget's), agreement, object_recall, ms_per_answer, items.
    A random setting run at several seeds is one dict: its figures are the means over the seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["error"] is None:
            key = (row["method"], group_options(row["method"], row["options"]), row["budget"]) + ((row["question_type"],) if by_type else ())
            groups.setdefault(key, []).append(row)
    full_accuracy = {}
    for key, members in groups.items():
        if key[0] == FULL:
            full_accuracy[key[3:]] = _mean([r["correct"] for r in members])
    out = []
    for key, members in groups.items():
        accuracy = _mean([r["correct"] for r in members])
        reference = full_accuracy.get(key[3:])
        out.append({
            "method": key[0], "budget": key[2], "options": json.loads(key[1]),
            **({"question_type": key[3]} if by_type else {}),
            "items": len({item_key(r) for r in members}), "accuracy": accuracy,
            "retention": accuracy / reference if accuracy is not None and reference else None,
            "agreement": _mean([r["agrees_with_full"] for r in members]),
            "object_recall": _mean([r["object_recall"] for r in members]),
            "ms_per_answer": _mean([r["latency_ms"] for r in members]),
            "tokens_per_frame": _mean([r["tokens_kept"] / r["frames"] for r in members if r["frames"]]),
        })
    return out


def _cell(value: Optional[float], percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100.0 * value:.1f}%" if percent else f"{value:.1f}"


def format_table(results: list[dict[str, Any]], by_type: bool = False) -> str:
    without = any(r.get("accuracy_without_near_chance") is not None for r in results)  # see pipeline.statistics
    head = ["method", "options", "budget", *(["type"] if by_type else []), "items", "accuracy",
            *(["acc. w/o near-chance types"] if without else []), "retention", "agreement", "obj.recall", "ms/answer"]
    lines = [[r["method"], json.dumps(r["options"], sort_keys=True) if r["options"] else "",
              "all" if r["budget"] is None else str(r["budget"]),
              *([str(r["question_type"]) + (" (near chance)" if r.get("near_chance") else "")] if by_type else []),
              str(r["items"]), _cell(r["accuracy"]), *([_cell(r.get("accuracy_without_near_chance"))] if without else []),
              _cell(r["retention"]), _cell(r["agreement"]), _cell(r["object_recall"]),
              _cell(r["ms_per_answer"], percent=False)] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(cells) for cells in lines)])



# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def evaluated_rows(cfg: EvalConfig, listed: pa.Table, items: dict[str, list[dict[str, Any]]], record: RunRecord) -> pa.Table:
    """decode -> EvaluateVideos on Ray, as one EVALUATIONS table in item order."""
    ds = decode_dataset(cfg, listed).map_batches(
        EvaluateVideos,
        fn_constructor_kwargs=dict(
            model=cfg.model.model_dump(), selection=cfg.selection.model_dump(),
            selection_options=cfg.selection.library_options(), items=items, grid=grid_of(cfg), run_id=record.run_id,
        ),
        batch_size=cfg.ray.model_batch_size, batch_format="pyarrow", compute=pool(cfg.ray.model_actors),
        num_cpus=cfg.ray.model_num_cpus, num_gpus=model_gpus(cfg),
    )
    return pa.Table.from_pylist(ds.take_all(), schema=EVALUATIONS)


def add_totals(record: RunRecord, rows: list[dict[str, Any]]) -> Counter:
    """The record's totals over the evaluation's rows; returns the videos whose full-budget reference
    failed in the answer stage, by error (what the failure policy weighs)."""
    scored = [r for r in rows if r["error"] is None]
    record.answers, record.videos_ok = len(scored), len({r["video_uri"] for r in scored})
    record.videos_failed = len({r["video_uri"] for r in rows if r["error_stage"] in ("list", "read", "decode")})
    record.tokens_kept, record.tokens_total = sum(r["tokens_kept"] for r in scored), sum(r["tokens_total"] for r in scored)
    record.frames_decoded = sum({r["video_uri"]: r["frames"] for r in scored}.values())
    record.answer_s = sum(r["latency_ms"] for r in scored) / 1000.0
    failed = {r["video_uri"]: f"{r['error_type']}: {r['error']}" for r in rows
              if r["error_stage"] == "answer" and r["method"] == FULL}
    return Counter(failed.values())


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; returns {"record", "results", "by_type", "tables", "plot", "summary", "folder"}.

    model.name and the labels file are checked before anything runs (ConfigError, LabelsFileError)."""
    check_model_name(cfg.model.name)
    input_uri = resolve_input(cfg)
    # A malformed labels file is refused before anything runs, naming the file and the row.
    labelled = read_labels(cfg.questions_file, cfg.storage_options) if cfg.questions_file else []
    with staged_run(cfg, kind="evaluation") as staged:
        record = staged.record
        listed, skipped = list_inputs(cfg, input_uri, questions_of(cfg, input_uri))
        if cfg.evaluation.max_videos is not None:
            listed = listed.slice(0, cfg.evaluation.max_videos)
        items = items_by_video(cfg.questions, input_uri, listed.column("video_uri").to_pylist(), labelled)
        record.videos_listed, record.videos_skipped, record.listing_s = listed.num_rows + skipped, skipped, staged.elapsed()
        print(f"evaluation {record.run_id}: {sum(len(v) for v in items.values())} items on {listed.num_rows} videos "
              f"x {len(grid_of(cfg))} settings", flush=True)
        table = EVALUATIONS.empty_table()
        if listed.num_rows:
            t1 = time.perf_counter()
            init_ray(cfg)
            record.ray_init_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            table = evaluated_rows(cfg, listed, items, record)
            record.pipeline_s = time.perf_counter() - t1
        table = table.sort_by([("item", "ascending"), ("segment_index", "ascending")])
        rows = table.to_pylist()
        check_answer_failures(record.videos_ok, add_totals(record, rows), cfg.run.max_answer_failure_share)
        if table.num_rows:
            writer = ParquetWriter(staged.staging_uri, cfg.storage_options)
            staged.staged.append(writer.write(table, partition_dir(writer.root, "evaluations", record.run_date),
                                              f"{record.run_id}.parquet"))
    return report(cfg, record, rows)


def report(cfg: EvalConfig, record: RunRecord, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The tables (printed by the job), the plot and the JSON summary, written to <output.uri>/reports/<run_id>/."""
    results, by_type = summarize(rows), summarize(rows, by_type=True)
    paired = paired_summary(rows, full_method=FULL)  # pipeline/statistics.py
    near = paired["near_chance_types"]
    for r in results:
        key = (r["method"], json.dumps(r["options"], sort_keys=True), r["budget"])
        r["vs_flashvlm"] = paired["vs_flashvlm"].get(key)
        r["accuracy_without_near_chance"] = paired["accuracy_without_near_chance"].get(key) if near else None
    for r in by_type:
        r["chance"], r["near_chance"] = paired["chance_by_type"].get(r["question_type"]), r["question_type"] in near
    scored = [r for r in rows if r["error"] is None and r["frames"]]
    tokens_per_frame = max((r["tokens_total"] // r["frames"] for r in scored), default=576)
    folder = join(cfg.output.uri.rstrip("/"), "reports", record.run_id)
    tables = "\n\n".join([
        f"per method x budget ({cfg.model.name}, {len({item_key(r) for r in rows})} items):",
        format_table(results),
        "per question type (chance: 1 / the distinct answers of the type in the labels; near chance: the full "
        "budget within 0.05 of it):",
        "  ".join(f"{kind} {chance:.3f}" for kind, chance in sorted(paired["chance_by_type"].items())) or "(no types)",
        format_table(sorted(by_type, key=lambda r: (str(r["question_type"]),)), by_type=True),
    ])
    summary = {
        "model": cfg.model.name, "items": len({item_key(r) for r in rows}), "run_id": record.run_id,
        "machine": machine(), "wall_s": record.wall_s,
        "near_chance_types": near, "chance_by_type": paired["chance_by_type"],
        "results": [{k: r[k] for k in ("method", "budget", "options", "accuracy", "accuracy_without_near_chance",
                                        "retention", "agreement", "object_recall", "ms_per_answer", "vs_flashvlm")}
                    for r in results],
    }
    if any(r["vs_flashvlm"] for r in results):
        tables += ("\n\npaired with flashvlm on the same items (diff = method - flashvlm; 95% interval: bootstrap "
                   "over clips; p: McNemar's exact test; * the interval excludes 0):\n" + markdown_table(summary))
    fs, root = filesystem(folder, cfg.storage_options)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(join(root, "tables.txt"), tables.encode())
    fs.pipe_file(join(root, "summary.json"), json.dumps({**summary, "by_question_type": by_type}, indent=1).encode())
    plot_path = join(folder, "accuracy_vs_tokens.png")
    if results:
        plot(results, plot_path, f"{cfg.model.name}: {summary['items']} items", tokens_per_frame, cfg.storage_options)
    return {"record": record, "results": results, "by_type": by_type, "tables": tables,
            "plot": plot_path if results else None, "summary": summary, "folder": folder}
