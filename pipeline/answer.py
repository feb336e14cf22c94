"""Stage 3: answer each video's questions with a FlashVLM-wrapped model, on a model actor pool.

The model loads once per actor, in __init__ (GPU when the pool asks for one, else CPU); batches carry
frames and questions, never models. Each video is one `adapter.answer_video` call for all its
questions (a time segment: one call on the segment's frames); labels are joined to the answers later, by
the writer. A video whose call fails becomes one
error row (stage "answer"); the rest of the batch goes on (the run fails only when more than
run.max_answer_failure_share of the videos fail here: pipeline.lifecycle). Rows that arrive with an error
(listing, read, decode) pass through as error rows.

A model that cannot load raises ModelLoadError with the actor's first batch, which fails the run at once
(Ray Data stops at a batch's exception). Not from the constructor: Ray then prints a traceback on the
driver's console for every retry of the dead actor.
"""

from __future__ import annotations

import inspect
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Mapping

import pyarrow as pa

from pipeline.cluster import current_node
from pipeline.schema import ANSWERED, error_text, frames_of


class ModelLoadError(RuntimeError):
    """model.name could not be loaded in a model actor; the message names the key and the cause."""


def load_adapter(model: Mapping[str, Any], selection: Mapping[str, Any], selection_options: Mapping[str, Any]):
    """The config's model (`model` section) loaded with `flashvlm.load` and wrapped with its `selection`;
    ModelLoadError when the model itself cannot be loaded."""
    import flashvlm
    import torch

    dtype = getattr(torch, model["dtype"]) if model.get("dtype") else None
    try:
        loaded, _processor = flashvlm.load(
            model["name"], dtype=dtype, device=model.get("device"), trust_remote_code=bool(model.get("trust_remote_code"))
        )
    except Exception as exc:
        traceback.print_exc()  # the whole story to the actor's log; the run gets one line
        raise ModelLoadError(f"model.name {model['name']!r} cannot be loaded: {type(exc).__name__}: {error_text(exc)}") from None
    config = flashvlm.SelectionConfig(**selection_options) if selection_options else None
    return flashvlm.wrap(
        loaded, selection.get("budget"), config=config, guide=selection.get("guide", "question"),
        **AnswerQuestions._video_options(flashvlm.wrap, selection), **AnswerQuestions._method(selection),
    )


class AnswerQuestions:
    """Callable for `Dataset.map_batches(batch_format="pyarrow")` on a model actor pool: DECODED -> ANSWERED."""

    def __init__(
        self,
        model: Mapping[str, Any],
        selection: Mapping[str, Any],
        selection_options: Mapping[str, Any],
        frame_size: int,
        run_id: str,
        settings_id: str,
    ):
        self.model_name = model["name"]
        self.max_new_tokens = int(model.get("max_new_tokens") or 32)
        self.budget = selection.get("budget")
        self.frame_size, self.run_id, self.settings_id = frame_size, run_id, settings_id
        self.node = current_node()
        try:
            self.adapter, self.load_error = load_adapter(model, selection, selection_options), None
        except ModelLoadError as exc:  # raised with the first batch (see the module's docstring)
            self.adapter, self.load_error = None, exc

    @staticmethod
    def _video_options(wrap: Any, selection: Mapping[str, Any]) -> dict[str, Any]:
        """split / min_per_frame, passed only when set, and refused clearly if this wrap cannot take them."""
        wanted = {k: selection[k] for k in ("split", "min_per_frame") if selection.get(k) is not None}
        params = inspect.signature(wrap).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        refused = [k for k in wanted if k not in params and not takes_any]
        if refused:
            raise ValueError(f"selection.{refused[0]} is set but flashvlm.wrap does not accept {refused[0]}=")
        return wanted

    @staticmethod
    def _method(selection: Mapping[str, Any]) -> dict[str, Any]:
        """method / method_options for flashvlm.wrap, passed only when not the default selector."""
        method, options = selection.get("method") or "flashvlm", selection.get("method_options") or {}
        if method == "flashvlm" and not options:
            return {}
        from pipeline.config import check_method_options

        return {"method": method, "method_options": check_method_options(method, options)}

    def _row(self, row: Mapping[str, Any], now: datetime, **values: Any) -> dict[str, Any]:
        out = dict.fromkeys(ANSWERED.names)
        for name in ("video_uri", "video_version", "video_size", "segment_index", "start_s", "end_s", "decode_ms", "decode_backend", "duration_s", "fps", "width", "height", "decode_node"):
            out[name] = row.get(name)
        out.update(model=self.model_name, budget=self.budget, frame_size=self.frame_size,
                   settings_id=self.settings_id, run_id=self.run_id, created_at=now, answer_node=self.node)
        out.update(values)
        return out

    def answer_one(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """All rows for one DECODED row: one per question, or one error row."""
        now = datetime.now(timezone.utc)
        if row.get("error") is not None:
            return [self._row(row, now, error_stage=row["error_stage"], error_type=row["error_type"], error=row["error"])]
        questions = list(row.get("questions") or [])
        start = time.perf_counter()
        try:
            frames = frames_of(row)
            answers = self.adapter.answer_video(frames, questions, max_new_tokens=self.max_new_tokens)
            if len(answers) != len(questions):
                raise RuntimeError(f"answer_video returned {len(answers)} answers for {len(questions)} questions")
        except Exception as exc:
            # Full traceback to the actor's log for whoever debugs it; a readable line in the table.
            traceback.print_exc()
            return [self._row(row, now, error_stage="answer", error_type=type(exc).__name__, error=error_text(exc))]
        latency_ms = (time.perf_counter() - start) * 1000.0 / max(1, len(questions))
        now = datetime.now(timezone.utc)
        return [
            self._row(
                row,
                now,
                question_index=i,
                question=question,
                answer=answer.text,
                frames=int(row["frames_shape"][0]),
                tokens_kept=int(answer.tokens_kept),
                tokens_total=int(answer.tokens_total),
                kept=[[int(k) for k in frame] for frame in answer.kept],
                kept_important=None if answer.important is None else [[bool(f) for f in frame] for frame in answer.important],
                latency_ms=latency_ms,
            )
            for i, (question, answer) in enumerate(zip(questions, answers))
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.load_error is not None:
            raise self.load_error
        rows: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            try:
                rows.extend(self.answer_one(row))
            except Exception as exc:  # e.g. a malformed row: still one error row, never a lost video
                now = datetime.now(timezone.utc)
                rows.append(self._row(row, now, error_stage="answer", error_type=type(exc).__name__, error=error_text(exc)))
        return pa.Table.from_pylist(rows, schema=ANSWERED)
