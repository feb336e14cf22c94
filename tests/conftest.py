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


# ---- pipeline fixtures (moto S3 server, local Ray, clips): defined in tests/pipeline_fixtures.py ----
from pipeline_fixtures import clip_dir, moto_server, ray_local, s3_bucket, s3_env, s3_options  # noqa: E402, F401
