"""Fixtures for the pipeline tests: a real S3-compatible server (moto) on 127.0.0.1, a local Ray, clips.

Imported by tests/conftest.py so that their scopes are shared by every test module.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from tiny_models import LLAVA_PATH

# Real clips used by the pipeline tests: a mix of healthy ones, one that needs the PyAV fallback
# (no duration in its header) and broken ones that must become error rows.
GOOD_CLIPS = ["chaplin.mp4", "example2.mp4", "video_90.mov"]
FALLBACK_CLIPS = ["no_duration.webm"]
BROKEN_CLIPS = ["corrupted.mp4", "empty.webm"]

S3_KEY, S3_SECRET, S3_REGION = "testing-key", "testing-secret", "us-east-1"


# The tiny-model job the fault and incremental tests run: two questions, two frames, budget 8.
QUESTIONS = ["What is happening?", "What colour is it?"]


def tiny_job_config(input_uri, output_uri, ray: dict, **extra):
    """A validated JobConfig for the offline tiny LLaVA on CPU; `extra` replaces top-level sections."""
    from pipeline.config import validate_config

    data = {
        "input": {"uri": str(input_uri)},
        "questions": QUESTIONS,
        "model": {"name": LLAVA_PATH, "dtype": "float32", "device": "cpu", "max_new_tokens": 4},
        "sampling": {"frames": 2, "size": 336},
        "selection": {"budget": 8},
        "output": {"uri": str(output_uri)},
        "ray": ray,
    }
    data.update(extra)
    return validate_config(data)


def crash_commit_after(monkeypatch, moves: int) -> None:
    """Make pipeline.commit's moves raise RuntimeError("simulated crash") after `moves` files, as a process
    killed in mid-commit would stop (undo with monkeypatch.undo())."""
    import pipeline.commit

    done, real_move = [], pipeline.commit._move

    def move_then_crash(fs, src, dst):
        if len(done) == moves:
            raise RuntimeError("simulated crash")
        real_move(fs, src, dst)
        done.append(dst)

    monkeypatch.setattr(pipeline.commit, "_move", move_then_crash)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture(scope="session")
def moto_server():
    """A moto S3 server in its own process on a free loopback port; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_options(moto_server) -> dict:
    """storage_options that point s3fs at the moto server (what a config's storage_options would hold)."""
    return {"endpoint_url": moto_server, "key": S3_KEY, "secret": S3_SECRET, "client_kwargs": {"region_name": S3_REGION}}


@pytest.fixture(scope="session")
def s3_env(moto_server) -> dict:
    """The standard AWS variables for the moto server (what s3fs reads without storage_options)."""
    return {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


@pytest.fixture
def s3_bucket(s3_options) -> str:
    """A fresh, empty bucket; yields its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    client = boto3.client(
        "s3", endpoint_url=s3_options["endpoint_url"], aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET, region_name=S3_REGION,
    )
    client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint (s3fs.mkdir would send one)
    return name


def make_live_stream(path: Path, frames: int = 24) -> Path:
    """A Matroska file (the container of WebM) written as a live stream writes it: no duration and no frame
    count in its header, which decord refuses ("broken metadata") and PyAV decodes, like
    ../shared/videos/no_duration.webm. H.264 inside, not VP8: PyAV cannot open its VP8 encoder once decord
    is loaded in the same process."""
    import av
    import numpy as np

    with av.open(str(path), "w", format="matroska", options={"live": "1"}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            image = np.full((120, 160, 3), (i * 10) % 256, dtype=np.uint8)
            image[40:80, (i * 5) % 120 : (i * 5) % 120 + 40] = (230, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A folder of clips for pipeline tests: the real ones named above when ../shared/videos exists,
    else generated ones: healthy clips, a live stream without duration that needs the PyAV fallback, a
    zero-byte and a truncated file (broken)."""
    from conftest import SHARED_VIDEOS

    folder = tmp_path_factory.mktemp("clips")
    if SHARED_VIDEOS.is_dir():
        for name in GOOD_CLIPS + FALLBACK_CLIPS + BROKEN_CLIPS:
            os.symlink(SHARED_VIDEOS / name, folder / name)
        return folder
    from shapes.clips import make_clip

    for i, name in enumerate(GOOD_CLIPS):
        make_clip(folder / (Path(name).stem + ".mp4"), seed=i)
    for name in FALLBACK_CLIPS:
        make_live_stream(folder / name)
    (folder / "empty.webm").write_bytes(b"")
    data = (folder / "chaplin.mp4").read_bytes()
    (folder / "corrupted.mp4").write_bytes(data[: len(data) // 3])
    return folder


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts down the local Ray that ray_local started, once, at the end of the session."""
    started: dict = {}
    yield started
    import ray

    if started and ray.is_initialized() and ray.get_runtime_context().gcs_address == started["address"]:
        ray.shutdown()
    for temp_dir in started.get("temp_dirs", []):
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local(_ray_session, flashvlm_cache):
    """A private local Ray (2 CPUs, own temp dir), started once and shared by the modules that use it (each
    start costs seconds); started again when another module (the cluster tests) replaced it. Never connects
    to a cluster it did not start. Its workers inherit FLASHVLM_CACHE, so flashvlm_cache comes first."""
    import ray

    if not (ray.is_initialized() and ray.get_runtime_context().gcs_address == _ray_session.get("address")):
        if ray.is_initialized():
            ray.shutdown()
        temp_dir = tempfile.mkdtemp(prefix="fvr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
        _ray_session["address"] = ray.get_runtime_context().gcs_address
        _ray_session.setdefault("temp_dirs", []).append(temp_dir)
    yield ray
