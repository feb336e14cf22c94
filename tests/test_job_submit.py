"""`ray start --head` on loopback plus `ray job submit --working-dir . -- python jobs/video_qa.py`.

The head gets its own temp dir and free ports, and is stopped by killing exactly the processes started
under that temp dir (never `ray stop`, which would stop every Ray on the machine, other people's too).
The job reads its videos from and writes its tables to the moto S3 server, with credentials given only
as the standard AWS variables in the job's runtime environment.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline_fixtures import BROKEN_CLIPS, free_port
from tiny_models import LLAVA_PATH

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def _process_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} from /proc (psutil is not a dependency)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry)] = (ppid, cmdline)
    return table


def processes_under(temp_dir: str) -> set[int]:
    """Every process whose command line names temp_dir, and all their descendants."""
    table = _process_table()
    found = {pid for pid, (_, cmdline) in table.items() if temp_dir in cmdline}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    found.discard(os.getpid())
    return found


def stop_head(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL after 3 s, for exactly the processes of the head started in temp_dir (the test is
    about the job, not about Ray shutting down gracefully; some of its processes outwait any grace)."""
    pids = processes_under(temp_dir)
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") and _running(pid) for pid in pids):
            time.sleep(0.3)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is already dead
    except OSError:
        return False


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with auth disabled; yields (dashboard URL, env for the CLI)."""
    temp_dir = tempfile.mkdtemp(prefix="fvh", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(), "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    command = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true",
               *(f"{flag}={port}" for flag, port in ports.items())]
    try:
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_job_against_s3(ray_head, clip_dir, s3_options, s3_env, s3_bucket, tmp_path):
    import s3fs

    address, env = ray_head
    fs = s3fs.S3FileSystem(**s3_options)
    for path in sorted(clip_dir.iterdir()):
        fs.put_file(str(path.resolve()), f"{s3_bucket}/videos/{path.name}")
    config = tmp_path / "submit.yaml"
    config.write_text(
        f"""
input: {{uri: "s3://{s3_bucket}/videos/"}}
questions: ["What is in the video?"]
model: {{name: {LLAVA_PATH}, dtype: float32, device: cpu, max_new_tokens: 4}}
sampling: {{frames: 2}}
selection: {{budget: 8}}
output: {{uri: "s3://{s3_bucket}/qa"}}
ray: {{decode_batch_size: 2, decode_timeout_s: 60, model_actors: 1, model_num_cpus: 0.5, decode_num_cpus: 0.5}}
"""
    )
    runtime_env = {"env_vars": {**s3_env, "FLASHVLM_CACHE": os.environ.get("FLASHVLM_CACHE", "")}}
    if not runtime_env["env_vars"]["FLASHVLM_CACHE"]:
        del runtime_env["env_vars"]["FLASHVLM_CACHE"]
    started = time.perf_counter()
    result = subprocess.run(
        [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
         "--", sys.executable, "jobs/video_qa.py", "--config", str(config), "--set", "run_id=submitted"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    elapsed = time.perf_counter() - started
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "succeeded" in log and "run submitted succeeded" in log, log[-4000:]
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in log

    from pipeline.tables import read_table

    out = f"s3://{s3_bucket}/qa"
    answers = read_table(out, "answers", s3_options)
    errors = read_table(out, "errors", s3_options)
    healthy = len(list(clip_dir.iterdir())) - len(BROKEN_CLIPS)
    assert answers.num_rows == healthy and set(answers.column("run_id").to_pylist()) == {"submitted"}
    assert errors.num_rows == len(BROKEN_CLIPS)
    (run,) = read_table(out, "runs", s3_options).to_pylist()
    assert run["status"] == "succeeded" and s3_env["AWS_SECRET_ACCESS_KEY"] not in run["config"]
    print(f"ray job submit: {elapsed:.1f} s", file=sys.stderr)
