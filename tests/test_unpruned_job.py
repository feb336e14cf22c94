"""The unpruned baseline through the job: `selection.budget: null` gives every video its answers, no error rows.

The job runs as a user runs it (`python jobs/video_qa.py`, its own local Ray), once per tiny model family.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_fixtures import GOOD_CLIPS, QUESTIONS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["flashvlm-tiny/llava", "flashvlm-tiny/qwen2_5_vl"])
def test_budget_null_answers_every_video_with_every_token(model, clip_dir, flashvlm_cache, tmp_path):
    from pipeline.tables import read_table

    videos = tmp_path / "videos"
    videos.mkdir()
    stems = {Path(name).stem for name in GOOD_CLIPS[:2]}
    for clip in sorted(clip_dir.iterdir()):
        if clip.stem in stems:
            (videos / clip.name).symlink_to(clip.resolve())
    assert len(list(videos.iterdir())) == 2
    overrides = {
        "input.uri": str(videos),
        "output.uri": str(tmp_path / "out"),
        "model.name": model,
        "questions": json.dumps(QUESTIONS),
        "model.max_new_tokens": "3",
        "sampling.frames": "2",
        "selection.budget": "null",
    }
    command = [sys.executable, "jobs/video_qa.py"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(FLASHVLM_CACHE=str(flashvlm_cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "videos: 2 ok, 0 failed" in done.stdout, done.stdout[-3000:]

    errors = read_table(str(tmp_path / "out"), "errors")
    assert errors.num_rows == 0, errors.to_pylist()
    answers = read_table(str(tmp_path / "out"), "answers").to_pylist()
    assert len(answers) == 2 * len(QUESTIONS)
    for row in answers:
        assert row["budget"] is None and row["answer"] is not None
        assert row["tokens_kept"] == row["tokens_total"] > 0
        assert sum(len(frame) for frame in row["kept"]) == row["tokens_total"]
        assert row["kept_important"] is None  # nothing pruned: no important/diverse split
