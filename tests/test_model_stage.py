"""benchmarks/model_stage.py keeps working: its tiny size, two videos of two frames, in seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_stage_reports_every_budget():
    args = ["--device", "cpu", "--size", "tiny", "--videos", "2", "--frames", "2", "--questions", "2", "--new-tokens", "2",
            "--budgets", "full,16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_stage.py"), *args], capture_output=True, text=True,
                         env=env, timeout=240, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["device"] == "cpu" and [r["budget"] for r in result["results"]] == [None, 16]
    for r in result["results"]:
        assert r["videos_per_hour"] > 0 and r["vision_ms"] > 0 and r["prefill_ms"] > 0
    assert result["results"][1]["selection_batch_ms"] > 0
