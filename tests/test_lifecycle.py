"""The run's life (pipeline/lifecycle.py) and its failure policy: the run record mirrors runs/, model.name
is refused before Ray starts, a model that cannot load fails the run in one line, a run whose answer stage
fails for (nearly) every video fails and rolls back naming the cause, and the reading rule of
docs/operations.md ("Commits: what a reader sees") never shows part of a run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

import pipeline.run
from pipeline.answer import AnswerQuestions
from pipeline.commit import STAGING, commit, recover, staging_uri
from pipeline.config import ConfigError, check_model_name
from pipeline.lifecycle import AnswerStageFailed, RunRecord, check_answer_failures, failure_line
from pipeline.run import run
from pipeline.schema import ANSWERS, RUNS
from pipeline.tables import read_committed, read_table
from pipeline.write import ParquetWriter, partition_dir, write_run_record
from pipeline_fixtures import crash_commit_after, tiny_job_config
from shapes.clips import make_clip

ROOT = Path(__file__).resolve().parents[1]
RAY = {"decode_batch_size": 2, "model_batch_size": 2, "decode_timeout_s": 30}


def run_script(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """jobs/video_qa.py in a fresh process, as a user runs it (no Ray address: a new local Ray if any)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "video_qa.py"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def make_inputs(folder: Path, n: int) -> Path:
    """n healthy clips (links to one generated clip) and one empty file (a decode failure)."""
    folder.mkdir(parents=True)
    make_clip(folder / "c00.mp4", frames=6, seed=0)
    for i in range(1, n):
        os.symlink(folder / "c00.mp4", folder / f"c{i:02d}.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    return folder


# ---- the run record ------------------------------------------------------------------------------------


def test_the_run_record_mirrors_the_runs_schema():
    from dataclasses import fields

    stored = [f.name for f in fields(RunRecord) if f.metadata.get("stored", True)]
    assert stored == RUNS.names
    record = RunRecord(run_id="r", started_at=datetime(2026, 1, 2, tzinfo=timezone.utc), input_uri="/in", output_uri="/out",
                       model="m", settings_id="s", config="{}", versions="{}", nodes=["n1"], error="E: x")
    row = pa.Table.from_pylist([record.row()], schema=RUNS).to_pylist()[0]  # every value fits its column
    assert row == record.row() and record.run_date == "2026-01-02"


# ---- model.name, before Ray starts -----------------------------------------------------------------------


def test_model_name_must_be_a_directory_a_hub_id_or_a_registered_name(tmp_path):
    for good in ("llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2.5-VL-7B-Instruct", "flashvlm-tiny/shapes", str(tmp_path)):
        check_model_name(good)
    (tmp_path / "weights.bin").write_bytes(b"")
    for bad, why in (("/no/such/dir", "not an existing local directory"), ("./missing", "not an existing local directory"),
                     ("llava", "hub id (org/name)"), ("org/name with space", "hub id"), ("a/b/c", "hub id"),
                     (str(tmp_path / "weights.bin"), "is a file")):
        with pytest.raises(ConfigError, match=rf"^model\.name: .*{re.escape(why)}"):
            check_model_name(bad)


def test_a_missing_model_directory_exits_2_in_seconds_naming_the_key():
    started = time.perf_counter()
    done = run_script("--set", "model.name=/no/such/dir")
    elapsed = time.perf_counter() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) <= 10 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [next(l for l in lines if l.startswith("model.name: "))]
    assert "'/no/such/dir'" in done.stderr
    assert elapsed < 60, elapsed  # no Ray, no model: the imports only (seconds, even on a loaded machine)


# ---- the failure policy ------------------------------------------------------------------------------------


def test_the_answer_stage_fails_the_run_above_the_share():
    check_answer_failures(5, Counter({"RuntimeError: x": 5}), 0.5)  # half: not more than half
    check_answer_failures(0, Counter(), 0.5)  # nothing reached the answer stage
    with pytest.raises(AnswerStageFailed, match=r"6 of 10 decoded videos failed .*commonest error \(4 videos\): B: y"):
        check_answer_failures(4, Counter({"A: x": 2, "B: y": 4}), 0.5)
    check_answer_failures(0, Counter({"A: x": 3}), 1.0)  # 1.0: never


def test_the_failure_line_is_the_root_cause():
    try:
        try:
            raise KeyError("video_uri")
        except KeyError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as exc:
        assert failure_line(exc) == "KeyError: 'video_uri'"
    # A worker's exception reaches the driver as text in a wrapper (Ray's RayTaskError.traceback_str), the
    # innermost cause first, its module path before its name.
    wrapped = RuntimeError("UDF failed to process a data block.")
    wrapped.traceback_str = ("Traceback (most recent call last):\n  File \"answer.py\", line 42, in load_adapter\n"
                             "pipeline.answer.ModelLoadError: model.name '/m' cannot be loaded: ValueError: bad\n\n"
                             "The above exception was the direct cause of the following exception:\n\n"
                             "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    assert failure_line(wrapped) == "ModelLoadError: model.name '/m' cannot be loaded: ValueError: bad"


@pytest.mark.slow
def test_a_run_whose_answer_stage_fails_for_every_video_fails_and_rolls_back(ray_local, flashvlm_cache, tmp_path, monkeypatch):
    class AnswerBroken(AnswerQuestions):
        """The answer stage with a model that fails on every video (as a broken checkpoint or a GPU out of
        memory would): its calls raise, so every decoded video becomes an answer-stage error row. Defined in
        the test, so Ray ships it to the actors by value."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)

            def broken(*args, **kw):
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

            self.adapter.answer_video = broken

    inputs = make_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline.run, "AnswerQuestions", AnswerBroken)
    with pytest.raises(AnswerStageFailed, match="answer stage: 3 of 3 decoded videos failed"):
        run(tiny_job_config(inputs, out, RAY, run_id="broken"))
    (record,) = read_table(str(out), "runs").to_pylist()
    assert record["status"] == "failed" and record["run_id"] == "broken"
    assert record["error"] == (
        "AnswerStageFailed: answer stage: 3 of 3 decoded videos failed (run.max_answer_failure_share is 0.5); "
        "commonest error (3 videos): RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB")
    assert (record["videos_ok"], record["videos_failed"]) == (0, 4)  # 3 in the answer stage, the empty file in decode
    assert read_table(str(out), "answers").num_rows == read_table(str(out), "errors").num_rows == 0  # rolled back
    assert not (out / STAGING / "broken").exists()

    # The share is a config key: at 1.0 the same failures are error rows of a run that succeeds.
    record = run(tiny_job_config(inputs, out, RAY, run_id="tolerant", run={"max_answer_failure_share": 1.0}))
    assert record.status == "succeeded" and record.videos_failed == 4
    stages = Counter(read_table(str(out), "errors").column("stage").to_pylist())
    assert stages == {"answer": 3, "decode": 1}


@pytest.mark.slow
def test_a_model_that_cannot_load_fails_the_run_in_one_line(flashvlm_cache, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a directory, so it passes the start-up check
    inputs = make_inputs(tmp_path / "in", 1)
    done = run_script("--set", f"model.name={tmp_path / 'model'}", "--set", f"input.uri={inputs}",
                      "--set", f"output.uri={tmp_path / 'out'}", "--set", "run_id=unloadable",
                      "--set", "input.generate_shapes=null", "--set", "input.extra_uris=[]", "--set", "questions_file=null",
                      "--set", "sampling.frames=2", "--set", "model.device=cpu", timeout=400)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    (line,) = [l for l in done.stderr.splitlines() if l.startswith("run failed: ")]
    assert f"ModelLoadError: model.name '{tmp_path / 'model'}' cannot be loaded: ValueError: Unrecognized model" in line
    (record,) = read_table(str(tmp_path / "out"), "runs").to_pylist()
    assert record["status"] == "failed" and record["error"] == line.removeprefix("run failed: ")


# ---- commits: what a reader sees --------------------------------------------------------------------------


def stage_run(output: Path, run_id: str, files: int) -> list[str]:
    """A run as the job stages it: `files` answers files of 2 rows each and its run record (succeeded)."""
    writer = ParquetWriter(staging_uri(str(output), run_id))
    staged = []
    for i in range(files):
        rows = [{**dict.fromkeys(ANSWERS.names), "video_uri": f"file:///v{i}.mp4", "question_index": q, "question": f"q{q}",
                 "answer": "a", "run_id": run_id} for q in range(2)]
        staged.append(writer.write(pa.Table.from_pylist(rows, schema=ANSWERS),
                                   partition_dir(writer.root, "answers", "2026-01-02"), f"{run_id}-{i}.parquet"))
    record = RunRecord(run_id=run_id, status="succeeded", started_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
                       input_uri="/in", output_uri=str(output), model="m", settings_id="s", config="{}", versions="{}")
    return staged + [write_run_record(staging_uri(str(output), run_id), None, record.row(), record.run_date)]


def test_readers_of_committed_runs_never_see_part_of_a_run(tmp_path, monkeypatch):
    commit(str(tmp_path), None, "done", stage_run(tmp_path, "done", 2))
    staged = stage_run(tmp_path, "midway", 3)
    crash_commit_after(monkeypatch, moves=2)  # the commit stops after two files, as a reader would catch it mid-commit
    with pytest.raises(RuntimeError, match="simulated crash"):
        commit(str(tmp_path), None, "midway", staged)
    monkeypatch.undo()
    everything = read_table(str(tmp_path), "answers")
    assert sorted(set(everything.column("run_id").to_pylist())) == ["done", "midway"]  # a plain reader sees part of it
    assert everything.num_rows == 2 * 2 + 2 * 2
    committed = read_committed(str(tmp_path), "answers")
    assert set(committed.column("run_id").to_pylist()) == {"done"} and committed.num_rows == 2 * 2

    import duckdb  # the same rule in SQL, as docs/operations.md writes it: runs first, then the table

    con = duckdb.connect()
    con.execute(f"CREATE TEMP TABLE committed AS SELECT run_id FROM read_parquet('{tmp_path}/runs/**/*.parquet', "
                "hive_partitioning = true) WHERE status = 'succeeded'")
    rows = con.execute(f"SELECT run_id, count(*) FROM read_parquet('{tmp_path}/answers/**/*.parquet', hive_partitioning = true) "
                       "WHERE run_id IN (SELECT run_id FROM committed) GROUP BY run_id").fetchall()
    assert rows == [("done", 4)]

    assert recover(str(tmp_path), None)["rolled_forward"] == ["midway"]  # the next run finishes the commit
    committed = read_committed(str(tmp_path), "answers")
    assert Counter(committed.column("run_id").to_pylist()) == {"done": 4, "midway": 6}
