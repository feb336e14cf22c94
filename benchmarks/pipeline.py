"""Pipeline throughput: decode-only (the ceiling here) against the full job with the tiny model.

    python benchmarks/pipeline.py [--inputs 128] [--rounds 3] [--config configs/demo.yaml] [--set key=value ...]

The clips of ../shared/videos (or generated ones when absent) are repeated, through symlinks, to at
least `--inputs` videos. On one local Ray, `--rounds` times: first the decode stage alone (frames/s of decoded
frames), then the whole job (list -> decode -> answer -> write) on the same inputs; each figure keeps its best
round (load from elsewhere only ever slows a run down), and every round's ratio is printed too. Peak memory is the
largest total resident memory of this process and all its descendants (Ray's GCS, raylet and workers,
which a local `ray.init` starts under it), sampled every 0.2 s.

Prints a table, then one JSON line with `pipeline_vs_decode`, `decode_fps`, `pipeline_fps`, `peak_memory_gb`.
Target: `pipeline_vs_decode >= 0.8` when the model is not the bottleneck; the JSON also reports the model
stage's summed time, which says whether it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.run import DEFAULT_CONFIG, decode_dataset, init_ray, list_inputs, questions_of, run  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "videos"


class PeakMemory:
    """Largest summed RSS of this process and its descendants, sampled in a background thread."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a process that just exited
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_inputs(folder: Path, count: int) -> int:
    """Symlink the sample clips (or generated ones) into `folder` until it holds >= count videos."""
    from shapes.clips import make_clips

    sources = sorted(p for p in SHARED_VIDEOS.glob("*") if p.suffix in {".mp4", ".mkv", ".webm", ".mov"}) if SHARED_VIDEOS.is_dir() else []
    if not sources:
        print(f"{SHARED_VIDEOS} not found: using generated clips")
        sources = make_clips(folder / "generated", 4)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        source = Path(sources[i % len(sources)])
        (folder / f"{i:04d}_{source.name}").symlink_to(source.resolve())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # 128 rather than the minimum 64: the model actor's start (importing torch and transformers, 2-5 s here)
    # is paid once per job, and a batch job runs far more videos than either.
    parser.add_argument("--inputs", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="decode-only + full runs; each measure keeps its best")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="flashvlm-bench-"))
    make_inputs(work / "videos", args.inputs)

    def config(round_: int):  # every round writes its own output, so each full run does all the work
        return load_config(args.config, [f"input.uri={work / 'videos'}", f"output.uri={work / f'output{round_}'}",
                                         f"run_id=benchmark{round_}", *args.overrides])

    cfg = config(0)
    listed, _ = list_inputs(cfg, cfg.input.uri, questions_of(cfg, cfg.input.uri))
    print(f"{listed.num_rows} inputs, {cfg.sampling.frames} frames each at {cfg.sampling.size}px, model {cfg.model.name}, "
          f"budget {cfg.selection.budget}/frame, decode actors {cfg.ray.decode_actors}, model actors {cfg.ray.model_actors}, "
          f"{args.rounds} rounds")

    rounds = []  # (decode_s, decoded_frames, decode_errors, record) per round
    with PeakMemory() as memory:
        init_ray(cfg)
        for r in range(args.rounds):
            cfg = config(r)
            # 1. decode alone
            start = time.perf_counter()
            decoded_frames, decode_errors = 0, 0
            for batch in decode_dataset(cfg, listed).iter_batches(batch_format="pyarrow", batch_size=None):
                for shape, error in zip(batch["frames_shape"].to_pylist(), batch["error"].to_pylist()):
                    if error is None:
                        decoded_frames += shape[0]
                    else:
                        decode_errors += 1
            decode_s = time.perf_counter() - start
            # 2. the whole job, same Ray, same inputs
            record = run(cfg)
            rounds.append((decode_s, decoded_frames, decode_errors, record))
            print(f"  round {r + 1}: decode only {decoded_frames / decode_s:.2f} frames/s, "
                  f"full pipeline {record.frames_decoded / record.pipeline_s:.2f} frames/s")

    # Each measure keeps its best round: on a shared machine, load from elsewhere only ever slows a run down.
    decode_s, decoded_frames, decode_errors, _ = min(rounds, key=lambda x: x[0] / x[1])
    record = min((x[3] for x in rounds), key=lambda rec: rec.pipeline_s / rec.frames_decoded)
    decode_fps = decoded_frames / decode_s
    pipeline_fps = record.frames_decoded / record.pipeline_s
    result = {
        "inputs": listed.num_rows,
        "rounds": args.rounds,
        "decode_fps": round(decode_fps, 2),
        "pipeline_fps": round(pipeline_fps, 2),
        "pipeline_vs_decode": round(pipeline_fps / decode_fps, 3),
        "peak_memory_gb": round(memory.peak_bytes / 2**30, 2),
        "decode_only_s": round(decode_s, 1),
        "pipeline_s": round(record.pipeline_s, 1),
        "model_s_summed": round(record.answer_s, 1),
        "decode_s_summed": round(record.decode_s, 1),
        "videos_ok": record.videos_ok,
        "videos_failed": record.videos_failed,
        "per_round_ratio": [round((x[3]["frames_decoded"] / x[3]["pipeline_s"]) / (x[1] / x[0]), 3) for x in rounds],
    }
    print(f"\n  decode only      {decoded_frames:6d} frames in {decode_s:6.1f} s  {decode_fps:7.2f} frames/s ({decode_errors} videos failed)")
    print(f"  full pipeline    {record.frames_decoded:6d} frames in {record.pipeline_s:6.1f} s  {pipeline_fps:7.2f} frames/s"
          f" (model {record.answer_s:.1f} s, decode {record.decode_s:.1f} s, summed over actors)")
    print(f"  pipeline / decode-only: {result['pipeline_vs_decode']:.2f} (target >= 0.8 when the model is not the bottleneck)")
    print(f"  peak memory (driver + Ray processes): {result['peak_memory_gb']:.2f} GiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
