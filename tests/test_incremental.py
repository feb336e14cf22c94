"""Incremental runs and the commit protocol: a second run does nothing, a changed object is answered
again (newest row wins), a killed run leaves nothing visible and the next run finishes the work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline.commit import STAGING, commit, recover, rollback, staging_uri
from pipeline.schema import ERRORS
from shapes.clips import make_clip
from pipeline.tables import done_keys, latest_answers, read_table, table_glob
from pipeline.write import ParquetWriter, partition_dir
from pipeline.run import run
from pipeline_fixtures import QUESTIONS, crash_commit_after, tiny_job_config

ROOT = Path(__file__).resolve().parents[1]
RAY = {"decode_batch_size": 2, "model_batch_size": 2, "decode_timeout_s": 30}


def config(input_uri, output_uri, **extra):
    return tiny_job_config(input_uri, output_uri, RAY, **extra)


def make_inputs(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_clip(folder / f"c{i}.mp4", frames=6, seed=i)
    (folder / "empty.mp4").write_bytes(b"")  # a permanent decode failure
    return folder


# ---- the commit protocol, in-process --------------------------------------------------------------------


def stage_files(out: Path, run_id: str, n: int = 3, first: int = 0) -> list[str]:
    """Stage n one-row error files (videos first .. first + n - 1); returns their paths as writers report them."""
    writer = ParquetWriter(staging_uri(str(out), run_id))
    rows = [{"video_uri": f"file:///v{i}.mp4", "video_version": "1", "stage": "decode", "error_type": "DecodeError",
             "error": "x", "settings_id": "s", "run_id": run_id, "created_at": None} for i in range(first, first + n)]
    folder = partition_dir(writer.root, "errors", "2026-01-01")
    return [writer.write(pa.Table.from_pylist([row], schema=ERRORS), folder, f"{run_id}-{i}.parquet") for i, row in enumerate(rows, first)]


def test_staged_rows_are_invisible_until_commit(tmp_path):
    staged = stage_files(tmp_path, "r1")
    assert read_table(str(tmp_path), "errors").num_rows == 0
    assert not list((tmp_path).glob("errors/**/*.parquet"))
    assert commit(str(tmp_path), None, "r1", staged) and read_table(str(tmp_path), "errors").num_rows == 3
    assert not (tmp_path / STAGING / "r1").exists()
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{table_glob(str(tmp_path), 'errors')}', hive_partitioning=true)").fetchall()[0][0]
    assert n == 3


def test_commit_publishes_only_the_files_this_attempt_wrote(tmp_path):
    # A killed attempt of the same run id can leave a Ray writer alive for seconds after its driver died
    # (measured: ~4 s); what it writes into the staging folder must not be published with the retry's files.
    ours = stage_files(tmp_path, "r3", n=3)
    stage_files(tmp_path, "r3", n=1, first=3)  # the late write of the dead attempt
    commit(str(tmp_path), None, "r3", files=ours)
    assert sorted(read_table(str(tmp_path), "errors").column("video_uri").to_pylist()) == [f"file:///v{i}.mp4" for i in range(3)]
    assert not (tmp_path / STAGING / "r3").exists()  # the stray file went with the staging folder
    for elsewhere in (tmp_path / "elsewhere.parquet", tmp_path / STAGING / "r4" / ".." / "r3" / "x.parquet"):
        with pytest.raises(ValueError, match="files: not staged under"):
            commit(str(tmp_path), None, "r4", files=[str(elsewhere)])


def test_a_crash_in_mid_commit_is_rolled_forward_by_the_next_run(tmp_path, monkeypatch):
    staged = stage_files(tmp_path, "r2")
    crash_commit_after(monkeypatch, moves=1)  # the process dies after moving one file
    with pytest.raises(RuntimeError, match="simulated crash"):
        commit(str(tmp_path), None, "r2", staged)
    monkeypatch.undo()
    assert rollback(str(tmp_path), None, "r2") is False  # past the commit point: never thrown away
    assert read_table(str(tmp_path), "errors").num_rows == 1  # the window a reader could see
    assert recover(str(tmp_path), None, current_run_id="other")["rolled_forward"] == ["r2"]
    assert read_table(str(tmp_path), "errors").num_rows == 3 and not (tmp_path / STAGING / "r2").exists()
    assert recover(str(tmp_path), None)["rolled_forward"] == []  # idempotent


def test_uncommitted_runs_are_rolled_back_only_when_dead(tmp_path):
    stage_files(tmp_path, "live")
    stage_files(tmp_path, "retry")
    got = recover(str(tmp_path), None, current_run_id="retry")
    assert got == {"rolled_forward": [], "rolled_back": ["retry"], "in_progress": ["live"]}
    assert (tmp_path / STAGING / "live").exists() and not (tmp_path / STAGING / "retry").exists()
    assert recover(str(tmp_path), None, stale_after_s=0.0)["rolled_back"] == ["live"]
    assert read_table(str(tmp_path), "errors").num_rows == 0


def test_done_keys_skip_permanent_decode_failures_and_retry_transient_ones(tmp_path):
    writer = ParquetWriter(str(tmp_path))
    base = {"video_version": "v1", "stage": "decode", "error": "x", "settings_id": "s", "run_id": "r", "created_at": None}
    rows = [
        {**base, "video_uri": "file:///bad.mp4", "error_type": "DecodeError"},
        {**base, "video_uri": "file:///hung.mp4", "error_type": "TimeoutError"},
        {**base, "video_uri": "file:///gone.mp4", "stage": "read", "error_type": "FileNotFoundError"},
        {**base, "video_uri": "file:///other.mp4", "error_type": "DecodeError", "settings_id": "t"},
    ]
    writer.write(pa.Table.from_pylist(rows, schema=ERRORS), partition_dir(writer.root, "errors", "2026-01-01"), "e.parquet")
    answered, failed = done_keys(str(tmp_path), "s")
    assert answered == set() and failed == {("file:///bad.mp4", "v1")}
    assert done_keys(str(tmp_path), "s", retry="all")[1] == set()


def test_incremental_is_a_config_key(tmp_path):
    cfg = config(tmp_path, tmp_path / "o", incremental=True)
    assert cfg.incremental and cfg.incremental_retry == "transient"
    with pytest.raises(Exception, match="incremental_retry"):
        config(tmp_path, tmp_path / "o", incremental_retry="sometimes")
    # the --incremental flag of jobs/video_qa.py: tests/test_job.py runs the script with it


# ---- the job, on the session's local Ray ----------------------------------------------------------------


@pytest.mark.slow
def test_second_run_does_nothing_and_a_changed_video_is_answered_again(ray_local, flashvlm_cache, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    cfg = config(inputs, out, incremental=True)

    first = run(cfg)
    assert (first.videos_ok, first.videos_failed, first.videos_already_done) == (3, 1, 0)
    assert first.answers == 3 * len(QUESTIONS)
    files = sorted(p for p in out.rglob("*.parquet") if "/runs/" not in str(p))
    assert not (out / STAGING).exists() or not any((out / STAGING).iterdir())

    second = run(cfg)
    assert (second.videos_ok, second.videos_failed, second.answers, second.frames_decoded) == (0, 0, 0, 0)
    assert second.videos_already_done == 4 and second.videos_listed == 4
    assert second.pipeline_s is None  # nothing reached the pipeline: nothing decoded
    assert sorted(p for p in out.rglob("*.parquet") if "/runs/" not in str(p)) == files
    assert read_table(str(out), "answers").num_rows == 3 * len(QUESTIONS)
    runs = read_table(str(out), "runs")
    assert sorted(runs.column("videos_already_done").to_pylist()) == [0, 4]

    # A changed object (new size:mtime version) and one new question: only that work is done.
    time.sleep(0.01)
    make_clip(inputs / "c1.mp4", frames=8, seed=9)
    cfg2 = config(inputs, out, incremental=True, questions=[*QUESTIONS, "Is it dark?"])
    assert cfg2.settings_id() == cfg.settings_id()  # questions are not settings
    third = run(cfg2)
    assert third.videos_ok == 3 and third.videos_already_done == 1  # the permanent failure
    assert third.answers == 1 * 3 + 2 * 1  # c1 all three questions; c0, c2 only the new one
    answers = read_table(str(out), "answers")
    assert answers.num_rows == 3 * 2 + 5
    latest = latest_answers(str(out), settings_id=cfg.settings_id())
    c1 = [r for r in latest.to_pylist() if r["video_uri"].endswith("/c1.mp4")]
    assert len(c1) == 3 and {r["run_id"] for r in c1} == {third.run_id}
    assert latest.num_rows == 3 * 3  # one row per (video, question): the old c1 rows lost
    assert latest_answers(str(out), per_version=True).num_rows == 3 * 3 + 2


def test_the_job_commits_only_its_own_files(ray_local, flashvlm_cache, tmp_path, monkeypatch):
    # As a killed attempt's surviving writer would: a file lands in the run's staging folder just before the
    # commit. The job must hand commit() the files its writers reported, and the stray must stay unpublished.
    import pipeline.lifecycle

    inputs = make_inputs(tmp_path / "in", n=2)
    out = tmp_path / "out"
    real_commit, dropped = pipeline.lifecycle.commit, []

    def commit_after_a_late_write(output_uri, storage_options, run_id, *args, **kwargs):
        dropped.extend(stage_files(out, run_id, n=1, first=99))
        return real_commit(output_uri, storage_options, run_id, *args, **kwargs)

    monkeypatch.setattr(pipeline.lifecycle, "commit", commit_after_a_late_write)
    record = run(config(inputs, out, run_id="fenced"))
    assert dropped and record.status == "succeeded" and record.videos_ok == 2
    uris = read_table(str(out), "errors").column("video_uri").to_pylist()
    assert uris == [(inputs / "empty.mp4").resolve().as_uri()]  # the run's own failure, not the stray row
    assert read_table(str(out), "answers").num_rows == 2 * len(QUESTIONS)
    assert not (out / STAGING / "fenced").exists()


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_visible_and_the_next_run_finishes(ray_local, flashvlm_cache, tmp_path):
    inputs = make_inputs(tmp_path / "in", n=3)
    os.mkfifo(inputs / "zz_hang.mp4")  # decoded last; blocks for decode_timeout_s: the run cannot commit before the kill
    out = tmp_path / "out"
    cfg_file = tmp_path / "job.yaml"
    data = json.loads(config(inputs, out).model_dump_json())
    # 3 logical CPUs: the decode actor (1, held by the hang), the answer actor (1) and the writer (0.1) all run at
    # once, so answers are staged while the hang keeps the run from committing (with 2 the writer waits for it).
    data["ray"].update(decode_batch_size=1, model_batch_size=1, write_batch_size=1, decode_timeout_s=600, num_cpus=3,
                       decode_actors=1)
    cfg_file.write_text(json.dumps(data))  # YAML is a superset of JSON
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "video_qa.py"), "--config", str(cfg_file), "--set", "run_id=killed"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    staged = out / STAGING / "killed"
    try:  # however long the job takes to start (pytest's timeout guards against a hang)
        while not list(staged.glob("answers/*/*.parquet")):
            assert proc.poll() is None, "the job ended before it was killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started (its own session)
        proc.wait()
    # Nothing of the killed run is visible to any reader.
    for name in ("answers", "errors", "runs"):
        assert read_table(str(out), name).num_rows == 0
    assert not list(out.glob("answers/**/*.parquet"))

    cfg = config(inputs, out, run_id="killed", incremental=True)
    cfg.ray.decode_timeout_s = 3  # ray settings are not part of settings_id
    record = run(cfg)  # same run id: the dead staging folder is rolled back, then the work is redone
    assert not staged.exists()
    assert (record.videos_ok, record.videos_failed) == (3, 2)  # empty + the hang (timed out)
    answers = read_table(str(out), "answers")
    keys = list(zip(answers.column("video_uri").to_pylist(), answers.column("question").to_pylist()))
    assert len(keys) == len(set(keys)) == 3 * len(QUESTIONS)  # complete, no duplicates
    errors = {r["video_uri"].rsplit("/", 1)[-1]: r for r in read_table(str(out), "errors").to_pylist()}
    assert errors["zz_hang.mp4"]["error_type"] == "TimeoutError" and errors["zz_hang.mp4"]["stage"] == "decode"
    (run_row,) = read_table(str(out), "runs").to_pylist()
    assert run_row["status"] == "succeeded" and run_row["run_id"] == "killed"


def test_left_to_do_is_an_anti_join_on_video_version_and_question():
    from pipeline.run import left_to_do
    from pipeline.schema import LISTED

    def row(uri, version, questions, error=None):
        return {"video_uri": uri, "video_version": version, "video_size": 1, "questions": questions,
                "error_stage": "list" if error else None, "error_type": error, "error": error}

    listed = pa.Table.from_pylist([
        row("a", "1", ["q1", "q2", "q3"]),   # q2 answered: q1, q3 left, in order
        row("b", "2", ["q1"]),               # answered for version 1 only: redone
        row("c", "1", ["q1"]),               # all answered: done
        row("d", "1", ["q1"]),               # decode failed for good: done
        row("e", None, ["q1"]),              # no version, answered with none: done
        row("f", None, None, error="FileNotFoundError"),  # error rows are always kept
    ], schema=LISTED)
    answered = pa.table({"video_uri": ["a", "b", "c", "e", "a"], "video_version": ["1", "1", "1", None, "1"],
                         "question": ["q2", "q1", "q1", "q1", "q2"]})  # a key may repeat
    failed = pa.table({"video_uri": ["d"], "video_version": ["1"]})
    todo, done = left_to_do(listed, answered, failed)
    assert done == 3 and todo.schema == LISTED
    assert {r["video_uri"]: r["questions"] for r in todo.to_pylist()} == {"a": ["q1", "q3"], "b": ["q1"], "f": None}
