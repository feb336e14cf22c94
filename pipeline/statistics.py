"""Paired statistics of the evaluation: is one selector's accuracy different from another's on the same items?

Every method answers the same items at a budget, so they are compared item by item:
    diff            accuracy(method) - accuracy(reference), over the items both scored;
    ci_low/ci_high  a 95% percentile bootstrap interval of diff that resamples clips, not items: the questions
                    of one clip share its frames and its selection, so they are not independent draws;
    p               McNemar's exact test: under "no difference" the items one gets right and the other wrong
                    split 1/2 : 1/2 either way (scipy.stats.binomtest on the discordant pairs). For random, run
                    at several seeds, the median over its seeds of each seed's McNemar p (its diff and interval
                    use its per-item mean over the seeds).
Plus the question types that sit at chance (`chance_by_type`, `near_chance_types`), and the markdown table
of a summary (`markdown_table`). Pure functions over lists and dicts: the evaluation calls them on its rows.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95  # the interval's confidence level
RESAMPLES = 10_000  # bootstrap resamples: the interval's ends move by ~0.002 between bootstrap seeds at 400 items
NEAR_CHANCE = 0.05  # a question type whose full-budget accuracy is within this of chance says little

Key = tuple[str, str, Optional[int]]  # (method, options as group JSON, budget)


# --------------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------------


def mcnemar_exact(reference: Sequence[float], other: Sequence[float]) -> float:
    """Two-sided exact p that paired per-item scores in [0, 1] differ: the items where `other` scores above
    `reference` against those where it scores below, as Binomial(n, 1/2) (ties carry no information).
    1.0 when no item differs."""
    diff = np.asarray(other, dtype=float) - np.asarray(reference, dtype=float)
    above, below = int((diff > 0).sum()), int((diff < 0).sum())
    if above + below == 0:
        return 1.0
    return float(stats.binomtest(above, above + below, 0.5).pvalue)


def clip_bootstrap_interval(
    diff: Sequence[float], clips: Sequence[Any], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item `diff` when whole clips are resampled.

    A resample draws as many clips as there are, with replacement, and takes the mean over all their items
    (sum of their diffs / their item count), so a clip with more items weighs more, as in the accuracy itself.
    Deterministic in `seed`. Every clip's diffs equal (e.g. all 0): the interval is that one value.
    """
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 1 or len(diff) != len(clips) or not len(diff):
        raise ValueError(f"diff and clips must be non-empty and of one length, got {len(diff)} and {len(clips)}")
    index = {c: i for i, c in enumerate(dict.fromkeys(clips))}
    of_clip = np.array([index[c] for c in clips])
    sums = np.bincount(of_clip, weights=diff)  # (C,) each clip's summed diff
    counts = np.bincount(of_clip).astype(float)  # (C,) each clip's items
    if np.ptp(sums / counts) == 0:  # nothing to resample: scipy would warn of a degenerate distribution
        value = float(sums[0] / counts[0])
        return value, value
    result = stats.bootstrap(
        (sums, counts), lambda s, n, axis=-1: s.sum(axis=axis) / n.sum(axis=axis), paired=True, vectorized=True,
        n_resamples=resamples, confidence_level=level, method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(
    reference: Sequence[float], other: Sequence[float], clips: Sequence[Any], *, seed: int = 0
) -> dict[str, float]:
    """{diff, ci_low, ci_high, p} of `other` against `reference`: per-item scores of the same items, in the
    same order, and each item's clip."""
    if not len(reference) == len(other) == len(clips) or not len(clips):
        raise ValueError(f"reference, other and clips must be non-empty and of one length, got "
                         f"{len(reference)}, {len(other)} and {len(clips)}")
    diff = np.asarray(other, dtype=float) - np.asarray(reference, dtype=float)
    low, high = clip_bootstrap_interval(diff, clips, seed=seed)
    return {"diff": float(diff.mean()), "ci_low": low, "ci_high": high, "p": mcnemar_exact(reference, other)}


# --------------------------------------------------------------------------------------------------
# From the evaluation's rows
# --------------------------------------------------------------------------------------------------


def group_options(method: str, options: str) -> str:
    """The options JSON a row is summarized under: random's seed left out, so a random setting run at
    several seeds is one line whose figures are the mean over its seeds."""
    if method != "random":
        return options
    return json.dumps({k: v for k, v in json.loads(options).items() if k != "seed"}, sort_keys=True)


def item_key(row: Mapping[str, Any]) -> tuple[int, int]:
    """What one evaluated item is: (item, segment_index), a labels row or question asked of one segment."""
    return row["item"], row.get("segment_index") or 0


def clip_of(row: Mapping[str, Any]) -> tuple[str, int]:
    """The clip an item's frames come from: (video_uri, segment_index); items of one clip are not independent."""
    return row["video_uri"], row.get("segment_index") or 0


def item_scores(rows: Iterable[Mapping[str, Any]]) -> dict[Key, dict[tuple[int, int], tuple[tuple[str, int], Optional[str], float]]]:
    """{(method, group options, budget): {item: (its clip, its question type, its score)}} over the scored,
    labelled rows; the score is `correct` as 0/1, or its mean over the rows of one item (random's seeds)."""
    sums: dict[Key, dict[tuple[int, int], list]] = {}
    for r in rows:
        if r["error"] is None and r["correct"] is not None:
            key = (r["method"], group_options(r["method"], r["options"]), r["budget"])
            entry = sums.setdefault(key, {}).setdefault(item_key(r), [clip_of(r), r["question_type"], 0.0, 0])
            entry[2] += float(r["correct"])
            entry[3] += 1
    return {key: {item: (clip, kind, total / n) for item, (clip, kind, total, n) in items.items()}
            for key, items in sums.items()}


def compare_with(
    rows: Iterable[Mapping[str, Any]], reference: tuple[str, str] = ("flashvlm", "{}")
) -> dict[Key, dict[str, float]]:
    """{(method, group options, budget): {diff, ci_low, ci_high, p}} of every other setting against the
    `reference` (method, options JSON) at the same budget, on the items both scored. Settings without the
    reference at their budget (the full budget, the reference itself) are left out."""
    rows = list(rows)
    scores = item_scores(rows)
    runs: dict[Key, dict[str, dict[tuple[int, int], float]]] = {}  # each seed's own 0/1 scores (one run for most methods)
    for r in rows:
        if r["error"] is None and r["correct"] is not None:
            key = (r["method"], group_options(r["method"], r["options"]), r["budget"])
            runs.setdefault(key, {}).setdefault(r["options"], {})[item_key(r)] = float(r["correct"])
    out = {}
    for key, theirs in scores.items():
        ours = scores.get((*reference, key[2]))
        if ours is None or key[:2] == reference:
            continue
        items = sorted(set(ours) & set(theirs))
        if items:
            out[key] = paired_difference([ours[i][2] for i in items], [theirs[i][2] for i in items],
                                         [ours[i][0] for i in items])
            out[key]["p"] = float(np.median([
                mcnemar_exact([ours[i][2] for i in items if i in run], [run[i] for i in items if i in run])
                for run in runs[key].values()
            ]))
    return out


def accuracy_without(rows: Iterable[Mapping[str, Any]], types: Iterable[str]) -> dict[Key, Optional[float]]:
    """{(method, group options, budget): mean item score over the items of every question type but `types`}."""
    types = set(types)
    out: dict[Key, Optional[float]] = {}
    for key, items in item_scores(rows).items():
        kept = [score for _, kind, score in items.values() if kind not in types]
        out[key] = sum(kept) / len(kept) if kept else None
    return out


def paired_summary(rows: Sequence[Mapping[str, Any]], full_method: str = "full") -> dict[str, Any]:
    """What the evaluation's summary adds to its accuracy tables, from its rows:
        chance_by_type                 {type: chance} (`chance_by_type` of the labelled items)
        full_accuracy_by_type          {type: the full budget's accuracy}
        near_chance_types              the types within NEAR_CHANCE of chance at the full budget
        accuracy_without_near_chance   {(method, group options, budget): accuracy without them}
        vs_flashvlm                    {(method, group options, budget): {diff, ci_low, ci_high, p}}
    """
    chance = chance_by_type(r for r in rows if r["error"] is None)
    full: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == full_method and r["error"] is None and r["correct"] is not None and r["question_type"] is not None:
            full.setdefault(r["question_type"], []).append(float(r["correct"]))
    full_accuracy = {kind: sum(v) / len(v) for kind, v in sorted(full.items())}
    near = near_chance_types(full_accuracy, chance)
    return {
        "chance_by_type": chance, "full_accuracy_by_type": full_accuracy, "near_chance_types": near,
        "accuracy_without_near_chance": accuracy_without(rows, near), "vs_flashvlm": compare_with(rows),
    }


def chance_by_type(labels: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """{question_type: 1 / the number of distinct answers of that type among the labelled items}: the
    accuracy of guessing uniformly among the answers the labels use (open answers, normalized as scored)."""
    from pipeline.scoring import normalize_answer

    answers: dict[str, set[str]] = {}
    for item in labels:
        if item.get("question_type") is not None and item.get("expected") is not None:
            answers.setdefault(item["question_type"], set()).add(normalize_answer(item["expected"]))
    return {kind: 1.0 / len(values) for kind, values in answers.items()}


def near_chance_types(full_accuracy: Mapping[str, Optional[float]], chance: Mapping[str, float],
                      margin: float = NEAR_CHANCE) -> list[str]:
    """The question types whose full-budget accuracy is within `margin` of their chance, sorted."""
    return sorted(kind for kind, accuracy in full_accuracy.items()
                  if accuracy is not None and kind in chance and abs(accuracy - chance[kind]) <= margin)


# --------------------------------------------------------------------------------------------------
# The table of a summary (docs/evaluation.md is generated from a run's summary.json with it)
# --------------------------------------------------------------------------------------------------


def method_label(result: Mapping[str, Any]) -> str:
    """A result's method and options as a table shows them, e.g. "flashvlm text_weighting: norm"."""
    options = result.get("options") or {}
    return result["method"] + ("" if not options else " " + ", ".join(f"{k}: {v}" for k, v in sorted(options.items())))


def excludes_zero(vs: Mapping[str, float]) -> bool:
    return vs["ci_low"] > 0 or vs["ci_high"] < 0


def paired_text(vs: Mapping[str, float], mark: bool = True) -> str:
    """A paired difference as the tables print it: "-0.207 [-0.279, -0.138]", with " *" (mark) when its
    interval excludes 0."""
    star = " *" if mark and excludes_zero(vs) else ""
    return f"{vs['diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]{star}"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """Per budget, each method's accuracy (and without the near-chance types, when any) and its paired
    difference from flashvlm with the 95% clip-bootstrap interval and McNemar's p, as a markdown table."""
    without = summary.get("near_chance_types") or []
    head = ["budget", "method", "accuracy"]
    if without:
        head.append(f"accuracy without {', '.join(without)}")
    head += ["vs flashvlm: diff [95% interval]", "p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["results"]:
        vs = r.get("vs_flashvlm")
        cells = ["all" if r["budget"] is None else str(r["budget"]), method_label(r),
                 "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"]
        if without:
            cells.append("-" if r.get("accuracy_without_near_chance") is None else f"{r['accuracy_without_near_chance']:.3f}")
        if vs is None:
            cells += ["-", "-"]
        else:
            cells += [paired_text(vs), f"{vs['p']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
