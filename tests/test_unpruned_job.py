"""The unpruned baseline through the job: `selection.budget: null` gives every video its answers, no error rows.

The whole run (`pipeline.run.run`: decode and model actors, writing, commit) on this module's local Ray,
once per tiny model family; the command line itself is tested in tests/test_job.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_fixtures import GOOD_CLIPS, QUESTIONS, tiny_job_config
from tiny_models import LLAVA_PATH, QWEN_PATH

pytestmark = pytest.mark.slow

RAY = {"decode_batch_size": 2, "model_batch_size": 2, "decode_timeout_s": 60}


@pytest.mark.parametrize("model", [LLAVA_PATH, QWEN_PATH])
def test_budget_null_answers_every_video_with_every_token(model, ray_local, clip_dir, flashvlm_cache, tmp_path):
    from pipeline.run import run
    from pipeline.tables import read_table

    videos = tmp_path / "videos"
    videos.mkdir()
    stems = {Path(name).stem for name in GOOD_CLIPS[:2]}
    for clip in sorted(clip_dir.iterdir()):
        if clip.stem in stems:
            (videos / clip.name).symlink_to(clip.resolve())
    assert len(list(videos.iterdir())) == 2
    cfg = tiny_job_config(
        videos, tmp_path / "out", RAY,
        model={"name": model, "dtype": "float32", "device": "cpu", "max_new_tokens": 3},
        selection={"budget": None},
    )
    record = run(cfg)
    assert (record.videos_ok, record.videos_failed) == (2, 0), record

    errors = read_table(str(tmp_path / "out"), "errors")
    assert errors.num_rows == 0, errors.to_pylist()
    answers = read_table(str(tmp_path / "out"), "answers").to_pylist()
    assert len(answers) == 2 * len(QUESTIONS)
    for row in answers:
        assert row["budget"] is None and row["answer"] is not None
        assert row["tokens_kept"] == row["tokens_total"] > 0
        assert sum(len(frame) for frame in row["kept"]) == row["tokens_total"]
        assert row["kept_important"] is None  # nothing pruned: no important/diverse split
