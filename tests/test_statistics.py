"""The evaluation's paired statistics (pipeline/statistics.py) against hand-computed cases and scipy."""

import json
from math import comb

import numpy as np
import pytest
from scipy import stats

from pipeline.statistics import (
    chance_by_type, clip_bootstrap_interval, compare_with, group_options, markdown_table, mcnemar_exact,
    near_chance_types, paired_difference, paired_summary,
)


def test_mcnemar_exact_is_the_binomial_test_on_the_discordant_pairs():
    # 10 items: both right on 2, both wrong on 1, flashvlm alone right on 6, the other alone on 1.
    reference = [1, 1, 0] + [1] * 6 + [0]
    other = [1, 1, 0] + [0] * 6 + [1]
    # By hand: 7 discordant pairs, 1 of them the other's; P(X <= 1) = (1 + 7) / 2**7, doubled.
    assert mcnemar_exact(reference, other) == pytest.approx(2 * (comb(7, 0) + comb(7, 1)) / 2**7) == pytest.approx(0.125)
    assert mcnemar_exact(other, reference) == pytest.approx(0.125)  # two-sided: symmetric
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0  # nothing discordant
    # Scores averaged over seeds: the sign of each item's difference counts, as scipy's sign test has it.
    reference, other = [1, 1, 1, 0, 1], [0.2, 0.6, 1.0, 0.4, 0.0]
    assert mcnemar_exact(reference, other) == pytest.approx(stats.binomtest(1, 4, 0.5).pvalue) == pytest.approx(0.625)


def test_clip_bootstrap_resamples_whole_clips():
    # Two clips: A's two items both +1, B's one item 0. Resampling two clips: AA 1, AB 2/3, BB 0, with
    # probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5% percentiles are 0 and 1.
    low, high = clip_bootstrap_interval([1.0, 1.0, 0.0], ["a", "a", "b"])
    assert (low, high) == (pytest.approx(0.0), pytest.approx(1.0))
    # Every clip the same: nothing varies.
    assert clip_bootstrap_interval([0.5, 0.5, 0.5], ["a", "b", "c"]) == (0.5, 0.5)
    # Deterministic in its seed, and wider when one clip's items move together than when they are apart.
    rng = np.random.default_rng(3)
    diff = rng.choice([-1.0, 0.0, 1.0], size=200, p=[0.2, 0.5, 0.3])
    clustered = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=20, p=[0.2, 0.5, 0.3]), 10)  # 20 clips of 10 equal items
    apart = clip_bootstrap_interval(diff, list(range(200)))
    assert apart == clip_bootstrap_interval(diff, list(range(200)))
    together = clip_bootstrap_interval(clustered, list(np.repeat(range(20), 10)))
    assert together[1] - together[0] > 2 * (apart[1] - apart[0])
    # With one item a clip it is the ordinary bootstrap of the mean: its interval is about the normal one.
    half = 1.96 * diff.std(ddof=1) / np.sqrt(200)
    assert apart[0] == pytest.approx(diff.mean() - half, abs=0.015) and apart[1] == pytest.approx(diff.mean() + half, abs=0.015)
    with pytest.raises(ValueError, match="one length"):
        clip_bootstrap_interval([1.0], ["a", "b"])


def test_paired_difference_is_other_minus_reference():
    out = paired_difference([1, 1, 0, 1], [0, 1, 1, 0], ["a", "a", "b", "b"])
    assert set(out) == {"diff", "ci_low", "ci_high", "p"}
    assert out["diff"] == pytest.approx(-0.25) and out["ci_low"] <= out["diff"] <= out["ci_high"]
    assert out["p"] == pytest.approx(stats.binomtest(1, 3, 0.5).pvalue)


def row(method, options, budget, item, clip, correct, kind="colour", expected="red"):
    return {"method": method, "options": json.dumps(options, sort_keys=True), "budget": budget, "item": item,
            "video_uri": clip, "correct": correct, "question_type": kind, "expected": expected, "error": None}


def test_compare_with_pairs_items_and_averages_random_over_its_seeds():
    rows = [row("flashvlm", {}, 16, i, "ab"[i // 2], c) for i, c in enumerate([1, 1, 0, 1])]
    rows += [row("saliency", {}, 16, i, "ab"[i // 2], c) for i, c in enumerate([1, 0, 0, 1])]
    # random at two seeds: item 0 right at both (1.0), item 1 at one (0.5), items 2 and 3 at none.
    rows += [row("random", {"seed": s}, 16, i, "ab"[i // 2], c)
             for s, cs in ((0, [1, 1, 0, 0]), (1, [1, 0, 0, 0])) for i, c in enumerate(cs)]
    rows += [row("full", {}, None, i, "ab"[i // 2], 1) for i in range(4)]  # no flashvlm at its budget: left out
    rows.append({**row("uniform", {}, 16, 0, "a", None), "error": "boom"})  # errors are not scored
    out = compare_with(rows)
    assert set(out) == {("saliency", "{}", 16), ("random", "{}", 16)}
    assert out[("saliency", "{}", 16)]["diff"] == pytest.approx(-0.25)
    assert out[("saliency", "{}", 16)]["p"] == 1.0  # one discordant pair
    # random's items: 1.0, 0.5, 0.0, 0.0 against 1, 1, 0, 1: diff (0 - 0.5 + 0 - 1) / 4. p: seed 0 has one
    # discordant item (p 1), seed 1 two, both flashvlm's (p 0.5); their median 0.75.
    assert out[("random", "{}", 16)]["diff"] == pytest.approx(-0.375)
    assert out[("random", "{}", 16)]["p"] == pytest.approx(0.75)
    assert group_options("random", '{"seed": 3, "x": 1}') == '{"x": 1}' and group_options("uniform", '{"seed": 3}') == '{"seed": 3}'


def test_chance_and_the_types_near_it():
    labels = [{"question_type": "motion", "expected": d} for d in ("left", "Left.", "right", "up", "down", "still")]
    labels += [{"question_type": "exists", "expected": a} for a in ("yes", "no")] + [{"question_type": "x", "expected": None}]
    assert chance_by_type(labels) == {"motion": 0.2, "exists": 0.5}  # "Left." is "left" as scored
    assert near_chance_types({"motion": 0.24, "exists": 0.98}, {"motion": 0.2, "exists": 0.5}) == ["motion"]
    assert near_chance_types({"motion": 0.26}, {"motion": 0.2}) == []
    rows = [row("full", {}, None, i, "a", c, kind, e) for i, (kind, e, c) in enumerate(
        [("motion", "left", 0), ("motion", "right", 1), ("motion", "up", 0), ("motion", "down", 0), ("motion", "still", 0),
         ("exists", "yes", 1), ("exists", "no", 1)])]
    rows += [{**r, "method": "flashvlm", "budget": 8} for r in rows]
    summary = paired_summary(rows)
    assert summary["near_chance_types"] == ["motion"] and summary["full_accuracy_by_type"]["motion"] == 0.2
    assert summary["accuracy_without_near_chance"][("full", "{}", None)] == 1.0  # the two yes/no items


def test_markdown_table_marks_only_intervals_that_exclude_zero():
    summary = {"near_chance_types": ["motion"], "results": [
        {"method": "full", "options": {}, "budget": None, "accuracy": 0.8, "accuracy_without_near_chance": 0.9, "vs_flashvlm": None},
        {"method": "saliency", "options": {}, "budget": 16, "accuracy": 0.5, "accuracy_without_near_chance": 0.6,
         "vs_flashvlm": {"diff": -0.1, "ci_low": -0.15, "ci_high": -0.05, "p": 0.001}},
        {"method": "random", "options": {}, "budget": 16, "accuracy": 0.55, "accuracy_without_near_chance": 0.6,
         "vs_flashvlm": {"diff": -0.05, "ci_low": -0.12, "ci_high": 0.02, "p": 0.2}},
    ]}
    lines = markdown_table(summary).splitlines()
    assert lines[0] == "| budget | method | accuracy | accuracy without motion | vs flashvlm: diff [95% interval] | p |"
    assert lines[3] == "| 16 | saliency | 0.500 | 0.600 | -0.100 [-0.150, -0.050] * | 0.001 |"
    assert lines[4].endswith("| -0.050 [-0.120, +0.020] | 0.2 |")


def test_docs_evaluation_table_is_generated_from_its_summary():
    """docs/evaluation.md carries `python -m pipeline.report docs/evaluation_summary.json`'s output verbatim,
    and the README its --compact table."""
    from pathlib import Path

    from pipeline.report import compact_table, render

    docs = Path(__file__).resolve().parents[1] / "docs"
    summary = json.loads((docs / "evaluation_summary.json").read_text())
    assert markdown_table(summary) in (docs / "evaluation.md").read_text()
    assert compact_table(summary) in (docs.parent / "README.md").read_text()  # the README's, generated the same way
    assert render(summary).split("\n\n", 1)[1] in (docs / "evaluation.md").read_text()
