#!/usr/bin/env python
"""Per-segment accuracy on the labelled long shapes videos: scenes mode against the same scenes answered as
separate clips, and fixed windows that straddle the cuts beside them.

    python benchmarks/long_accuracy.py [--videos 3] [--fixed-s 6] [--set key=value ...]

Writes once under ~/.cache/flashvlm/long-accuracy-<videos>/ `videos` long videos
(shapes.clips.write_long_videos: 6 scenes of 4 s, hard cuts, long_questions.jsonl labels per scene) and
every scene again as a clip of its own (clips/, questions.jsonl with the same questions and answers).
Then three runs of the job (configs/demo.yaml: the committed flashvlm-tiny/shapes model, its sampling and
budget) into a temporary output: the clips whole, the long videos in scenes mode (threshold 10), and in
fixed mode with windows of --fixed-s (6 s windows straddle the 4 s scenes' cuts; each is labelled by the
scene it covers most). Prints each run's accuracy on its labelled answers; last line JSON with
clips_accuracy, scenes_accuracy, scenes_minus_clips (target: within 0.05), fixed_accuracy, the
segment counts and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.run import DEFAULT_CONFIG, run  # noqa: E402
from shapes.clips import encode_mp4, long_video_specs, questions, render, write_long_videos  # noqa: E402

SCENES, SCENE_S, FRAMES = 6, 4.0, 4


def write_inputs(folder: Path, videos: int) -> None:
    """The long videos and, in clips/, each of their scenes as a clip with the scene's questions."""
    if (folder / "clips" / "questions.jsonl").exists():
        return
    write_long_videos(folder, "test", videos, scenes=SCENES, scene_s=SCENE_S, frames=FRAMES)
    (folder / "clips").mkdir(exist_ok=True)
    rows = []
    for index in range(videos):
        for k, spec in enumerate(long_video_specs("test", index, SCENES, FRAMES)):
            name = f"long_{index:05d}_scene{k}.mp4"
            (folder / "clips" / name).write_bytes(encode_mp4(render(spec)))
            rows += [{"video_uri": name, "question": q.question, "answer": q.answer, "question_type": q.question_type}
                     for q in questions(spec)]
    (folder / "clips" / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def accuracy_of(name: str, overrides: list[str]) -> dict:
    cfg = load_config(DEFAULT_CONFIG, ["input.generate_shapes=null", "input.generate_long=null", "input.extra_uris=[]",
                                       "questions=[]", *overrides])
    record = run(cfg)
    if record.status != "succeeded" or record.videos_failed:
        raise RuntimeError(f"{name}: {record.status}, {record.videos_failed} failed")
    acc = record.answers_correct / record.answers_labelled
    print(f"{name}: {record.answers_correct} of {record.answers_labelled} ({100 * acc:.1f}%),"
          f" {record.videos_ok} segments, {record.wall_s:.0f} s", flush=True)
    return {"accuracy": round(acc, 4), "labelled": record.answers_labelled, "segments": record.videos_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--fixed-s", type=float, default=6.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides, key=value")
    args = parser.parse_args()
    folder = Path.home() / ".cache" / "flashvlm" / f"long-accuracy-{args.videos}"
    write_inputs(folder, args.videos)
    with tempfile.TemporaryDirectory() as out:
        common = [f"output.uri={out}", *args.overrides]
        long = [f"input.uri={folder}", f"questions_file={folder / 'long_questions.jsonl'}", *common]
        clips = accuracy_of("scenes as separate clips", [f"input.uri={folder / 'clips'}",
                                                          f"questions_file={folder / 'clips' / 'questions.jsonl'}", *common])
        scenes = accuracy_of("long videos, scenes mode", [*long, "sampling.segments={mode: scenes, threshold: 10}"])
        fixed = accuracy_of(f"long videos, fixed {args.fixed_s:g} s windows",
                            [*long, f"sampling.segments={{mode: fixed, length_s: {args.fixed_s}}}"])
    print(json.dumps({"videos": args.videos, "scenes": args.videos * SCENES, "clips_accuracy": clips["accuracy"],
                      "scenes_accuracy": scenes["accuracy"], "scenes_minus_clips": round(scenes["accuracy"] - clips["accuracy"], 4),
                      "fixed_s": args.fixed_s, "fixed_accuracy": fixed["accuracy"], "clips": clips, "scenes_mode": scenes,
                      "fixed_mode": fixed, "load_average": [round(x, 1) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
