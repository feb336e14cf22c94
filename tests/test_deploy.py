"""The KubeRay manifest and the README's cron line run the job's real command line on a real config."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _job_options() -> set[str]:
    """Every option `python jobs/video_qa.py --help` lists."""
    out = subprocess.run([sys.executable, "jobs/video_qa.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(re.findall(r"(--[a-z][a-z-]*)", out.stdout))


def _check_command(argv: list[str], options: set[str]) -> None:
    assert argv[:2] == ["python", "jobs/video_qa.py"], argv
    assert (ROOT / argv[1]).is_file()
    flags = [a for a in argv[2:] if a.startswith("--")]
    assert set(flags) <= options, f"{flags} not all in {sorted(options)}"
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).is_file(), config
    load_config(ROOT / config)  # a config the job accepts


def test_rayjob_manifest_runs_the_job_incrementally():
    manifest = yaml.safe_load((ROOT / "deploy" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    argv = shlex.split(manifest["spec"]["entrypoint"])
    _check_command(argv, _job_options())
    assert "--incremental" in argv


def test_readme_cron_line_submits_the_same_job():
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if "ray job submit" in line and "--incremental" in line and line.lstrip()[:1].isdigit()]
    assert lines, "the README shows a cron line with `ray job submit ... --incremental`"
    argv = shlex.split(lines[0].split(" -- ", 1)[1])
    _check_command(argv, _job_options())
