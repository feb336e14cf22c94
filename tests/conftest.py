"""Shared test fixtures."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The tiny test checkpoints (tests/tiny_models.py) are built once a session in this folder; their paths are
# known at import so that module-level configs can name them. Ray workers inherit it from the environment.
os.environ.setdefault("FLASHVLM_CACHE", tempfile.mkdtemp(prefix="flashvlm-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Sample clips live beside the checkout (../shared/videos), never inside it.
SHARED_VIDEOS = Path(os.environ.get("FLASHVLM_SHARED_VIDEOS", Path(__file__).resolve().parents[2] / "shared" / "videos"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"sample clips not found at {SHARED_VIDEOS} (set FLASHVLM_SHARED_VIDEOS)")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def flashvlm_cache():
    """FLASHVLM_CACHE with both tiny checkpoints built in it (LLAVA_PATH and QWEN_PATH), offline."""
    from tiny_models import TINY_LLAVA, TINY_QWEN2_5_VL, tiny_model_path

    tiny_model_path(TINY_LLAVA), tiny_model_path(TINY_QWEN2_5_VL)
    yield Path(os.environ["FLASHVLM_CACHE"])
    shutil.rmtree(os.environ["FLASHVLM_CACHE"], ignore_errors=True)


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
