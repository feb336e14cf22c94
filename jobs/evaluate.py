#!/usr/bin/env python
"""Measure what token pruning costs in answers: one sample at a grid of budgets x selection methods.

    python jobs/evaluate.py                                         # configs/eval_demo.yaml: shapes test split
    python jobs/evaluate.py --set 'evaluation.budgets=[null,64,16]'                # fewer budgets
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval_llava15_7b_videomme.yaml

Each video is decoded once and its vision features computed once; every setting reuses them
(pipeline/evaluate.py). Writes <output.uri>/evaluations/ (Parquet, one row per item and setting) and a
run record in runs/, prints a table per method x budget and per question type, writes a plot, and ends
with one JSON line: {"model", "items", "results": [{"method", "budget", "options", "accuracy",
"retention", "agreement", "object_recall", "ms_per_answer"}, ...]}.

Exit status: 0 when the run succeeded (broken videos are error rows), 2 for a bad config, model.name or
labels file (before Ray starts), 1 when the run failed (one line on stderr; its record in runs/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python jobs/evaluate.py` puts jobs/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from pipeline.config import ConfigError, job_parser  # noqa: E402
from pipeline.eval_config import DEFAULT_CONFIG, load_eval_config  # noqa: E402
from pipeline.eval_labels import LabelsFileError  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.lifecycle import exit_status  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = job_parser("Measure what token pruning costs in answers (jobs/evaluate.py)", DEFAULT_CONFIG,
                        "evaluation.budgets=[null,64]")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_eval_config(args.config, args.overrides)
        print(f"config {args.config}: model {cfg.model.name}, budgets {cfg.evaluation.budgets}, methods "
              f"{[s.label() for s in cfg.evaluation.settings]}, input {cfg.input.uri}, output {cfg.output.uri}", flush=True)
        out = evaluate(cfg)
    except Exception as exc:
        return exit_status(exc, refused=(ConfigError, LabelsFileError))
    record = out["record"]
    print(f"\nevaluation {record.run_id} {record.status} in {record.wall_s:.1f} s: {record.answers} scored "
          f"rows, {record.videos_failed} videos failed; table {cfg.output.uri.rstrip('/')}/evaluations/", flush=True)
    print(out["tables"], flush=True)
    print(f"\ntables, summary and plot: {out['folder']}/", flush=True)
    if out["plot"]:
        print(f"plot: {out['plot']}", flush=True)
    print(json.dumps(out["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
