"""The evaluation's model stage: on a model actor pool, each decoded video's vision features once, then
its items at the full budget (the reference) and at every budget x setting of the grid.

    ds.map_batches(EvaluateVideos, fn_constructor_kwargs=dict(model=..., items=..., grid=grid_of(cfg), ...))
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa

from pipeline.answer import ModelLoadError, load_adapter
from pipeline.eval_config import FULL
from pipeline.questions import overlap_s
from pipeline.schema import EVALUATIONS, error_text, frames_of
from pipeline.scoring import agrees, is_correct, normalize_answer, object_recall
from pipeline.storage import normalize_uri


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
        selection = {**selection, "budget": None, "method": "flashvlm", "method_options": {}}
        try:
            self.adapter, self.load_error = load_adapter(model, selection, selection_options), None
        except ModelLoadError as exc:  # raised with the first batch, as pipeline.answer does
            self.adapter, self.load_error = None, exc
            return
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
            segment_index=row.get("segment_index"), start_s=row.get("start_s"), end_s=row.get("end_s"),
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
        # A time-ranged item is asked of the segments its range overlaps; the others of every segment.
        start_s, end_s = row.get("start_s") or 0.0, row.get("end_s")
        items = [item for item in self.items.get(normalize_uri(row["video_uri"]), [])
                 if overlap_s(start_s, end_s, item.get("start_s"), item.get("end_s")) > 0]
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
        if self.load_error is not None:
            raise self.load_error
        rows: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            rows.extend(self.evaluate_one(row))
        return pa.Table.from_pylist(rows, schema=EVALUATIONS)
