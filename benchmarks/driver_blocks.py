#!/usr/bin/env python
"""What Ray Data keeps in the driver per task and block: driver RSS growth against the number of blocks.

    python benchmarks/driver_blocks.py [--blocks 10,100] [--rows 100000] [--repeats 1]

For each block count N, in a fresh process with a local Ray of 2 CPUs (after one small warm-up dataset):
`ray.data.range(N * rows, override_num_blocks=N).map_batches(identity)` materialised ("map"), and the same
left_anti-joined to another range of N blocks on 2 partitions ("join"); `--repeats` runs it that many times,
each dataset dropped before the next. The growth is the driver's RSS after the runs (and gc) minus before.
Per-block cost = (growth at the larger N - at the smaller) / (difference in N). It is why pipeline.todo reads
with tasks that follow the cluster (read_tasks), not one per file (docs/scale.md).

JSON last line: {"rows_per_block": ..., "map": {"10": MB, "100": MB}, "join": {...}, "kb_per_block": {"map": ..., "join": ...}}
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time


def identity(batch):
    return batch


def measure(blocks: int, rows: int, mode: str, repeats: int) -> float:
    """Driver RSS growth in MB (run in a fresh process)."""
    import psutil
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _temp_dir=tempfile.mkdtemp(prefix="fvdb", dir="/tmp"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(10, override_num_blocks=2).map_batches(identity, batch_format="pyarrow").materialize()
    gc.collect()
    time.sleep(1)
    before = psutil.Process().memory_info().rss
    for _ in range(repeats):
        ds = ray.data.range(blocks * rows, override_num_blocks=blocks).map_batches(identity, batch_format="pyarrow")
        if mode == "join":
            other = ray.data.range(blocks * rows, override_num_blocks=blocks)
            ds = ds.join(other, join_type="left_anti", num_partitions=2, on=("id",))
        ds.materialize().count()
        del ds
    gc.collect()
    time.sleep(1)
    grew = (psutil.Process().memory_info().rss - before) / 2**20
    ray.shutdown()
    return grew


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="10,100")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(int(args.measure[0]), args.rows, args.measure[1], args.repeats)))
        return
    counts = [int(n) for n in args.blocks.split(",")]
    out = {"rows_per_block": args.rows, "repeats": args.repeats}
    for mode in ("map", "join"):
        out[mode] = {}
        for n in counts:
            done = subprocess.run([sys.executable, __file__, "--measure", str(n), mode, "--rows", str(args.rows),
                                   "--repeats", str(args.repeats)], check=True, stdout=subprocess.PIPE, text=True)
            out[mode][str(n)] = round(float(done.stdout.strip().splitlines()[-1]), 1)
            print(f"{mode}, {n} blocks of {args.rows} rows: driver +{out[mode][str(n)]} MB", flush=True)
    lo, hi = min(counts), max(counts)
    if hi > lo:
        out["kb_per_block"] = {m: round((out[m][str(hi)] - out[m][str(lo)]) * 1024 / (hi - lo), 1) for m in ("map", "join")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
