"""What pruning costs in answers: one sample through the model at a grid of selection settings.

    from pipeline.evaluate import DEFAULT_CONFIG, evaluate, load_eval_config
    cfg = load_eval_config(DEFAULT_CONFIG, ["model.name=flashvlm-tiny/llava"])
    report = evaluate(cfg)            # rows under <output.uri>/evaluations/, tables, plot, JSON summary

The sample is a labels file (`questions_file`: JSONL, Parquet or CSV) with one row per item:
    video_uri, question                 required (video_uri relative to input.uri, as for the main job)
    answer                              the label (null: unlabelled, scored by agreement only)
    choices                             a list of options: multiple choice, scored by log-likelihood
    question_type                       any grouping label (shapes: colour, shape, count, motion, exists)
    object_patches                      [[frame, index], ...]: the patches the question's object covers
plus `questions` from the config, asked of every video, unlabelled.

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
Output: <output.uri>/evaluations/date=D/<run_id>.parquet (EVALUATIONS), a run record in runs/, both
committed like the main job's (pipeline.commit); and <output.uri>/reports/<run_id>/ with the printed
tables (tables.txt), the JSON summary (summary.json) and the plot (accuracy_vs_tokens.png). The summary
compares every method with flashvlm on the same items (pipeline/statistics.py: difference, clip bootstrap
interval, McNemar's p) and marks the question types whose full-budget accuracy is near chance.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from flashvlm.selection import SelectionConfig
from flashvlm.selectors import METHODS
from flashvlm.video import SPLITS
from pipeline.config import (
    ConfigError, FieldError, JobConfig, Method, _Strict, check_method_options, job_parser, load_config, takes_min_per_frame,
)
from pipeline.schema import TIMESTAMP, _f, error_text, frames_of
from pipeline.scoring import agrees, is_correct, normalize_answer, object_recall
from pipeline.report import machine
from pipeline.statistics import group_options, markdown_table, paired_summary
from pipeline.storage import filesystem, join, normalize_uri, read_table_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "eval_demo.yaml"
FULL = "full"  # the method name of the full-budget rows

# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


# Selection keys a setting may set for itself, where its method takes them: how a clip's budget spreads
# (flashvlm and saliency), and the SelectionConfig fields a method takes as options (flashvlm: text_weighting).
SELECTION_KEYS = ("split", "min_per_frame", *dict.fromkeys(k for m in METHODS.values() for k in m.config_options))


class Setting(_Strict):
    """One selector of the grid: a method and its options (split / min_per_frame for flashvlm and
    saliency, text_weighting for flashvlm, seed for random, grid for uniform)."""

    method: Method
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Setting":
        from flashvlm.selectors import method_options

        try:
            self.checked_options()
        except ValueError as exc:
            raise FieldError("options", self.options, str(exc)) from None
        for key in SELECTION_KEYS:
            if key in self.options and key not in method_options(self.method, video=True):
                takers = [m for m in METHODS if key in method_options(m, video=True)]
                only = f"only {' and '.join(takers)} {'does' if len(takers) == 1 else 'do'}"
                raise FieldError("options", self.options, f"method {self.method!r} takes no {key} ({only})")
        split = self.options.get("split")
        if split is not None and split not in SPLITS:
            raise FieldError("options", self.options, f"split must be one of {list(SPLITS)}, got {split!r}")
        if self.options.get("min_per_frame") is not None and not takes_min_per_frame(split):
            raise FieldError("options", self.options, f'min_per_frame applies to split "global" only, not {split or "the default"}')
        config_options = {k: self.options[k] for k in METHODS[self.method].config_options if k in self.options}
        try:
            SelectionConfig(**config_options)  # the library's own check of their values
        except ValueError as exc:
            raise FieldError("options", self.options, str(exc)) from None
        return self

    def checked_options(self) -> dict[str, Any]:
        """The options as the adapter gets them: the selection keys as given, the method's own checked."""
        own = check_method_options(self.method, {k: v for k, v in self.options.items() if k not in SELECTION_KEYS})
        return {**{k: self.options[k] for k in SELECTION_KEYS if k in self.options}, **own}

    def label(self) -> str:
        return self.method + ("" if not self.options else " " + json.dumps(self.options, sort_keys=True))


class EvaluationOptions(_Strict):
    budgets: list[Optional[int]] = Field(
        default=[None, 192, 128, 64, 32, 16], description="visual tokens per frame; null = all (the full-budget reference)"
    )
    settings: list[Setting] = Field(
        default_factory=lambda: [Setting(method=m) for m in ("flashvlm", "saliency", "diversity", "uniform", "random")],
        description="methods x options, each run at every budget",
    )
    max_videos: Optional[int] = Field(default=None, ge=1, description="evaluate the first N listed videos only")
    random_seeds: list[int] = Field(
        default=[0, 1, 2, 3, 4], min_length=1,
        description="a random setting without its own seed runs once per seed (every item its own draw); "
        "its figures are the mean over them",
    )

    @field_validator("random_seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 or s >= 2**63 for s in value):
            raise ValueError("must be ints in [0, 2**63)")
        return list(dict.fromkeys(value))

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: list[Optional[int]]) -> list[Optional[int]]:
        if not value or any(b is not None and b < 1 for b in value):
            raise ValueError("must be a non-empty list of ints >= 1 or null (all tokens)")
        return list(dict.fromkeys(value))


class EvalConfig(JobConfig):
    evaluation: EvaluationOptions = Field(default_factory=EvaluationOptions)


def load_eval_config(path: str | Path, overrides: Optional[list[str]] = None) -> EvalConfig:
    return load_config(path, overrides, schema=EvalConfig)  # type: ignore[return-value]


def setting_id(cfg: EvalConfig, method: str, options: Mapping[str, Any], budget: Optional[int]) -> str:
    """Like JobConfig.settings_id for one setting of the grid: same id, same answers."""
    key = {
        "model": cfg.model.model_dump(mode="json", exclude={"device", "trust_remote_code"}),
        "sampling": cfg.sampling.model_dump(mode="json"),
        "selection": {**cfg.selection.model_dump(mode="json"), "method": method, "method_options": dict(options), "budget": budget},
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# The labels file
# --------------------------------------------------------------------------------------------------


def _check_item(uri: str, n: int, row: Any) -> dict[str, Any]:
    """One labels row, checked; a ValueError names the file and the row (1-based, = the JSONL line)."""

    def bad(what: str) -> ValueError:
        return ValueError(f"labels file {uri}, row {n}: {what}")

    if not isinstance(row, dict):
        raise bad(f"expected an object with video_uri and question, got {type(row).__name__}")
    for key in ("video_uri", "question"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise bad(f"{key} must be a non-empty string, got {row.get(key)!r}")
    answer = row.get("answer")
    if answer is not None and (isinstance(answer, (bool, dict, list)) or not isinstance(answer, (str, int, float))):
        raise bad(f"answer must be a string, a number or null, got {answer!r}")
    choices = row.get("choices")
    if choices is not None and (
        not isinstance(choices, (list, tuple)) or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise bad(f"choices must be null or a list of at least 2 non-empty strings, got {choices!r}")
    question_type = row.get("question_type")
    if question_type is not None and not isinstance(question_type, str):
        raise bad(f"question_type must be a string or null, got {question_type!r}")
    patches = row.get("object_patches")
    if patches is not None and not (
        isinstance(patches, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p) for p in patches
        )
    ):
        raise bad(f"object_patches must be null or a list of [frame, index] pairs of ints >= 0, got {patches!r}")
    return {
        "video_uri": row["video_uri"], "question": row["question"],
        "expected": None if answer is None or str(answer).strip() == "" else str(answer),
        "choices": None if choices is None else list(choices),
        "question_type": question_type,
        "object_patches": None if patches is None else [[int(f), int(i)] for f, i in patches],
    }


def read_labels(uri: str, storage_options: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """The items of a labels file (JSONL read line by line, so a broken line is named; Parquet, CSV)."""
    fs, path = filesystem(uri, storage_options)
    if path.lower().endswith((".jsonl", ".json")):
        try:
            text = fs.cat_file(path).decode("utf-8")
        except FileNotFoundError:
            raise ValueError(f"labels file {uri}: not found") from None
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"labels file {uri}, row {n}: not valid JSON ({exc.msg})") from None
    else:
        try:
            rows = list(enumerate(read_table_file(uri, storage_options).to_pylist(), 1))
        except ValueError as exc:
            raise ValueError(f"labels file {exc}") from None
    if not rows:
        raise ValueError(f"labels file {uri}: no rows")
    return [_check_item(uri, n, row) for n, row in rows]


def _base_of(input_uri: str) -> str:
    from pipeline.questions import _base_of as base

    return base(input_uri)


def items_by_video(
    cfg: EvalConfig, input_uri: str, videos: Sequence[str], labelled: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """{canonical video URI: its items}: the labels file's rows (`read_labels`) of each listed video, then
    the config's `questions` (unlabelled). Each item gets an `item` number, unique in the run."""
    base = _base_of(input_uri)
    out: dict[str, list[dict[str, Any]]] = {normalize_uri(v): [] for v in videos}
    for item in labelled:
        uri = item["video_uri"]
        key = normalize_uri(uri if ("://" in uri or uri.startswith("/")) else f"{base}/{uri}")
        if key in out:
            out[key].append({**item, "video_uri": key})
    for key in out:
        out[key] += [
            {"video_uri": key, "question": q, "expected": None, "choices": None, "question_type": None, "object_patches": None}
            for q in cfg.questions
        ]
    number = 0
    for key in out:
        for item in out[key]:
            item["item"] = number
            number += 1
    return out


# --------------------------------------------------------------------------------------------------
# The evaluations table
# --------------------------------------------------------------------------------------------------

EVALUATIONS = pa.schema(
    [
        _f("video_uri", pa.string(), "full URI of the video", nullable=False),
        _f("video_version", pa.string(), "S3 ETag, or size:mtime for files"),
        _f("item", pa.int32(), "the item's number in this run (labels file order, then config questions)"),
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
        _f("error_stage", pa.string(), "list, read, decode or answer; null when the row was scored"),
        _f("error_type", pa.string(), "exception class name"),
        _f("error", pa.string(), "readable message"),
    ]
)


def choice_index(expected: Optional[str], choices: Sequence[str]) -> Optional[int]:
    """Which option a multiple-choice label names: its text, or its letter (A, B, ... as Video-MME and
    MVBench label them; "A. text" options match "A" too). None when unlabelled or unmatched."""
    if expected is None:
        return None
    label = normalize_answer(expected)
    for i, choice in enumerate(choices):
        if normalize_answer(choice) == label:
            return i
    if len(label) == 1 and "a" <= label < chr(ord("a") + len(choices)):
        return ord(label) - ord("a")
    return None


def item_seeds(setting: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> Optional[list[int]]:
    """Random's seed for each item at a random setting (None for other methods): a hash of the setting's
    seed and the item's number, so that every item draws its own tokens (the selector keys its draw by the
    clip, which a clip's questions share) and a rerun draws the same ones."""
    if setting["method"] != "random":
        return None
    seed = setting["options"].get("seed", 0)
    return [int.from_bytes(hashlib.blake2b(f"{seed}:{item['item']}".encode(), digest_size=8).digest(), "little") >> 1
            for item in items]


class EvaluateVideos:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")` on a model actor pool: DECODED -> EVALUATIONS.

    Per video: vision features once, then the full budget (the reference), then every budget x setting.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        selection: Mapping[str, Any],
        selection_options: Mapping[str, Any],
        items: Mapping[str, list[dict[str, Any]]],
        grid: list[dict[str, Any]],
        run_id: str,
    ):
        from pipeline.answer import load_adapter

        self.adapter = load_adapter(model, {**selection, "budget": None, "method": "flashvlm", "method_options": {}}, selection_options)
        for name in ("encode_video", "answer_features", "score_choices"):
            if not hasattr(self.adapter, name):
                raise ValueError(
                    f"model {model['name']}: its adapter ({type(self.adapter).__name__}) has no {name}; the evaluation "
                    "needs features computed once per video (the LLaVA adapter has them)"
                )
        self.model_name, self.max_new_tokens = model["name"], int(model.get("max_new_tokens") or 32)
        self.items, self.grid, self.run_id = dict(items), list(grid), run_id

    def _row(self, row: Mapping[str, Any], item: Mapping[str, Any], setting: Mapping[str, Any], **values: Any) -> dict[str, Any]:
        out = dict.fromkeys(EVALUATIONS.names)
        out.update(
            video_uri=row["video_uri"], video_version=row.get("video_version"), decode_ms=row.get("decode_ms"),
            item=item["item"], question=item["question"], question_type=item["question_type"], choices=item["choices"],
            expected=item["expected"], method=setting["method"], options=json.dumps(setting["options"], sort_keys=True),
            budget=setting["budget"], model=self.model_name, settings_id=setting["settings_id"], run_id=self.run_id,
            created_at=datetime.now(timezone.utc),
        )
        out.update(values)
        return out

    def _answers(self, features: Any, items: list[dict[str, Any]], setting: Mapping[str, Any]) -> list[dict[str, Any]]:
        """{answer, kept, tokens..., latency_ms, choice_scores} per item at one setting."""
        kwargs = dict(budget=setting["budget"], method=setting["method"] if setting["method"] != FULL else "flashvlm")
        options, seeds = setting["options"], item_seeds(setting, items)  # random: a seed per item
        out: list[Optional[dict[str, Any]]] = [None] * len(items)
        open_items = [i for i, item in enumerate(items) if item["choices"] is None]
        if open_items:
            start = time.perf_counter()
            answers = self.adapter.answer_features(
                features, [items[i]["question"] for i in open_items], max_new_tokens=self.max_new_tokens, **kwargs,
                options=options if seeds is None else {**options, "seed": [seeds[i] for i in open_items]},
            )
            ms = (time.perf_counter() - start) * 1000.0 / len(open_items)
            for i, answer in zip(open_items, answers):
                out[i] = {"answer": answer, "latency_ms": ms, "choice_scores": None}
        for i, item in enumerate(items):
            if item["choices"] is not None:
                start = time.perf_counter()
                scores, answer = self.adapter.score_choices(
                    features, item["question"], item["choices"], **kwargs,
                    options=options if seeds is None else {**options, "seed": seeds[i]},  # every option, one draw
                )
                out[i] = {"answer": answer, "latency_ms": (time.perf_counter() - start) * 1000.0, "choice_scores": scores}
        return out  # type: ignore[return-value]

    def _scored(self, row: Mapping[str, Any], item: Mapping[str, Any], setting: Mapping[str, Any],
                result: Mapping[str, Any], full: Optional[str], encode_ms: float) -> dict[str, Any]:
        answer = result["answer"]
        if item["choices"] is not None:
            truth = choice_index(item["expected"], item["choices"])
            correct = None if item["expected"] is None else truth is not None and item["choices"][truth] == answer.text
        else:
            correct = is_correct(answer.text, item["expected"])
        return self._row(
            row, item, setting, frames=len(answer.kept), tokens_kept=answer.tokens_kept, tokens_total=answer.tokens_total,
            answer=answer.text, choice_scores=result["choice_scores"], correct=correct,
            agrees_with_full=agrees(answer.text, full), object_recall=object_recall(answer.kept, item["object_patches"]),
            latency_ms=result["latency_ms"], encode_ms=encode_ms,
        )

    def evaluate_one(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        items = self.items.get(normalize_uri(row["video_uri"]), [])
        full_setting, others = self.grid[0], self.grid[1:]
        if row.get("error") is not None:
            return [self._row(row, item, full_setting, error_stage=row["error_stage"], error_type=row["error_type"],
                              error=row["error"]) for item in items]
        if not items:
            return []
        try:
            start = time.perf_counter()
            features = self.adapter.encode_video(frames_of(row))
            encode_ms = (time.perf_counter() - start) * 1000.0
            reference = self._answers(features, items, full_setting)
        except Exception as exc:
            traceback.print_exc()
            return [self._row(row, item, full_setting, error_stage="answer", error_type=type(exc).__name__,
                              error=error_text(exc)) for item in items]
        full = [r["answer"].text for r in reference]
        out = [self._scored(row, item, full_setting, r, f, encode_ms) for item, r, f in zip(items, reference, full)]
        for setting in others:
            try:
                results = self._answers(features, items, setting)
            except Exception as exc:  # one setting failing (e.g. a bad option for this model) is its rows' error
                traceback.print_exc()
                out += [self._row(row, item, setting, error_stage="answer", error_type=type(exc).__name__,
                                  error=error_text(exc)) for item in items]
                continue
            out += [self._scored(row, item, setting, r, f, encode_ms) for item, r, f in zip(items, results, full)]
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            rows.extend(self.evaluate_one(row))
        return pa.Table.from_pylist(rows, schema=EVALUATIONS)


# --------------------------------------------------------------------------------------------------
# Summaries: tables, JSON, plot
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
            "items": len({r["item"] for r in members}), "accuracy": accuracy,
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


def plot(results: list[dict[str, Any]], path: str, title: str, tokens_per_frame: int,
         storage_options: Optional[Mapping[str, Any]] = None) -> None:
    """Accuracy (or agreement, without labels) and retention against visual tokens per frame, one line per
    method (+ options), log x axis; every line ends at the full-budget point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next((r for r in results if r["method"] == FULL), None)
    labelled = any(r["accuracy"] is not None for r in results)
    left = ("accuracy", "accuracy") if labelled else ("agreement", "agreement with the full budget")
    # Retention needs a full-budget accuracy above 0; without it the right panel shows agreement instead.
    retained = any(r["retention"] is not None for r in results if r["method"] != FULL)
    right = ("retention", "retention (accuracy / full budget)") if retained else ("agreement", "agreement with the full budget")
    lines: dict[str, list[tuple[int, Optional[float], Optional[float]]]] = {}
    for r in results:
        if r["method"] != FULL:
            label = r["method"] + (" " + json.dumps(r["options"], sort_keys=True) if r["options"] else "")
            lines.setdefault(label, []).append((min(r["budget"], tokens_per_frame), r[left[0]], r[right[0]]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = sorted({p[0] for points in lines.values() for p in points} | {tokens_per_frame})
    for label, points in lines.items():
        if full is not None:
            points = points + [(tokens_per_frame, full[left[0]], 1.0 if right[0] == "retention" else full[right[0]])]
        points.sort()
        xs = [p[0] for p in points]
        axes[0].plot(xs, [p[1] for p in points], marker="o", label=label)
        axes[1].plot(xs, [p[2] for p in points], marker="o", label=label)
    for ax, (_, name) in zip(axes, (left, right)):
        highest = max((y for line in ax.get_lines() for y in line.get_ydata() if y is not None), default=1.0)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("visual tokens per frame")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, max(1.05, highest + 0.05))  # retention can pass 1 when pruning helps
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    fs, target = filesystem(path, storage_options)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(target, buffer.getvalue())


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def grid_of(cfg: EvalConfig) -> list[dict[str, Any]]:
    """The settings in run order: the full budget first, then budget x setting (a random setting without a
    seed: one per `evaluation.random_seeds`)."""
    full = {"method": FULL, "options": {}, "budget": None, "settings_id": setting_id(cfg, FULL, {}, None)}
    out = [full]
    for budget in (b for b in cfg.evaluation.budgets if b is not None):
        for s in cfg.evaluation.settings:
            seeded = s.method == "random" and "seed" not in s.options
            for options in ([{**s.options, "seed": seed} for seed in cfg.evaluation.random_seeds] if seeded else [s.options]):
                out.append({"method": s.method, "options": Setting(method=s.method, options=options).checked_options(),
                            "budget": budget, "settings_id": setting_id(cfg, s.method, options, budget)})
    return out


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation; returns {"record", "results", "by_type", "tables", "plot", "summary"}."""
    from pipeline.commit import commit, final_path, recover, rollback, staging_uri
    from pipeline.run import decode_dataset, init_ray, list_inputs, model_gpus, pool, resolve_input, versions
    from pipeline.write import ParquetWriter, partition_dir, write_run_record

    started = datetime.now(timezone.utc)
    run_id = cfg.run_id or f"eval-{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    run_date = f"{started:%Y-%m-%d}"
    t0 = time.perf_counter()
    input_uri = resolve_input(cfg)
    # A malformed labels file is refused before anything runs, naming the file and the row.
    labelled = read_labels(cfg.questions_file, cfg.storage_options) if cfg.questions_file else []
    record: dict[str, Any] = {
        "run_id": run_id, "status": "failed", "started_at": started, "input_uri": cfg.input.uri,
        "output_uri": cfg.output.uri, "model": cfg.model.name, "settings_id": cfg.settings_id(),
        "config": json.dumps(cfg.public_dict(), sort_keys=True), "versions": json.dumps(versions(), sort_keys=True),
        "videos_listed": 0, "videos_ok": 0, "videos_failed": 0, "videos_skipped": 0, "videos_already_done": 0,
        "incremental": False, "answers": 0, "frames_decoded": 0, "tokens_kept": 0, "tokens_total": 0, "run_date": run_date,
    }
    try:
        recover(cfg.output.uri, cfg.storage_options, current_run_id=run_id)
        listed, skipped = list_inputs(cfg, input_uri)
        if cfg.evaluation.max_videos is not None:
            listed = listed.slice(0, cfg.evaluation.max_videos)
        items = items_by_video(cfg, input_uri, listed.column("video_uri").to_pylist(), labelled)
        record.update(videos_listed=listed.num_rows + skipped, videos_skipped=skipped, listing_s=time.perf_counter() - t0)
        grid = grid_of(cfg)
        n_items = sum(len(v) for v in items.values())
        print(f"evaluation {run_id}: {n_items} items on {listed.num_rows} videos x {len(grid)} settings", flush=True)
        rows: list[dict[str, Any]] = []
        if listed.num_rows:
            t1 = time.perf_counter()
            init_ray(cfg)
            record["ray_init_s"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            ds = decode_dataset(cfg, listed).map_batches(
                EvaluateVideos,
                fn_constructor_kwargs=dict(
                    model=cfg.model.model_dump(), selection=cfg.selection.model_dump(),
                    selection_options=cfg.selection.library_options(), items=items, grid=grid, run_id=run_id,
                ),
                batch_size=cfg.ray.model_batch_size, batch_format="pyarrow", compute=pool(cfg.ray.model_actors),
                num_cpus=cfg.ray.model_num_cpus, num_gpus=model_gpus(cfg),
            )
            rows = ds.take_all()
            record["pipeline_s"] = time.perf_counter() - t1
        table = pa.Table.from_pylist(rows, schema=EVALUATIONS).sort_by([("item", "ascending")])
        rows = table.to_pylist()
        scored = [r for r in rows if r["error"] is None]
        failed_videos = {r["video_uri"] for r in rows if r["error_stage"] in ("list", "read", "decode")}
        record.update(
            answers=len(scored), videos_failed=len(failed_videos),
            videos_ok=len({r["video_uri"] for r in scored}),
            tokens_kept=sum(r["tokens_kept"] for r in scored), tokens_total=sum(r["tokens_total"] for r in scored),
            frames_decoded=sum({r["video_uri"]: r["frames"] for r in scored}.values()),
            answer_s=sum(r["latency_ms"] for r in scored) / 1000.0,
        )
        stage = staging_uri(cfg.output.uri, run_id)
        writer = ParquetWriter(stage, cfg.storage_options)
        staged = []
        if table.num_rows:
            staged.append(writer.write(table, partition_dir(writer.root, "evaluations", run_date), f"{run_id}.parquet"))
        record.update(status="succeeded", finished_at=datetime.now(timezone.utc), wall_s=time.perf_counter() - t0)
        run_file = write_run_record(stage, cfg.storage_options, record, run_date)
        commit(cfg.output.uri, cfg.storage_options, run_id, files=staged + [run_file])
        out_root = filesystem(cfg.output.uri, cfg.storage_options)[1]
        record["files"] = [final_path(f, out_root, run_id) for f in staged]
    except BaseException as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {error_text(exc)}",
                      finished_at=datetime.now(timezone.utc), wall_s=time.perf_counter() - t0)
        try:
            rollback(cfg.output.uri, cfg.storage_options, run_id)
            write_run_record(cfg.output.uri, cfg.storage_options, record, run_date)
        except Exception as inner:
            print(f"could not write the run record: {type(inner).__name__}: {inner}", flush=True)
        raise
    return report(cfg, record, rows)


def report(cfg: EvalConfig, record: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
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
    folder = join(cfg.output.uri.rstrip("/"), "reports", record["run_id"])
    tables = "\n\n".join([
        f"per method x budget ({cfg.model.name}, {len({r['item'] for r in rows})} items):",
        format_table(results),
        "per question type (chance: 1 / the distinct answers of the type in the labels; near chance: the full "
        "budget within 0.05 of it):",
        "  ".join(f"{kind} {chance:.3f}" for kind, chance in sorted(paired["chance_by_type"].items())) or "(no types)",
        format_table(sorted(by_type, key=lambda r: (str(r["question_type"]),)), by_type=True),
    ])
    summary = {
        "model": cfg.model.name, "items": len({r["item"] for r in rows}), "run_id": record["run_id"],
        "machine": machine(), "wall_s": record.get("wall_s"),
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


# --------------------------------------------------------------------------------------------------
# The command line (jobs/evaluate.py)
# --------------------------------------------------------------------------------------------------
