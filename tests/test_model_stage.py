"""benchmarks/model_stage.py keeps working: its tiny size, one video of two frames, in seconds."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import model_stage  # noqa: E402


def test_model_stage_reports_every_budget(one_thread, capsys):
    result = model_stage.main(["--device", "cpu", "--size", "tiny", "--videos", "2", "--frames", "2",
                               "--questions", "2", "--new-tokens", "2", "--budgets", "full,16"])
    assert [r["budget"] for r in result["results"]] == [None, 16]
    for r in result["results"]:
        assert r["videos_per_hour"] > 0 and r["vision_ms"] > 0 and r["prefill_ms"] > 0
    assert result["results"][1]["selection_batch_ms"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"device": "cpu"')
