#!/usr/bin/env python
"""Measure what token pruning costs in answers: one sample at a grid of budgets x selection methods.

    python jobs/evaluate.py                                         # configs/eval_demo.yaml: shapes test split
    python jobs/evaluate.py --set model.name=flashvlm-tiny/llava --set evaluation.budgets=[null,64,16]
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval_llava15_7b_videomme.yaml

Each video is decoded once and its vision features computed once; every setting reuses them
(pipeline/evaluate.py). Writes <output.uri>/evaluations/ (Parquet, one row per item and setting) and a
run record in runs/, prints a table per method x budget and per question type, writes a plot, and ends
with one JSON line: {"model", "items", "results": [{"method", "budget", "options", "accuracy",
"retention", "agreement", "object_recall", "ms_per_answer"}, ...]}.

Exit status: 0 when the run succeeded (broken videos are error rows), 2 for a bad config or labels file
(before Ray starts), 1 when the run failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python jobs/evaluate.py` puts jobs/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from pipeline.evaluate import main  # noqa: E402


if __name__ == "__main__":
    sys.exit(main())
