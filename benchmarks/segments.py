#!/usr/bin/env python
"""A long video as time segments: does seeking work, does a segment read only its bytes, and do two
decode actors decode one video's segments faster than one?

    python benchmarks/segments.py [--minutes 20] [--mbps 1.2] [--length-s 30] [--sources local,s3]

Generates once (cached under ~/.cache/flashvlm/segments-bench/) an H.264 MP4 of `--minutes` minutes at
`--mbps` (160x120 noise at 10 fps, a keyframe every 2 s, the index at the end as most encoders write it),
then for each source (the local folder, and the same file in a moto S3 server on 127.0.0.1 that this
script starts and stops, in a process of its own) in `fixed` mode with windows of `--length-s`:

- plan_s: planning the video (pipeline.plan.plan_video: container metadata only)
- first_segment_decode_s / last_segment_decode_s: pipeline.decode.read_and_decode of the first and the
  last segment, in this process, each the median of 3, each cold (the container index read again, nothing
  held from the call before): seeking, the last costs what the first does
- bytes_read_ratio: bytes read from storage for all segments, one after the other in this process
  (read_and_decode's bytes_read: every byte range fetched, the container index once) / file size
- parallel_speedup: the video's planned segments, one a call, on 1 decode actor and then on 2 (the
  pipeline's `DecodeVideos`, a CPU each, on a 2-CPU local Ray), timed once the actors are up and have
  decoded a segment each: the decode stage's own work, which a run's actors do for video after video
- stage_speedup: the same through the whole decode stage (pipeline.run.decode_dataset, decode_batch_size 1),
  cold: Ray Data starting the actor pool (~2-4 s an actor here) is inside each wall

- server_busy (S3): the moto server's CPU seconds per second of the warm decode with 1 and with 2 actors; near
  1.0 the server, a single Python process on the same 2 cores, is what the actors wait on
- server_ms_per_mib_get (S3): the server's CPU milliseconds per 1 MiB range GET of the video and of a 4 MiB
  object: what one range read costs it, and whether that grows with the object

The JSON last line holds these keys for the S3 read, and the same under "local"; with the load average.
Targets: last / first <= 1.5, bytes_read_ratio <= 1.5, parallel_speedup >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flashvlm.decode import Sampling  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.decode import read_and_decode  # noqa: E402
from pipeline.plan import plan_video  # noqa: E402
from pipeline.run import DEFAULT_CONFIG, decode_dataset, init_ray, list_inputs, plan_dataset, questions_of  # noqa: E402

FPS, WIDTH, HEIGHT, GOP_S = 10, 160, 120, 2
S3_KEY, S3_SECRET, S3_REGION, BUCKET = "bench-key", "bench-secret", "us-east-1", "segments-bench"


def long_video(minutes: float, mbps: float) -> Path:
    """The cached benchmark video: noise frames (so the encoder spends the bitrate), written once."""
    import av

    folder = Path.home() / ".cache" / "flashvlm" / "segments-bench"
    path = folder / f"noise_{minutes:g}min_{mbps:g}mbps.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (31, HEIGHT, WIDTH, 3), dtype=np.uint8)  # (31, H, W, 3): cycled, never repeated in a GOP
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={
            "preset": "ultrafast", "g": str(GOP_S * FPS), "keyint_min": str(GOP_S * FPS), "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = int(mbps * 1e6)
        for i in range(int(minutes * 60 * FPS)):
            frame = av.VideoFrame.from_ndarray(pool[i % len(pool)], format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)
    return path


def serve_moto(port: int, stop) -> None:
    """A moto S3 server on 127.0.0.1:port until `stop` is set (run in a process of its own)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stop.wait()
    server.stop()


def moto_s3():
    """A moto S3 server on a free loopback port, in a process of its own so that serving the decode actors'
    range reads does not wait on this driver's interpreter: (process, stop event, storage_options)."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")  # never fork a process that runs Ray
    stop = spawn.Event()
    process = spawn.Process(target=serve_moto, args=(port, stop), daemon=True)
    process.start()
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or not process.is_alive():
                raise RuntimeError(f"the moto server did not start on port {port}")
            time.sleep(0.2)
    return process, stop, {"endpoint_url": f"http://127.0.0.1:{port}", "key": S3_KEY, "secret": S3_SECRET,
                           "client_kwargs": {"region_name": S3_REGION}}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def warm_decode_s(cfg, planned: "pyarrow.Table", actors: int) -> float:
    """Seconds `actors` started DecodeVideos actors (a CPU each) take for every row of `planned`, one a call."""
    import ray

    from pipeline.decode import DecodeVideos

    Decoder = ray.remote(num_cpus=1)(DecodeVideos)
    pool = [Decoder.remote(**cfg.sampling.frame_options(), storage_options=cfg.storage_options,
                           timeout_s=cfg.ray.decode_timeout_s, threads=cfg.ray.decode_threads) for _ in range(actors)]
    ray.get([a.__call__.remote(planned.slice(i, 1)) for i, a in enumerate(pool)])  # up, helper process started
    start = time.perf_counter()
    tables = list(ray.util.ActorPool(pool).map_unordered(lambda a, row: a.__call__.remote(row),
                                                         [planned.slice(i, 1) for i in range(planned.num_rows)]))
    seconds = time.perf_counter() - start
    failed = [e for t in tables for e in t.column("error").to_pylist() if e]
    if failed:
        raise RuntimeError(f"{actors} warm decode actors: errors {failed[:3]}")
    for a in pool:
        ray.kill(a)
    return seconds


def cpu_s(pid: Optional[int]) -> float:
    """CPU seconds (user + system) process `pid` has used so far; 0 without one."""
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def ranged_get_ms(fs, key: str, server_pid: int, gets: int = 10) -> float:
    """The S3 server's CPU milliseconds per 1 MiB range GET of `key` (the first 3 MiB, in turn)."""
    before = cpu_s(server_pid)
    for i in range(gets):
        fs.cat_file(key, start=(i % 3) << 20, end=((i % 3) + 1) << 20)
    return round((cpu_s(server_pid) - before) / gets * 1000, 1)


def measure(uri: str, folder: str, size: int, storage_options: dict, length_s: float, sampling: Sampling,
            server_pid: Optional[int] = None) -> dict:
    """plan_s, first/last segment decode, bytes_read_ratio, parallel_speedup and stage_speedup for the video at `uri`."""
    import ray

    segments = {"mode": "fixed", "length_s": length_s, "min_s": 0.0, "threshold": 27.0, "detect_fps": 8.0}
    bounds, plan_s = timed(lambda: plan_video(uri, segments, storage_options))
    read = []
    for start, end in bounds:  # every segment once, in this process: the bytes it reads
        (_, meta), seconds = timed(lambda: read_and_decode(uri, sampling, storage_options, start, end))
        read.append((meta["bytes_read"], seconds))
    def cold(bound, i: int) -> float:  # as a version of its own: nothing held from the call before, the index read again
        return timed(lambda: read_and_decode(uri, sampling, storage_options, *bound, version=f"cold-{i}"))[1]

    first = statistics.median(cold(bounds[0], i) for i in range(3))
    last = statistics.median(cold(bounds[-1], i) for i in range(3))
    walls, warm, server = {}, {}, {}
    for actors in (1, 2):
        cfg = load_config(DEFAULT_CONFIG, [
            f"input.uri={folder}", "input.generate_shapes=null", "input.extra_uris=[]", "questions_file=null",
            f"questions={json.dumps(['Is there a red circle?'])}", f"storage_options={json.dumps(storage_options)}",
            f"sampling.frames={sampling.frames}", f"sampling.size={sampling.size}",
            f"sampling.segments={{mode: fixed, length_s: {length_s}}}",
            f"ray.decode_actors={actors}", "ray.decode_batch_size=1", "ray.decode_num_cpus=1", "ray.decode_threads=1",
        ])
        init_ray(cfg)
        listed, _ = list_inputs(cfg, folder, questions_of(cfg, folder))
        planned = plan_dataset(cfg, listed)  # planned (materialised) before the clock starts
        rows, walls[actors] = timed(lambda: decode_dataset(cfg, listed, planned).select_columns(["error", "bytes_read"]).take_all())
        failed = [r["error"] for r in rows if r["error"]]
        if failed or len(rows) != len(bounds):
            raise RuntimeError(f"{actors} decode actors: {len(rows)} rows for {len(bounds)} segments, errors {failed[:3]}")
        server_before = cpu_s(server_pid)
        warm[actors] = warm_decode_s(cfg, pa.concat_tables(ray.get(list(planned.to_arrow_refs()))), actors)
        server[actors] = cpu_s(server_pid) - server_before
        print(f"  {actors} decode actor(s): {len(rows)} segments in {walls[actors]:.2f} s through the stage, "
              f"{warm[actors]:.2f} s on started actors", flush=True)
    ratio = sum(b for b, _ in read) / size
    print(f"  plan {plan_s:.3f} s, {len(bounds)} segments; decode per segment {min(s for _, s in read):.3f}"
          f"-{max(s for _, s in read):.3f} s; bytes read / file {ratio:.3f}", flush=True)
    return {"segments": len(bounds), "plan_s": round(plan_s, 3), "first_segment_decode_s": round(first, 3),
            "last_segment_decode_s": round(last, 3), "last_over_first": round(last / first, 2),
            "bytes_read_ratio": round(ratio, 3), "decode_1_actor_s": round(warm[1], 2),
            "decode_2_actors_s": round(warm[2], 2), "parallel_speedup": round(warm[1] / warm[2], 2),
            "stage_1_actor_s": round(walls[1], 2), "stage_2_actors_s": round(walls[2], 2),
            "stage_speedup": round(walls[1] / walls[2], 2),
            **({"server_busy": [round(server[a] / warm[a], 2) for a in (1, 2)]} if server_pid else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--mbps", type=float, default=1.2)
    parser.add_argument("--length-s", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--sources", default="local,s3")
    args = parser.parse_args()
    import boto3
    import ray
    import s3fs

    from flashvlm.decode import probe

    path, made_s = timed(lambda: long_video(args.minutes, args.mbps))
    size = path.stat().st_size
    with open(path, "rb") as f:
        video_s = probe(f)["duration_s"]
    print(f"{path}: {video_s:.0f} s, {size / 1e6:.1f} MB, {8 * size / video_s / 1e6:.2f} Mbit/s"
          f" ({'generated in %.0f s' % made_s if made_s > 1 else 'cached'})", flush=True)
    sampling = Sampling(frames=args.frames, size=336, threads=1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="fvb", dir="/tmp"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "local" in args.sources:
            folder = Path(tmp) / "local"
            folder.mkdir()
            os.symlink(path, folder / path.name)
            print("local folder:", flush=True)
            results["local"] = measure(str(folder / path.name), str(folder), size, {}, args.length_s, sampling)
        if "s3" in args.sources:
            server, stop, options = moto_s3()
            try:
                fs = s3fs.S3FileSystem(**options)
                boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id=S3_KEY,
                             aws_secret_access_key=S3_SECRET, region_name=S3_REGION).create_bucket(Bucket=BUCKET)
                fs.put_file(str(path), f"{BUCKET}/videos/{path.name}")
                fs.pipe_file(f"{BUCKET}/small/4mib.bin", path.read_bytes()[: 4 << 20])
                server_ms = {name: ranged_get_ms(fs, f"{BUCKET}/{key}", server.pid)
                             for name, key in (("video", f"videos/{path.name}"), ("4mib_object", "small/4mib.bin"))}
                print(f"S3 (moto on 127.0.0.1): server CPU per 1 MiB range GET {server_ms}", flush=True)
                results["s3"] = measure(f"s3://{BUCKET}/videos/{path.name}", f"s3://{BUCKET}/videos/", size, options,
                                        args.length_s, sampling, server_pid=server.pid)
                results["s3"]["server_ms_per_mib_get"] = server_ms
            finally:
                stop.set()
                server.join(30)
    ray.shutdown()
    top = results.get("s3") or results["local"]
    print(json.dumps({"video_s": round(video_s, 1), "bitrate_mbps": round(8 * size / video_s / 1e6, 3),
                      "file_mb": round(size / 1e6, 1), "length_s": args.length_s, "frames_per_segment": args.frames,
                      "source": "s3" if "s3" in results else "local", **top, **results,
                      "load_average": [round(x, 1) for x in os.getloadavg()], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
