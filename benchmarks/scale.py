"""Driver cost at scale: listing a prefix of a million videos and the incremental filter, time and memory;
and (--questions) a questions file of a million videos.

    python benchmarks/scale.py                        # local: 100,000 and 1,000,000 files
    python benchmarks/scale.py --sizes 100000         # one size only
    python benchmarks/scale.py --store s3             # a moto S3 server on 127.0.0.1: 2,000 and 20,000 objects
    python benchmarks/scale.py --inventory            # an S3 Inventory of 10,000,000 objects, planned on Ray workers
    python benchmarks/scale.py --questions            # a questions file: 1,000,000 videos, 2 labelled questions each

Setup (once, outside the timing, reused when present): under --root (default /tmp/flashvlm-scale) the
largest size as empty-ish files in folders of 1,000 (`part-NN/` holds 100,000 each, or with --store s3 the
smaller size, so the smaller size is a subfolder), and for each size an output folder whose answers table holds 2 prior rows per video in the
real schema (pipeline.schema.ANSWERS), 5% of the videos at a stale version. The job asks both questions, so
the filter must find the 5% (two questions each) left to do.

Each size is measured in a fresh process: `pipeline.run.list_inputs` (listing + questions) and
`pipeline.run.drop_done` (the incremental anti-join), and the driver's peak RSS above its RSS before the
listing (psutil, sampled every 5 ms). JSON last line:
    {"videos": 1000000, "listing_s": ..., "filter_s": ..., "driver_peak_rss_mb": ..., "at_100k": {...}}
Targets at 1,000,000: listing + filter <= 120 s, driver peak RSS growth <= 1 GB.

--inventory (pipeline.todo.plan_on_workers): under --cache (default ~/.cache/flashvlm/scale-inventory), once,
an S3 Inventory in its Parquet layout (data/ of 100 files of 100,000 objects; one manifest.json naming the
first 10 files, 1,000,000 objects, and one naming all 100, 10,000,000), and for each size an answers table of
2 prior rows per video, 5% of the videos at a stale ETag. Each size is planned in a fresh process (a local
Ray of --cpus CPUs): inventory read and filter, the two left_anti joins, the regrouping, the counts. The RSS
growth is the driver's above its RSS after ray.init (ray.init's own is reported as ray_init_rss_mb). JSON
last line:
    {"videos": 10000000, "plan_s": ..., "driver_peak_rss_mb": ..., "left_to_do": 500000, "at_1m": {...}}
Targets at 10,000,000: driver peak RSS growth <= 300 MB and <= 1.3x the 1,000,000 figure, plan_s <= 600,
left_to_do exactly the 5% changed.
--questions: the questions-file path alone. Setup writes <root>/questions-1m.parquet (2 labelled questions
per video, relative video_uri as users write them); the measurement, in a fresh process, builds the
listing's table of those videos in Arrow (as ListVideos returns it; no files needed), then reads the file
once (`pipeline.run.questions_of`), gives each video its questions (`pipeline.questions.attach_questions`)
and takes the labels the writer joins (`labels_of`). JSON last line:
    {"videos": 1000000, "questions": 2000000, "questions_s": ..., "driver_peak_rss_mb": ...}
Target: driver peak RSS growth <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = ["What is happening?", "Who is in it?"]
PER_FOLDER = 1_000
PER_PART = 100_000
STALE_EVERY = 20  # one video in 20 changed since its answers: 5% left to do


def config(input_uri: str, output_uri: str, storage_options=None):
    from pipeline.config import validate_config

    return validate_config({
        "input": {"uri": input_uri, "extensions": [".mp4"]}, "questions": QUESTIONS,
        "model": {"name": "flashvlm-tiny/llava", "dtype": "float32", "device": "cpu"},
        "output": {"uri": output_uri}, "incremental": True, "storage_options": storage_options or {},
    })


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


# ---- setup -------------------------------------------------------------------------------------------------


def make_files(root: Path, n: int) -> None:
    """n files named part-PP/dDDD/vVVVVVVV.mp4; folders whose last file exists are kept as they are (their
    mtimes are the versions of the prior answers)."""
    t0, made = time.perf_counter(), 0
    for d in range(0, n, PER_FOLDER):
        folder = root / f"part-{d // PER_PART:02d}" / f"d{d // PER_FOLDER:04d}"
        if (folder / f"v{min(n, d + PER_FOLDER) - 1:08d}.mp4").exists():
            continue
        made += 1
        folder.mkdir(parents=True, exist_ok=True)
        base = str(folder)
        for i in range(d, min(n, d + PER_FOLDER)):
            fd = os.open(f"{base}/v{i:08d}.mp4", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x")
            os.close(fd)
    if made:
        print(f"created {made} folders of files under {root} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def prior_answers(cfg, uris: pa.Array, versions: pa.Array, sizes: pa.Array, q: np.ndarray, run_id: str) -> pa.Table:
    """ANSWERS rows of a prior run: one per (video, question), `q` the question index of each row."""
    import pyarrow as pa

    from pipeline.schema import ANSWERS

    m = len(q)
    cols = {
        "video_uri": uris, "video_version": versions, "video_size": sizes, "question_index": pa.array(q, pa.int16()),
        "question": pa.array(QUESTIONS).take(q), "answer": pa.array(["a short answer"] * m),
        "model": pa.array([cfg.model.name] * m), "budget": pa.array([64] * m, pa.int32()),
        "frames": pa.array([8] * m, pa.int16()), "frame_size": pa.array([336] * m, pa.int16()),
        "tokens_kept": pa.array([512] * m, pa.int32()), "tokens_total": pa.array([4608] * m, pa.int32()),
        "settings_id": pa.array([cfg.settings_id()] * m), "run_id": pa.array([run_id] * m),
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(m, f.type)) for f in ANSWERS}, schema=ANSWERS)


def make_answers(input_uri: str, output_uri: str, storage_options=None) -> None:
    """2 answers per listed video in the ANSWERS schema, 5% at a stale version; skipped when present."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.listing import list_videos
    from pipeline.storage import filesystem, join
    from pipeline.write import ParquetWriter, partition_dir

    fs, root = filesystem(output_uri, storage_options)
    if fs.exists(join(root, "answers")):
        return
    cfg = config(input_uri, output_uri, storage_options)
    listed = list_videos(input_uri, [".mp4"], storage_options)
    n = listed.num_rows
    stale = np.arange(n) % STALE_EVERY == 0
    version = pc.if_else(pa.array(stale), pc.binary_join_element_wise(listed.column("video_version"), "old", ""),
                         listed.column("video_version"))
    writer = ParquetWriter(output_uri, storage_options)
    folder = partition_dir(writer.root, "answers", "2026-01-01")
    per_file = 200_000
    for start in range(0, n, per_file // 2):
        rows = np.repeat(np.arange(start, min(n, start + per_file // 2)), 2)  # (2 m,) two questions per video
        q = np.tile([0, 1], len(rows) // 2)
        table = prior_answers(cfg, listed.column("video_uri").take(rows), version.take(rows),
                              listed.column("video_size").take(rows), q, f"prior-{start}")
        writer.write(table, folder, f"prior-{start:08d}.parquet")
    print(f"wrote {2 * n} prior answers under {output_uri}", file=sys.stderr, flush=True)


# ---- one measurement, in a fresh process -------------------------------------------------------------------


class PeakRSS:
    """Largest RSS of this process above its RSS at start, sampled in a thread."""

    def __init__(self, every_s: float = 0.005):
        self.proc, self.every_s = psutil.Process(), every_s
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return (self.peak - self.start) / 2**20


def measure(input_uri: str, output_uri: str, storage_options=None) -> dict:
    from pipeline.run import drop_done, list_inputs

    cfg = config(input_uri, output_uri, storage_options)
    rss = PeakRSS()
    t0 = time.perf_counter()
    listed, _ = list_inputs(cfg, input_uri, None)
    t1 = time.perf_counter()
    todo, done = drop_done(cfg, listed)
    t2 = time.perf_counter()
    grew_mb = rss.stop()
    left = sum(len(q) for q in todo.column("questions").to_pylist())
    return {"videos": listed.num_rows, "listing_s": round(t1 - t0, 2), "filter_s": round(t2 - t1, 2),
            "driver_peak_rss_mb": round(grew_mb, 1), "videos_left": todo.num_rows, "videos_done": done,
            "questions_left": left}


def video_names(n: int) -> "pyarrow.Array":
    """The relative paths of n videos (part-PP/dDDDD/vVVVVVVVV.mp4), built in Arrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    i = np.arange(n)
    parts = [pa.array(np.char.zfill((i // PER_PART).astype(str), 2)), pa.array(np.char.zfill((i // PER_FOLDER).astype(str), 4)),
             pa.array(np.char.zfill(i.astype(str), 8))]
    return pc.binary_join_element_wise("part-", parts[0], "/d", parts[1], "/v", parts[2], ".mp4", "")


def make_questions_file(path: Path, n: int) -> None:
    """2 labelled questions per video of n, relative video_uri; skipped when present."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return
    names = video_names(n)
    rows = np.repeat(np.arange(n), 2)
    q = np.tile([0, 1], n)
    pq.write_table(pa.table({"video_uri": names.take(rows), "question": pa.array(QUESTIONS).take(q),
                             "answer": pa.array(["red", "two"]).take(q)}), path)
    print(f"wrote {2 * n} questions to {path}", file=sys.stderr, flush=True)


def measure_questions(path: str, input_uri: str, n: int) -> dict:
    import pyarrow as pa

    from pipeline.questions import attach_questions, labels_of
    from pipeline.run import questions_of
    from pipeline.schema import LISTED

    cfg = config(input_uri, "/tmp/unused")
    cfg.questions_file = path
    cfg.questions = []
    rss = PeakRSS()
    t0 = time.perf_counter()
    uris = pa.compute.binary_join_element_wise(f"file://{input_uri}", video_names(n), "/")
    listed = pa.table({f.name: uris if f.name == "video_uri" else pa.nulls(n, f.type) for f in LISTED}, schema=LISTED)
    t1 = time.perf_counter()
    questions = questions_of(cfg, input_uri)  # read once
    todo, skipped = attach_questions(listed, cfg.questions, questions, input_uri)
    labels = labels_of(questions)
    t2 = time.perf_counter()
    grew_mb = rss.stop()
    return {"videos": todo.num_rows, "skipped": skipped, "questions": len(todo.column("questions").combine_chunks().flatten()),
            "labels": labels.num_rows, "listing_table_s": round(t1 - t0, 2), "questions_s": round(t2 - t1, 2),
            "driver_peak_rss_mb": round(grew_mb, 1)}


def run_child(input_uri: str, output_uri: str, storage_options=None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", input_uri, output_uri, json.dumps(storage_options or {})],
        check=True, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---- S3 ----------------------------------------------------------------------------------------------------


def start_moto():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "k", "secret": "s",
               "client_kwargs": {"region_name": "us-east-1"}}
    return proc, options


def make_objects(options: dict, bucket: str, n: int, per_part: int) -> None:
    import boto3
    import s3fs

    boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="k", aws_secret_access_key="s",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    fs = s3fs.S3FileSystem(**options)
    keys = {f"{bucket}/in/part-{i // per_part:02d}/d{i // PER_FOLDER:04d}/v{i:08d}.mp4": b"x" for i in range(n)}
    fs.pipe(keys, batch_size=256)  # s3fs sends these concurrently


# ---- an S3 Inventory, planned on workers ------------------------------------------------------------------

INVENTORY_FILES, PER_INVENTORY_FILE = 100, 100_000
INVENTORY_BUCKET = "videos"


def inventory_key(i):
    """The object keys of rows i (numpy int array): videos/part-PP/dDDDD/vVVVVVVVV.mp4."""
    return [f"videos/part-{k // PER_PART:03d}/d{k // PER_FOLDER:05d}/v{k:09d}.mp4" for k in i.tolist()]


def inventory_etag(i, stale=None):
    return [f"{k * 2654435761 % 2**64:016x}{k:016x}{'-old' if stale is not None and s else ''}"
            for k, s in zip(i.tolist(), stale.tolist() if stale is not None else [False] * len(i))]


def make_inventory(cache: Path) -> dict:
    """The S3 Inventory (Parquet layout) and the two manifests; returns {videos: manifest path}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    config_root = cache / "inventory" / INVENTORY_BUCKET / "daily"
    data = config_root / "data"
    data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for f in range(INVENTORY_FILES):
        path = data / f"{f:04d}.parquet"
        if path.exists():
            continue
        i = np.arange(f * PER_INVENTORY_FILE, (f + 1) * PER_INVENTORY_FILE)
        n = len(i)
        table = pa.table({
            "bucket": pa.array([INVENTORY_BUCKET] * n), "key": pa.array(inventory_key(i)),
            "version_id": pa.nulls(n, pa.string()), "is_latest": pa.array(np.ones(n, bool)),
            "is_delete_marker": pa.array(np.zeros(n, bool)), "size": pa.array(1_000_000 + i % 997, pa.int64()),
            "last_modified_date": pa.array(np.full(n, 1_767_225_600_000), pa.timestamp("ms", tz="UTC")),
            "e_tag": pa.array(inventory_etag(i)), "storage_class": pa.array(["STANDARD"] * n),
        })
        pq.write_table(table, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    if time.perf_counter() - t0 > 1:
        print(f"wrote the inventory under {data} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    manifests = {}
    for videos, stamp in ((100_000, "2026-01-01T00-00Z"), (1_000_000, "2026-01-01T01-00Z"), (10_000_000, "2026-01-02T01-00Z")):
        folder = config_root / stamp
        folder.mkdir(exist_ok=True)
        files = [{"key": f"inventory/{INVENTORY_BUCKET}/daily/data/{f:04d}.parquet", "size": (data / f"{f:04d}.parquet").stat().st_size,
                  "MD5checksum": "0" * 32} for f in range(videos // PER_INVENTORY_FILE)]
        (folder / "manifest.json").write_text(json.dumps({
            "sourceBucket": INVENTORY_BUCKET, "destinationBucket": "arn:aws:s3:::inventory", "version": "2016-11-30",
            "creationTimestamp": "1767229200000", "fileFormat": "Parquet",
            "fileSchema": "message s3.inventory { required binary bucket (STRING); required binary key (STRING); "
                          "optional binary version_id (STRING); optional boolean is_latest; optional boolean is_delete_marker; "
                          "optional int64 size; optional int64 last_modified_date (TIMESTAMP(MILLIS,true)); "
                          "optional binary e_tag (STRING); optional binary storage_class (STRING);}",
            "files": files}))
        manifests[videos] = folder / "manifest.json"
    return manifests


def make_inventory_answers(output: Path, videos: int) -> None:
    """2 prior answers per video of the inventory's first `videos`, 5% at a stale ETag; skipped when present."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq


    folder = output / "answers" / "date=2026-01-01"
    if (output / "answers" / "complete").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config(str(output), str(output))
    t0 = time.perf_counter()
    for start in range(0, videos, PER_INVENTORY_FILE):
        i = np.arange(start, start + PER_INVENTORY_FILE)
        stale = i % STALE_EVERY == 0
        rows = np.repeat(np.arange(len(i)), 2)  # (2 n,) two questions per video
        q = np.tile([0, 1], len(i))
        table = prior_answers(cfg, pa.array([f"s3://{INVENTORY_BUCKET}/{k}" for k in inventory_key(i)]).take(rows),
                              pa.array(inventory_etag(i, stale)).take(rows),
                              pa.array(1_000_000 + i % 997, pa.int64()).take(rows), q, f"prior-{start}")
        pq.write_table(table, folder / f"prior-{start:09d}.parquet")
    (output / "answers" / "complete").write_text("")
    print(f"wrote {2 * videos} prior answers under {output} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def question_counts(batch):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table({"n": pc.list_value_length(batch.column("questions"))})


def measure_inventory(manifest: str, output_uri: str, cpus: int) -> dict:
    import ray

    from pipeline.todo import plan_on_workers

    cfg = config(manifest, output_uri)
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"inventory_prefix": "videos/"})})
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    rss = PeakRSS()
    t0 = time.perf_counter()
    todo, counts = plan_on_workers(cfg, manifest)
    plan_s = time.perf_counter() - t0
    grew_mb = rss.stop()
    questions_left = todo.map_batches(question_counts, batch_format="pyarrow").sum("n")  # an aggregate, after the timing
    return {"videos": counts["videos_listed"], "plan_s": round(plan_s, 1), "driver_peak_rss_mb": round(grew_mb, 1),
            "left_to_do": counts["videos_to_do"], "already_done": counts["videos_already_done"], "questions_left": questions_left,
            "ray_init_s": round(init_s, 1), "ray_init_rss_mb": round((rss.start - before) / 2**20, 1)}


def main_inventory(args) -> None:
    cache = Path(args.cache).expanduser()
    manifests = make_inventory(cache)
    sizes = sorted(args.sizes or [1_000_000, 10_000_000])
    if set(sizes) - set(manifests):
        raise SystemExit(f"--inventory --sizes: each of {sorted(manifests)}")
    results = {}
    for n in sizes:
        output = cache / f"out-{label(n)}"
        make_inventory_answers(output, n)
        out = subprocess.run(
            [sys.executable, __file__, "--measure-inventory", str(manifests[n]), str(output), str(args.cpus)],
            check=True, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        ).stdout
        results[n] = json.loads(out.strip().splitlines()[-1])
        print(f"{label(n):>5}: {json.dumps(results[n])}", flush=True)
    big = results[sizes[-1]]
    print(json.dumps({**big, **{f"at_{label(n)}": results[n] for n in sizes[:-1]}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    parser.add_argument("--sizes", type=int, nargs="+", help="videos (default local: 100000 1000000; s3: 2000 20000)")
    parser.add_argument("--root", default="/tmp/flashvlm-scale")
    parser.add_argument("--questions", action="store_true", help="measure the questions-file path instead")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--inventory", action="store_true", help="plan from an S3 Inventory on Ray workers (1M and 10M)")
    parser.add_argument("--cache", default="~/.cache/flashvlm/scale-inventory", help="--inventory: where its inputs are kept")
    parser.add_argument("--cpus", type=int, default=2, help="--inventory: CPUs of the local Ray")
    parser.add_argument("--measure-inventory", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--measure-questions", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_inventory:
        manifest, output, cpus = args.measure_inventory
        print(json.dumps(measure_inventory(manifest, output, int(cpus))))
        return
    if args.inventory:
        main_inventory(args)
        return
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], json.loads(args.measure[2]) or None)))
        return
    if args.measure_questions:
        path, input_uri, n = args.measure_questions
        print(json.dumps(measure_questions(path, input_uri, int(n))))
        return
    if args.questions:
        n = max(args.sizes or [1_000_000])
        Path(args.root).mkdir(parents=True, exist_ok=True)
        path = Path(args.root) / f"questions-{label(n)}.parquet"
        make_questions_file(path, n)
        out = subprocess.run(
            [sys.executable, __file__, "--measure-questions", str(path), str(Path(args.root) / "videos"), str(n)],
            check=True, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        ).stdout
        print(out.strip().splitlines()[-1])
        return
    sizes = sorted(args.sizes or ([100_000, 1_000_000] if args.store == "local" else [2_000, 20_000]))
    # The smaller sizes are the first part folder of the largest: local files keep 100,000 a part (reused
    # across runs); S3 objects are made fresh, in parts of the smallest size.
    per_part = PER_PART if args.store == "local" else sizes[0]
    results, moto = {}, None
    try:
        if args.store == "s3":
            moto, options = start_moto()
            bucket = "scale"
            make_objects(options, bucket, sizes[-1], per_part)
            base, out_base = f"s3://{bucket}/in", f"s3://{bucket}/out"
        else:
            options, root = None, Path(args.root)
            make_files(root / "videos", sizes[-1])
            base, out_base = str(root / "videos"), str(root)
        for n in sizes:
            # the smaller size is the first part(s) of the larger one: a subfolder when it is one part
            input_uri = base if n == sizes[-1] else f"{base}/part-00"
            if n != sizes[-1] and n != min(per_part, sizes[-1]):
                raise SystemExit(f"--sizes: a smaller size must be {per_part} (one part folder)")
            output_uri = f"{out_base}/out-{label(n)}"
            make_answers(input_uri, output_uri, options)
            results[n] = run_child(input_uri, output_uri, options)
            print(f"{label(n):>5}: {json.dumps(results[n])}", flush=True)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
    big = results[sizes[-1]]
    print(json.dumps({**big, "store": args.store, **{f"at_{label(n)}": results[n] for n in sizes[:-1]}}))


if __name__ == "__main__":
    main()
