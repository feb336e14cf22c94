"""Shared test fixtures."""

import os
from pathlib import Path

import pytest

# Sample clips live beside the checkout (../shared/videos), never inside it.
SHARED_VIDEOS = Path(os.environ.get("FLASHVLM_SHARED_VIDEOS", Path(__file__).resolve().parents[2] / "shared" / "videos"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"sample clips not found at {SHARED_VIDEOS} (set FLASHVLM_SHARED_VIDEOS)")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def flashvlm_cache(tmp_path_factory):
    """FLASHVLM_CACHE in a session directory, offline: each tiny model is built there at most once."""
    patch = pytest.MonkeyPatch()
    patch.setenv("FLASHVLM_CACHE", str(tmp_path_factory.mktemp("flashvlm-cache")))
    patch.setenv("HF_HUB_OFFLINE", "1")
    yield Path(os.environ["FLASHVLM_CACHE"])
    patch.undo()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread: the tiny models' ops take microseconds, and on a shared 2-core machine a thread
    pool waits for busy cores far longer than it computes (60x slower measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- pipeline fixtures (moto S3 server, local Ray, clips): defined in tests/pipeline_fixtures.py ----
from pipeline_fixtures import _ray_session, clip_dir, moto_server, ray_local, s3_bucket, s3_env, s3_options  # noqa: E402, F401
