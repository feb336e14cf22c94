"""The learning curves of a training record (the JSON line `jobs/train_shapes.py` prints), one panel a stage.

    python -m shapes.curves docs/train_shapes_llava_order.json --out docs/train_shapes_llava_order.png

Each panel: the training loss against the step, and the stage's validation score (its overall accuracy, or
its token accuracy for the text and alignment stages) on a second axis where the stage was validated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Optional


def validation_value(score: Mapping[str, Any]) -> Optional[float]:
    """One number of a stage's validation: its overall accuracy, else its only token accuracy."""
    if "overall" in score:
        return float(score["overall"])
    values = [v for v in score.values() if isinstance(v, (int, float))]
    return float(values[0]) if len(values) == 1 else None


def plot_record(record: Mapping[str, Any], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in record["stages"] if s.get("loss_curve")]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3.0), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        steps, losses = zip(*stage["loss_curve"])
        ax.plot(steps, losses, color="tab:blue")
        ax.set_title(f"{stage['kind']} ({stage.get('minutes', '?')} min)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8, color="tab:blue")
        curve = [(step, validation_value(score)) for step, score in stage.get("validation_curve") or []]
        curve = [(step, v) for step, v in curve if v is not None]
        if curve:
            right = ax.twinx()
            right.plot(*zip(*curve), "o-", color="tab:orange")
            right.set_ylabel("validation", fontsize=8, color="tab:orange")
            right.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{record.get('model', '')} seed {record.get('seed', '')}: {record.get('minutes', '?')} min", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shapes.curves", description=__doc__.split("\n")[0])
    parser.add_argument("record", help="a training record: the JSON line of jobs/train_shapes.py, in a file")
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {plot_record(json.loads(Path(args.record).read_text()), args.out)}")


if __name__ == "__main__":
    main()
