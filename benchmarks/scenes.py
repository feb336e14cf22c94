#!/usr/bin/env python
"""Shot detection on the generated long videos: are the hard cuts found, and what does it cost?

    python benchmarks/scenes.py [--videos 20] [--threshold 10] [--rate 8]

Writes `videos` long shapes videos (shapes.clips.write_long_videos: 6 scenes of 4 s, hard cuts) under
~/.cache/flashvlm/long-scenes/ once, runs pipeline.plan.detect_cuts on each (PySceneDetect's
ContentDetector on frames sampled `rate` times a second) and checks every true cut is found within
0.25 s and no other cut is reported. Last line: JSON with videos, cuts, found, false_cuts,
max_error_s, detect_s_per_video_minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.plan import detect_cuts  # noqa: E402
from shapes.clips import write_long_videos  # noqa: E402

SCENES, SCENE_S, TOLERANCE_S = 6, 4.0, 0.25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=8.0)
    args = parser.parse_args()
    folder = Path.home() / ".cache" / "flashvlm" / f"long-scenes-{args.videos}"
    if not (folder / "long_questions.jsonl").exists():
        write_long_videos(folder, "test", args.videos, scenes=SCENES, scene_s=SCENE_S)
    truth = [SCENE_S * k for k in range(1, SCENES)]
    found = false_cuts = 0
    worst, seconds = 0.0, 0.0
    for path in sorted(folder.glob("long_*.mp4")):
        start = time.perf_counter()
        with open(path, "rb") as f:
            cuts = detect_cuts(f, args.rate, args.threshold)
        seconds += time.perf_counter() - start
        matched = [min(cuts, key=lambda c: abs(c - t)) if cuts else None for t in truth]
        errors = [abs(m - t) for m, t in zip(matched, truth) if m is not None and abs(m - t) <= TOLERANCE_S]
        found += len(errors)
        worst = max([worst, *errors])
        false_cuts += sum(1 for c in cuts if min(abs(c - t) for t in truth) > TOLERANCE_S)
        print(f"{path.name}: cuts {[round(c, 3) for c in cuts]}", flush=True)
    minutes = args.videos * SCENES * SCENE_S / 60
    print(json.dumps({"videos": args.videos, "cuts": args.videos * len(truth), "found": found, "false_cuts": false_cuts,
                      "max_error_s": round(worst, 3), "threshold": args.threshold, "rate": args.rate,
                      "detect_s_per_video_minute": round(seconds / minutes, 3)}))


if __name__ == "__main__":
    main()
