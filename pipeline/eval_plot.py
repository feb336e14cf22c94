"""The evaluation's plot: accuracy (or agreement) and retention against visual tokens per frame."""

from __future__ import annotations

import io
import json
from typing import Any, Mapping, Optional

from pipeline.eval_config import FULL
from pipeline.storage import filesystem


def plot(results: list[dict[str, Any]], path: str, title: str, tokens_per_frame: int,
         storage_options: Optional[Mapping[str, Any]] = None) -> None:
    """Accuracy (or agreement, without labels) and retention against visual tokens per frame, one line per
    method (+ options), log x axis; every line ends at the full-budget point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next((r for r in results if r["method"] == FULL), None)
    labelled = any(r["accuracy"] is not None for r in results)
    left = ("accuracy", "accuracy") if labelled else ("agreement", "agreement with the full budget")
    # Retention needs a full-budget accuracy above 0; without it the right panel shows agreement instead.
    retained = any(r["retention"] is not None for r in results if r["method"] != FULL)
    right = ("retention", "retention (accuracy / full budget)") if retained else ("agreement", "agreement with the full budget")
    lines: dict[str, list[tuple[int, Optional[float], Optional[float]]]] = {}
    for r in results:
        if r["method"] != FULL:
            label = r["method"] + (" " + json.dumps(r["options"], sort_keys=True) if r["options"] else "")
            lines.setdefault(label, []).append((min(r["budget"], tokens_per_frame), r[left[0]], r[right[0]]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ticks = sorted({p[0] for points in lines.values() for p in points} | {tokens_per_frame})
    for label, points in lines.items():
        if full is not None:
            points = points + [(tokens_per_frame, full[left[0]], 1.0 if right[0] == "retention" else full[right[0]])]
        points.sort()
        xs = [p[0] for p in points]
        axes[0].plot(xs, [p[1] for p in points], marker="o", label=label)
        axes[1].plot(xs, [p[2] for p in points], marker="o", label=label)
    for ax, (_, name) in zip(axes, (left, right)):
        highest = max((y for line in ax.get_lines() for y in line.get_ydata() if y is not None), default=1.0)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("visual tokens per frame")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, max(1.05, highest + 0.05))  # retention can pass 1 when pruning helps
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    fs, target = filesystem(path, storage_options)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(target, buffer.getvalue())
