#!/usr/bin/env python
"""Answer questions about videos with a FlashVLM-pruned VLM, as one streaming Ray Data job.

    python jobs/video_qa.py                                   # configs/demo.yaml: local Ray, the shapes model
    python jobs/video_qa.py --config configs/llava15_7b.yaml --set selection.budget=32
    ray job submit --working-dir . -- python jobs/video_qa.py --config configs/llava15_7b.yaml

list (driver) -> decode (CPU actor pool) -> answer (model actor pool) -> write (Parquet) -> run record;
the run itself is pipeline.run.run. Ray: `ray.address` from the config, else RAY_ADDRESS (set by
`ray job submit`), else a new local Ray.

--incremental (or `incremental: true`): answer only the (video_uri, video_version, question) not yet
answered under the same settings_id. A run is all or nothing (pipeline/commit.py).

Exit status: 0 when the run succeeded (failed videos are error rows, not a failed run); 2 for a bad
config, a model.name that is neither a local directory, a hub id nor a registered name (before Ray starts),
or a local input/output uri on a cluster of several nodes; 1 when the run failed (a model that cannot
load, more than run.max_answer_failure_share of the videos failing in the answer stage, ...: one line
on stderr, and its record, status failed, in runs/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python jobs/video_qa.py` puts jobs/ first on the path, not the repo
    sys.path.insert(0, str(ROOT))

from pipeline.config import job_parser, load_config  # noqa: E402
from pipeline.lifecycle import exit_status  # noqa: E402
from pipeline.run import DEFAULT_CONFIG, run, summary_text  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = job_parser(__doc__.split("\n\n")[0], DEFAULT_CONFIG, "selection.budget=32")
    parser.add_argument(
        "--incremental", action="store_true",
        help="skip (video, version, question) already answered with the same model/sampling/selection settings",
    )
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.incremental = cfg.incremental or args.incremental
        print(f"config {args.config}: model {cfg.model.name}, budget {cfg.selection.budget}, {cfg.sampling.frames} "
              f"frames at {cfg.sampling.size}px, input {cfg.input.uri}, output {cfg.output.uri}", flush=True)
        record = run(cfg)
    except Exception as exc:
        return exit_status(exc)
    print(summary_text(cfg, record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
