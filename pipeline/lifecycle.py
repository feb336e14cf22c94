"""The life of a run, the same for the main job (pipeline.run) and the evaluation (pipeline.evaluate):
recover what earlier runs left, stage, commit or roll back, and write the run record to runs/.

    with staged_run(cfg, kind="run") as run:          # recovers interrupted runs first
        ...                                            # write tables under run.staging_uri
        run.staged += files                            # the files this attempt wrote
        run.record.answers = ...                       # the totals
    run.record                                         # committed (status succeeded) and in runs/

Leaving the block normally commits: the record (status succeeded) is staged beside the tables and
everything is published by pipeline.commit.commit, the record last. Leaving it with an exception rolls the
staging folder back and writes the record (status failed, `error` the root cause) straight to runs/;
the exception goes on to the caller. A job exits with `exit_status(exc)`: one line, the cause.

The failure policy lives here too: a run fails (and so rolls back) when more than
run.max_answer_failure_share of the videos that reached the answer stage failed there
(`check_answer_failures`): then the model is broken, not the inputs. Decode failures stay per-video
error rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
import traceback
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Iterator, Literal, Optional

from pipeline.commit import commit, final_path, recover, rollback, staging_uri
from pipeline.config import ConfigError, JobConfig
from pipeline.schema import error_text
from pipeline.storage import filesystem
from pipeline.write import write_run_record

VERSIONED = ("flashvlm", "ray", "pyarrow", "torch", "transformers", "decord", "av", "s3fs", "fsspec")
RUN_ID_PREFIX = {"run": "", "evaluation": "eval-"}


def versions() -> dict[str, str]:
    """Python's and the installed packages' versions, as the run record's `versions` stores them."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def not_stored(default=None, factory=None):
    """A RunRecord field that is not a runs/ column (where the run's files went)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"stored": False})
    return field(default=default, metadata={"stored": False})


@dataclass(kw_only=True)
class RunRecord:
    """One row of runs/ (pipeline.schema.RUNS, field for field and in its order), plus where the run's
    files went. tests/test_lifecycle.py checks the two agree."""

    run_id: str
    status: str = "failed"  # until the commit
    started_at: datetime
    finished_at: Optional[datetime] = None
    input_uri: str
    output_uri: str
    model: str
    settings_id: str
    config: str
    versions: str
    videos_listed: int = 0
    videos_ok: int = 0
    videos_failed: int = 0
    videos_skipped: int = 0
    videos_already_done: int = 0
    incremental: bool = False
    answers: int = 0
    frames_decoded: int = 0
    tokens_kept: int = 0
    tokens_total: int = 0
    answers_labelled: int = 0
    answers_correct: int = 0
    wall_s: Optional[float] = None
    listing_s: Optional[float] = None
    ray_init_s: Optional[float] = None  # None: Ray never started
    pipeline_s: Optional[float] = None
    decode_s: Optional[float] = None
    answer_s: Optional[float] = None
    error: Optional[str] = None
    nodes: list[str] = field(default_factory=list)
    files: list[str] = not_stored(factory=list)  # committed data files (paths in the output filesystem)
    run_file: Optional[str] = not_stored()  # where this record was written

    @property
    def run_date(self) -> str:
        """The UTC date of the run's start: the `date=` partition its files go to."""
        return f"{self.started_at:%Y-%m-%d}"

    def row(self) -> dict:
        """The runs/ row."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("stored", True)}


class AnswerStageFailed(RuntimeError):
    """More than run.max_answer_failure_share of the decoded videos failed in the answer stage."""


def check_answer_failures(answered: int, failures: Counter, max_share: float) -> None:
    """Raise AnswerStageFailed when the videos that failed in the answer stage (`failures`: error text ->
    videos) are more than `max_share` of those that reached it (`answered` succeeded, plus the failures)."""
    failed = sum(failures.values())
    reached = answered + failed
    if reached and failed / reached > max_share:
        error, count = failures.most_common(1)[0]
        raise AnswerStageFailed(
            f"answer stage: {failed} of {reached} decoded videos failed (run.max_answer_failure_share is "
            f"{max_share}); commonest error ({count} videos): {error}"
        )


# An exception's own line in a traceback's text: unindented "package.module.ErrorType: message".
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*): (.*)$", re.M)


def failure_line(exc: BaseException) -> str:
    """One line for a failed run: "ErrorType: message" of the exception at the root of it.

    An exception raised in a Ray worker reaches the driver wrapped (RayTaskError around Ray Data's
    UserCodeException; ActorDiedError for a constructor), its chain kept only as the worker's traceback
    text, where Python writes the innermost cause first: that cause is the line."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        text = getattr(exc, "traceback_str", None) or (str(exc) if getattr(exc, "actor_init_failed", False) else None)
        first = EXCEPTION_LINE.search(text or "")
        if first:
            return f"{first.group(1)}: {error_text(Exception(first.group(2)))}"
        exc = exc.__cause__
    cause = seen[-1]
    return f"{type(cause).__name__}: {error_text(cause)}"


def exit_status(exc: BaseException, refused: tuple[type[BaseException], ...] = (ConfigError,)) -> int:
    """What a job exits with for `exc`, printed to stderr as one line first: 2 for input refused before
    anything ran (`refused`: a bad config, model.name, a labels file), 1 for a failed run (its record is
    in runs/). FLASHVLM_TRACEBACK=1 prints the whole traceback too."""
    if os.environ.get("FLASHVLM_TRACEBACK"):
        traceback.print_exception(exc)
    if isinstance(exc, refused):
        print(exc, file=sys.stderr)
        return 2
    print(f"run failed: {failure_line(exc)}", file=sys.stderr)
    return 1


@dataclass
class StagedRun:
    """A run in progress: its record, where it stages its tables, the staged files to publish."""

    cfg: JobConfig
    record: RunRecord
    started: float = field(default_factory=time.perf_counter)
    staged: list[str] = field(default_factory=list)

    @property
    def staging_uri(self) -> str:
        return staging_uri(self.cfg.output.uri, self.record.run_id)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def commit(self) -> None:
        """The commit point: stage the record (status succeeded), then publish only what this attempt staged."""
        cfg, record = self.cfg, self.record
        record.status, record.finished_at, record.wall_s = "succeeded", datetime.now(timezone.utc), self.elapsed()
        run_file = write_run_record(self.staging_uri, cfg.storage_options, record.row(), record.run_date)
        commit(cfg.output.uri, cfg.storage_options, record.run_id, files=self.staged + [run_file])
        root = filesystem(cfg.output.uri, cfg.storage_options)[1]
        record.files = [final_path(f, root, record.run_id) for f in self.staged]
        record.run_file = final_path(run_file, root, record.run_id)

    def fail(self, exc: BaseException) -> None:
        """Roll back and write the failed record straight to runs/ (never hiding `exc` behind another error)."""
        cfg, record = self.cfg, self.record
        record.status, record.error, record.files = "failed", failure_line(exc), []
        record.finished_at, record.wall_s = datetime.now(timezone.utc), self.elapsed()
        try:
            rollback(cfg.output.uri, cfg.storage_options, record.run_id)  # refuses once committed: recovery rolls forward
            record.run_file = write_run_record(cfg.output.uri, cfg.storage_options, record.row(), record.run_date)
        except Exception as inner:
            print(f"could not write the run record: {type(inner).__name__}: {inner}", file=sys.stderr)


def new_record(cfg: JobConfig, kind: Literal["run", "evaluation"]) -> RunRecord:
    started = datetime.now(timezone.utc)
    return RunRecord(
        run_id=cfg.run_id or f"{RUN_ID_PREFIX[kind]}{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
        started_at=started, input_uri=cfg.input.uri, output_uri=cfg.output.uri, model=cfg.model.name,
        settings_id=cfg.settings_id(), config=json.dumps(cfg.public_dict(), sort_keys=True),
        versions=json.dumps(versions(), sort_keys=True), incremental=kind == "run" and cfg.incremental,
    )


@contextmanager
def staged_run(cfg: JobConfig, kind: Literal["run", "evaluation"] = "run") -> Iterator[StagedRun]:
    """Recover earlier interrupted runs, then run the block as one staged run: commit when it ends,
    roll back and record the failure when it raises (see the module's docstring)."""
    run = StagedRun(cfg, new_record(cfg, kind))
    try:
        recovered = recover(cfg.output.uri, cfg.storage_options, current_run_id=run.record.run_id)
        for what in ("rolled_forward", "rolled_back"):
            if recovered[what]:
                print(f"earlier interrupted runs {what.replace('_', ' ')}: {', '.join(recovered[what])}", flush=True)
        yield run
        run.commit()
    except BaseException as exc:
        run.fail(exc)
        raise


__all__ = ["AnswerStageFailed", "RunRecord", "StagedRun", "check_answer_failures", "exit_status", "failure_line",
           "staged_run", "versions"]
