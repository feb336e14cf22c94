"""An evaluation run's results as markdown, generated from its summary.json (never copied by hand).

    python -m pipeline.report output/reports/<run_id>/summary.json [--command "python jobs/evaluate.py"]
    python -m pipeline.report docs/evaluation_summary.json --compact     # the README's table

Prints the run (model, items, machine, wall time, the command), the table per budget (each method's
accuracy, without the near-chance question types when there are any, and its paired difference from
flashvlm with the 95% clip-bootstrap interval and McNemar's p: `pipeline.statistics.markdown_table`),
and the accuracy per question type with each type's chance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.statistics import NEAR_CHANCE, excludes_zero, markdown_table, method_label, paired_text


def machine() -> str:
    """The processor (lscpu's model name, from /proc/cpuinfo) and its logical CPUs, e.g. "AMD EPYC, 2 CPUs"."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def type_table(summary: Mapping[str, Any]) -> str:
    """Accuracy per (budget, method) x question type; a type's header carries its chance and whether the
    full budget is within NEAR_CHANCE of it."""
    chance = summary.get("chance_by_type") or {}
    near = set(summary.get("near_chance_types") or [])
    by_type = summary.get("by_question_type") or []
    types = sorted({r["question_type"] for r in by_type if r["question_type"] is not None})
    if not types:
        return ""
    cell = {(r["method"], json.dumps(r["options"], sort_keys=True), r["budget"], r["question_type"]): r for r in by_type}
    head = ["budget", "method"] + [
        f"{t} (n={next((r['items'] for r in by_type if r['question_type'] == t), 0)}, chance {chance.get(t, float('nan')):.2f}"
        + (", near chance)" if t in near else ")") for t in types
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["results"]:
        key = (r["method"], json.dumps(r["options"], sort_keys=True), r["budget"])
        values = [cell.get((*key, t), {}).get("accuracy") for t in types]
        lines.append("| " + " | ".join(["all" if r["budget"] is None else str(r["budget"]), method_label(r)]
                                       + ["-" if v is None else f"{v:.2f}" for v in values]) + " |")
    return "\n".join(lines)


def verdicts(summary: Mapping[str, Any]) -> str:
    """Where flashvlm wins or loses: only the comparisons whose interval excludes 0, per budget."""
    wins, losses = [], []
    for r in summary["results"]:
        vs = r.get("vs_flashvlm")
        if vs is None or not excludes_zero(vs):
            continue
        text = f"{method_label(r)} at {r['budget']} ({paired_text(vs, mark=False)})"
        (wins if vs["ci_high"] < 0 else losses).append(text)
    line = lambda items: "; ".join(items) if items else "none"  # noqa: E731
    return (f"Where the interval excludes 0: flashvlm is ahead of {line(wins)}. Flashvlm is behind {line(losses)}. "
            "Every other difference in the table is within what the clips' sampling allows.")


def compact_table(summary: Mapping[str, Any]) -> str:
    """The paired table in one row a budget (the README's): flashvlm's accuracy, then each other method's
    accuracy and its difference from flashvlm with the 95% interval (`*`: the interval excludes 0)."""
    results = summary["results"]
    methods = list(dict.fromkeys(method_label(r) for r in results if r["budget"] is not None))
    cells: dict[tuple, str] = {}
    for r in results:
        cell = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        if r.get("vs_flashvlm") is not None:
            cell += f" ({paired_text(r['vs_flashvlm'])})"
        cells[(r["budget"], method_label(r))] = cell
    lines = ["| tokens a frame | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    full = next((cell for (budget, _), cell in cells.items() if budget is None), "-")  # every method keeps every token
    for budget in dict.fromkeys(r["budget"] for r in results):
        row = [full] * len(methods) if budget is None else [cells.get((budget, m), "-") for m in methods]
        lines.append(f"| {'all (full)' if budget is None else budget} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def render(summary: Mapping[str, Any], command: Optional[str] = None) -> str:
    """The markdown of one run: what ran, where, the paired table and the table per question type."""
    near = summary.get("near_chance_types") or []
    facts = [f"model `{summary['model']}`, {summary['items']} items, run `{summary['run_id']}`"]
    if summary.get("machine"):
        facts.append(f"machine: {summary['machine']}")
    if summary.get("wall_s") is not None:
        facts.append(f"wall time {summary['wall_s'] / 60:.1f} min")
    parts = ["; ".join(facts) + "." + (f" Command: `{command}`." if command else "")]
    parts.append(
        "Accuracy per budget (visual tokens a frame; `all`: the full budget) and each method's paired difference "
        "from flashvlm on the same items (method - flashvlm; 95% percentile bootstrap interval over clips; p: "
        "McNemar's exact test, for random the median over its seeds; `*`: the interval "
        "excludes 0). Random is the mean over its seeds, every item its own draw."
    )
    if near:
        parts.append(f"Near chance at the full budget (within {NEAR_CHANCE} of 1 / the distinct answers of its type): "
                     f"{', '.join(near)}; the column beside accuracy leaves {'it' if len(near) == 1 else 'them'} out.")
    parts.append(markdown_table(summary))
    parts.append(verdicts(summary))
    table = type_table(summary)
    if table:
        parts += ["Accuracy per question type:", table]
    return "\n\n".join(parts) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="An evaluation's summary.json as markdown (pipeline/report.py)")
    parser.add_argument("summary", help="a run's summary.json (<output.uri>/reports/<run_id>/summary.json)")
    parser.add_argument("--command", default=None, help="the command that ran it, shown with the table")
    parser.add_argument("--compact", action="store_true", help="only the paired table in one row a budget (the README's)")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    print(compact_table(summary) if args.compact else render(summary, args.command), end="\n" if args.compact else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
