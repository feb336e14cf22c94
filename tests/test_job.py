"""The run end to end on a private local Ray (2 CPUs): videos in a real S3-compatible server (moto on
127.0.0.1) with a per-video questions file, tables written back there and read with pyarrow and DuckDB;
the embedded demo; and jobs/video_qa.py as a user runs it (exit status, flags)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.run import DEFAULT_CONFIG, resolve_input, run, summary_text
from pipeline_fixtures import BROKEN_CLIPS, FALLBACK_CLIPS
from tiny_models import LLAVA_PATH

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# jobs/video_qa.py flags: the demo config without its demo inputs (generated shapes clips, the sample clips, their labels).
NOT_THE_DEMO_INPUTS = ["--set", "input.generate_shapes=null", "--set", "input.extra_uris=[]", "--set", "questions_file=null"]


def run_and_summarise(capsys, config=DEFAULT_CONFIG, overrides=()) -> tuple[dict, str]:
    """pipeline.run.run on a config file; (run record, everything it printed plus the job's summary)."""
    cfg = load_config(config, list(overrides))
    record = run(cfg)
    return record, capsys.readouterr().out + summary_text(cfg, record)


def run_script(*args: str) -> subprocess.CompletedProcess:
    """jobs/video_qa.py in a fresh process, as a user runs it (no Ray address: a new local Ray if any)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "video_qa.py"), *args], env=env, capture_output=True,
                          text=True, timeout=240)


def upload_clips(fs, clip_dir: Path, bucket: str) -> list[str]:
    keys = []
    for path in sorted(clip_dir.iterdir()):
        fs.put_file(str(path.resolve()), f"{bucket}/videos/{path.name}")
        keys.append(f"s3://{bucket}/videos/{path.name}")
    return keys


def test_s3_end_to_end_with_a_questions_file(ray_local, clip_dir, s3_options, s3_bucket, tmp_path, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    uris = upload_clips(fs, clip_dir, s3_bucket)
    names = [u.rsplit("/", 1)[-1] for u in uris]
    good = [n for n in names if n not in BROKEN_CLIPS]
    # Per-video questions: two for the first good clip (relative name), one each for the others (full URI),
    # none for the last good clip (skipped), one for a clip that is not in the bucket (an error row).
    asked = {good[0]: ["Who is there?", "What happens next?"], **{n: [f"Describe {n}."] for n in good[1:-1]},
             **{n: ["Anything?"] for n in BROKEN_CLIPS}}
    lines = [{"video_uri": good[0], "question": q} for q in asked[good[0]]]
    lines += [{"video_uri": f"s3://{s3_bucket}/videos/{n}", "question": q} for n, qs in asked.items() if n != good[0] for q in qs]
    lines.append({"video_uri": "ghost.mp4", "question": "Is it there?"})
    fs.pipe(f"{s3_bucket}/questions.jsonl", "\n".join(json.dumps(r) for r in lines).encode())

    config = tmp_path / "s3.yaml"
    config.write_text(
        f"""
input: {{uri: "s3://{s3_bucket}/videos/"}}
questions_file: s3://{s3_bucket}/questions.jsonl
model: {{name: {LLAVA_PATH}, dtype: float32, device: cpu, max_new_tokens: 4}}
sampling: {{frames: 2, size: 336}}
selection: {{budget: 8}}
output: {{uri: "s3://{s3_bucket}/qa"}}
storage_options: {json.dumps(s3_options)}
ray: {{decode_batch_size: 2, model_batch_size: 2, decode_timeout_s: 60}}
"""
    )
    started = time.perf_counter()
    record, printed = run_and_summarise(capsys, config, ["run_id=s3-run-1"])
    elapsed = time.perf_counter() - started
    assert record.status == "succeeded"
    healthy = len(good) - 1  # the last good clip has no questions
    assert f"videos: {healthy} ok, {len(BROKEN_CLIPS) + 1} failed, 1 skipped" in printed
    assert f"s3://{s3_bucket}/qa/answers/date=" in printed and "duckdb" in printed
    assert s3_options["secret"] not in printed and s3_options["key"] not in printed

    from pipeline.tables import duckdb_connect, read_table

    out = f"s3://{s3_bucket}/qa"
    answers = read_table(out, "answers", s3_options)
    errors = read_table(out, "errors", s3_options)
    runs = read_table(out, "runs", s3_options)
    expected = {f"s3://{s3_bucket}/videos/{n}": qs for n, qs in asked.items() if n not in BROKEN_CLIPS}
    got: dict[str, list[str]] = {}
    for row in sorted(answers.to_pylist(), key=lambda r: (r["video_uri"], r["question_index"])):
        got.setdefault(row["video_uri"], []).append(row["question"])
    assert got == expected
    assert set(answers.column("run_id").to_pylist()) == {"s3-run-1"}
    assert all(v for v in answers.column("video_version").to_pylist())  # S3 ETags
    fallback = [r for r in answers.to_pylist() if r["video_uri"].endswith(tuple(FALLBACK_CLIPS))]
    assert fallback and {r["decode_backend"] for r in fallback} == {"pyav"}  # clip_dir always has one

    failed = {r["video_uri"].rsplit("/", 1)[-1]: r for r in errors.to_pylist()}
    assert set(failed) == {*BROKEN_CLIPS, "ghost.mp4"}
    assert failed["ghost.mp4"]["stage"] == "list" and failed["empty.webm"]["stage"] == "decode"

    (run_row,) = runs.to_pylist()
    assert run_row["status"] == "succeeded" and run_row["run_id"] == "s3-run-1"
    assert run_row["videos_ok"] == healthy and run_row["videos_failed"] == len(BROKEN_CLIPS) + 1 and run_row["videos_skipped"] == 1
    assert run_row["videos_listed"] == len(uris) + 1 == run_row["videos_ok"] + run_row["videos_failed"] + run_row["videos_skipped"]
    assert run_row["answers"] == answers.num_rows
    assert run_row["tokens_kept"] == sum(answers.column("tokens_kept").to_pylist())
    assert s3_options["secret"] not in run_row["config"] and json.loads(run_row["config"])["storage_options"]["secret"] == "***"
    assert json.loads(run_row["versions"])["ray"].startswith("2.")

    con = duckdb_connect(out, s3_options)  # DuckDB reads s3:// through the registered s3fs filesystem
    (n,) = con.sql("SELECT count(*) FROM answers WHERE run_id = 's3-run-1'").fetchall()[0]
    assert n == answers.num_rows
    stages = dict(con.sql("SELECT stage, count(*) FROM errors GROUP BY stage").fetchall())
    assert stages == {"list": 1, "decode": len(BROKEN_CLIPS)}
    print(f"s3 end to end: {elapsed:.1f} s", file=sys.stderr)

    # The same run id again (a retry) overwrites its files: the tables do not grow.
    before = sorted(fs.find(f"{s3_bucket}/qa"))
    assert run_and_summarise(capsys, config, ["run_id=s3-run-1"])[0].status == "succeeded"
    assert sorted(fs.find(f"{s3_bucket}/qa")) == before
    assert read_table(out, "answers", s3_options).num_rows == answers.num_rows


def test_demo_answers_generated_shapes_clips_and_the_sample_clips(ray_local, tmp_path, capsys):
    started = time.perf_counter()
    split = tmp_path / "shapes-demo" / "test"
    record, printed = run_and_summarise(capsys, overrides=[
        f"output.uri={tmp_path}/output", f"input.uri={split}", f"questions_file={split / 'questions.jsonl'}",
    ])
    elapsed = time.perf_counter() - started
    assert record.status == "succeeded"
    match = re.search(r"videos: (\d+) ok, (\d+) failed, 0 skipped, 0 already done \(of (\d+) listed\)", printed)
    assert match, printed
    ok, failed, listed = map(int, match.groups())
    assert ok >= 1 and ok + failed == listed
    assert re.search(r"visual tokens kept \d+ of \d+ \(\d+\.\d%\)", printed)
    labelled = sum(1 for _ in (split / "questions.jsonl").open())
    assert re.search(rf"accuracy on labelled questions: \d+ of {labelled} \(", printed), printed
    assert f"{tmp_path}/output/answers/date=" in printed
    one_liner = re.search(r'python -c "(.*)"$', printed, re.M).group(1).replace('\\"', '"')
    exec(one_liner)  # the printed DuckDB one-liner runs as printed

    # A data scientist can draw what the model kept from one answers row alone.
    from flashvlm.viz import CAPTION_HEIGHT
    from pipeline.tables import draw_answer_row, read_table

    row = read_table(f"{tmp_path}/output", "answers").to_pylist()[0]
    assert len(row["kept"]) == len(row["kept_important"]) == row["frames"]
    assert any(any(f) for f in row["kept_important"]) and not all(all(f) for f in row["kept_important"])
    image = draw_answer_row(row)
    columns = min(4, row["frames"])
    rows_of_tiles = -(-row["frames"] // columns)
    assert image.size == (columns * row["frame_size"], CAPTION_HEIGHT + rows_of_tiles * row["frame_size"])
    print(f"demo (Ray already up): {elapsed:.1f} s", file=sys.stderr)


def test_demo_generates_clips_when_the_sample_folder_is_absent(tmp_path):
    cfg = load_config(DEFAULT_CONFIG, [f"input.uri={tmp_path}/absent/", "input.generate_shapes=null", "input.generate_if_missing=3"])
    folder = Path(resolve_input(cfg))
    clips = sorted(folder.glob("clip_*.mp4"))
    assert len(clips) >= cfg.input.generate_if_missing and all(p.stat().st_size > 0 for p in clips)
    cfg = load_config(DEFAULT_CONFIG, [f"input.uri={tmp_path}", "input.generate_shapes=null"])
    assert resolve_input(cfg) == str(tmp_path)  # present, or generation off: used as given


def test_a_demo_can_generate_a_labelled_shapes_split_where_the_input_is_missing(tmp_path):
    shapes = "input.generate_shapes={split: test, clips: 2, frames: 2}"
    cfg = load_config(DEFAULT_CONFIG, [f"input.uri={tmp_path}/shapes/test", shapes])
    assert resolve_input(cfg) == f"{tmp_path}/shapes/test"
    assert sorted(p.name for p in (tmp_path / "shapes" / "test").iterdir()) == ["clip_00000.mp4", "clip_00001.mp4", "questions.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "shapes" / "test" / "questions.jsonl").read_text().splitlines()]
    assert rows and {"video_uri", "question", "answer"} <= set(rows[0])
    with pytest.raises(ValueError, match="must end in the split's name 'test'"):
        resolve_input(load_config(DEFAULT_CONFIG, [f"input.uri={tmp_path}/elsewhere", shapes]))


# ---- the command line: exit status and flags, in a fresh process (no Ray is started by these) ------------


def test_config_error_exits_2_with_the_key():
    done = run_script("--set", "selection.budgte=3")
    assert done.returncode == 2, done.stderr
    assert "selection.budgte: unknown key" in done.stderr and "Traceback" not in done.stderr


def test_an_empty_input_exits_0_without_starting_ray_and_incremental_is_a_flag(tmp_path):
    from pipeline.tables import read_table

    (tmp_path / "in").mkdir()
    done = run_script("--set", f"input.uri={tmp_path}/in", "--set", f"output.uri={tmp_path}/out", "--set", "run_id=empty",
                      "--incremental", *NOT_THE_DEMO_INPUTS)
    assert done.returncode == 0, done.stderr
    assert "videos: 0 ok, 0 failed, 0 skipped, 0 already done (of 0 listed)" in done.stdout
    (record,) = read_table(f"{tmp_path}/out", "runs").to_pylist()
    assert record["status"] == "succeeded" and record["answers"] == 0 and record["incremental"] is True
    assert record["ray_init_s"] is None  # nothing to answer: Ray never started


def test_a_failed_run_exits_1_and_records_the_failure(tmp_path):
    from pipeline.tables import read_table

    done = run_script("--set", f"input.uri={tmp_path}/gone.mp4", "--set", f"output.uri={tmp_path}/out", "--set", "run_id=failed",
                      *NOT_THE_DEMO_INPUTS)
    assert done.returncode == 1 and "FileNotFoundError" in done.stderr
    (record,) = read_table(f"{tmp_path}/out", "runs").to_pylist()
    assert record["status"] == "failed" and record["error"].startswith("FileNotFoundError")
