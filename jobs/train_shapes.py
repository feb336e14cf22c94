#!/usr/bin/env python
"""Train the small shapes LLaVA from a seed and save it where `flashvlm.load("flashvlm-tiny/shapes")` finds it.

    python jobs/train_shapes.py                                     # configs/train_shapes.yaml
    python jobs/train_shapes.py --set seed=1 --set output=/tmp/shapes --set stages.1.steps=100
    python jobs/train_shapes.py --set 'resume={checkpoint: /tmp/shapes, after_stage: 1}'   # a stopped run, from its stage-1 checkpoint

Prints the loss, clips/s and a validation score per stage, and ends with a JSON line: the test split's
accuracy per question type at full budget (every visual token).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python jobs/train_shapes.py` puts jobs/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from pipeline.config import ConfigError, job_parser, load_config  # noqa: E402
from pipeline.scoring import is_correct  # noqa: E402
from shapes.training import TrainConfig, train  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    args = job_parser(__doc__.split("\n\n")[0], ROOT / "configs" / "train_shapes.yaml", "stages.1.steps=100").parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides, schema=TrainConfig)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    record = train(cfg, is_correct, log=lambda line: print(line, flush=True))
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
