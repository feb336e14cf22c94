"""Decoding: real clips through decord, the PyAV fallback, error rows, rotation, timeouts, S3 reads."""

import os

import numpy as np
import pyarrow as pa
import pytest

from flashvlm.decode import Sampling, _decode_decord, _decode_pyav, resize_frames, sample_indices
from pipeline.decode import DecodeVideos, StageError, read_and_decode
from pipeline.listing import list_videos
from pipeline.schema import DECODED, LISTED, frames_of
from shapes.clips import make_clip
from pipeline_fixtures import make_live_stream

DECORD_OK = [
    "big_buck_bunny_0_30.webm", "chaplin.mp4", "example2.mp4", "fire2.mp4", "flipping_a_pancake.mkv",
    "smpte-2997.mp4", "transparent.webm", "unordered.mov", "video_90.mov", "video_with_failing_audio.mp4",
]
NEEDS_PYAV = ["no_duration.webm", "bitmap.mp4"]
BROKEN = ["corrupted.mp4", "empty.webm"]


def listed_rows(paths) -> pa.Table:
    rows = [{"video_uri": f"file://{p}", "questions": ["q"]} for p in paths]
    return pa.Table.from_pylist(rows, schema=LISTED)


@pytest.fixture(scope="module")
def decoded_shared(shared_videos):
    """Every shared clip through the stage once (in-process decoding), keyed by file name."""
    table = list_videos(str(shared_videos), [".mp4", ".webm", ".mkv", ".mov"])
    out = DecodeVideos(frames=4, size=112, timeout_s=None)(table)
    assert out.schema == DECODED
    return {r["video_uri"].rsplit("/", 1)[-1]: r for r in out.to_pylist()}


def test_every_shared_clip_is_accounted_for(decoded_shared):
    assert set(decoded_shared) == set(DECORD_OK + NEEDS_PYAV + BROKEN)


@pytest.mark.parametrize("name", DECORD_OK)
def test_good_clips_decode_with_decord(decoded_shared, name):
    row = decoded_shared[name]
    assert row["error"] is None, row["error"]
    assert row["decode_backend"] == "decord"
    frames = frames_of(row)
    assert frames.shape == (4, 112, 112, 3) and frames.dtype == np.uint8
    assert row["num_frames"] >= 1 and row["fps"] > 0 and row["duration_s"] > 0
    assert row["width"] > 0 and row["height"] > 0 and row["decode_ms"] > 0
    assert len(row["frame_indices"]) == 4 and max(row["frame_indices"]) < row["num_frames"]


@pytest.mark.parametrize("name", NEEDS_PYAV)
def test_decord_failures_decode_through_pyav(decoded_shared, name):
    row = decoded_shared[name]
    assert row["error"] is None, row["error"]
    assert row["decode_backend"] == "pyav" and frames_of(row).shape == (4, 112, 112, 3)


def test_no_duration_webm_metadata_from_pyav(decoded_shared):
    row = decoded_shared["no_duration.webm"]
    assert row["num_frames"] == 74 and (row["width"], row["height"]) == (1280, 720)
    assert row["duration_s"] == pytest.approx(74 / row["fps"], rel=0.1)


@pytest.mark.parametrize("name", BROKEN)
def test_broken_clips_become_error_rows(decoded_shared, name):
    row = decoded_shared[name]
    assert row["error_stage"] == "decode" and row["error_type"] == "DecodeError"
    assert row["frames"] is None and row["frames_shape"] is None
    assert "decord" in row["error"] or "empty" in row["error"]


def test_corrupted_error_names_both_decoders(decoded_shared):
    error = decoded_shared["corrupted.mp4"]["error"]
    assert "decord:" in error and "pyav:" in error and "[" not in error.split("decord:")[1][:3]


def test_rotation_metadata_gives_upright_frames(decoded_shared):
    row = decoded_shared["video_90.mov"]  # stored 568x320 with a 90 degree display matrix
    assert (row["width"], row["height"]) == (320, 568)


def test_decord_and_pyav_give_the_same_pixels(shared_videos):
    for name in ("chaplin.mp4", "video_90.mov"):
        data = (shared_videos / name).read_bytes()
        a, meta_a = _decode_decord(data, Sampling(frames=6))
        b, meta_b = _decode_pyav(data, Sampling(frames=6))
        assert list(meta_a["frame_indices"]) == list(meta_b["frame_indices"])
        assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.0


def test_one_decoder_thread_gives_the_same_frames(shared_videos):
    # ray.decode_threads=1 (the default) keeps each decode actor to its one reserved CPU; it must not change
    # a single pixel against the decoders' own threading.
    data = (shared_videos / "chaplin.mp4").read_bytes()
    for decode in (_decode_decord, _decode_pyav):
        a, _ = decode(data, Sampling(frames=4, threads=1))
        b, _ = decode(data, Sampling(frames=4, threads=0))
        assert np.array_equal(a, b), decode.__name__


def test_a_stream_without_duration_decodes_through_pyav(tmp_path):
    # What no_duration.webm checks above, on a generated file, so it runs without ../shared/videos too.
    path = make_live_stream(tmp_path / "live.mkv", frames=24)
    with pytest.raises(Exception, match="broken metadata"):
        _decode_decord(path.read_bytes(), Sampling(frames=4))
    row = DecodeVideos(frames=4, size=32, timeout_s=None)(listed_rows([path])).to_pylist()[0]
    assert row["error"] is None and row["decode_backend"] == "pyav"
    assert row["num_frames"] == 24 and frames_of(row).shape == (4, 32, 32, 3)


# ---- pure pieces ---------------------------------------------------------------------------------------


def test_sample_indices_uniform_short_and_fps():
    assert sample_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert sample_indices(3, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # short clips repeat frames
    assert len(sample_indices(300, 16, fps=1.0, duration_s=10.0)) == 10  # fps caps the count
    assert len(sample_indices(300, 4, fps=1.0, duration_s=10.0)) == 4  # never more than frames
    with pytest.raises(Exception, match="no frames"):
        sample_indices(0, 4)


@pytest.mark.parametrize("bad", [dict(frames=0), dict(size=-1), dict(fps=0), dict(resize="stretch"), dict(threads=-1)])
def test_bad_sampling_is_a_value_error_that_names_the_field(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"^{name} must"):
        Sampling(**bad)


def test_resize_crop_keeps_the_centre_and_squash_keeps_everything():
    frame = np.zeros((1, 100, 200, 3), np.uint8)
    frame[:, :, :50] = 255  # a white left quarter: cropped away by a centre crop
    assert resize_frames(frame, 50, "crop")[:, :, 2:].max() == 0  # (bicubic bleeds one pixel at the edge)
    squashed = resize_frames(frame, 50, "squash")
    assert squashed.shape == (1, 50, 50, 3) and squashed[0, :, :10].min() == 255


# ---- failures that are not the decoder's ---------------------------------------------------------------


def test_missing_file_is_a_read_error(tmp_path):
    with pytest.raises(StageError) as info:
        read_and_decode(f"file://{tmp_path}/gone.mp4", Sampling())
    assert info.value.stage == "read" and info.value.error_type == "FileNotFoundError"


def test_garbage_files_are_decode_errors_and_the_batch_goes_on(tmp_path):
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    (tmp_path / "random.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    make_clip(tmp_path / "ok.mp4", frames=6)
    table = listed_rows([tmp_path / "text.mp4", tmp_path / "random.mkv", tmp_path / "gone.mp4", tmp_path / "ok.mp4"])
    rows = DecodeVideos(frames=3, size=64, timeout_s=None)(table).to_pylist()
    assert [r["error_stage"] for r in rows] == ["decode", "decode", "read", None]
    assert frames_of(rows[3]).shape == (3, 64, 64, 3)


def test_rows_with_an_earlier_error_pass_through(tmp_path):
    table = pa.Table.from_pylist(
        [{"video_uri": "s3://b/x.mp4", "error_stage": "list", "error_type": "FileNotFoundError", "error": "gone"}], schema=LISTED
    )
    row = DecodeVideos(timeout_s=None)(table).to_pylist()[0]
    assert (row["error_stage"], row["error"], row["frames"], row["decode_ms"]) == ("list", "gone", None, None)


def test_a_hanging_read_times_out_and_the_next_video_still_decodes(tmp_path):
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)  # opening a FIFO with no writer blocks forever: a real hang, not a mock
    make_clip(tmp_path / "ok.mp4", frames=6)
    stage = DecodeVideos(frames=2, size=32, timeout_s=3)
    try:
        rows = stage(listed_rows([fifo, tmp_path / "ok.mp4"])).to_pylist()
    finally:
        stage.helper.stop()
    assert (rows[0]["error_stage"], rows[0]["error_type"]) == ("decode", "TimeoutError")
    assert "no result within 3 s" in rows[0]["error"] and "killed" in rows[0]["error"]
    assert rows[0]["decode_ms"] >= 3000 - 1  # the whole timeout was waited out (1 ms: clock rounding)
    assert rows[1]["error"] is None and frames_of(rows[1]).shape == (2, 32, 32, 3)


def test_helper_process_decodes_like_in_process(clip_dir):
    table = list_videos(str(clip_dir), [".mp4", ".webm", ".mov"])
    stage = DecodeVideos(frames=2, size=48, timeout_s=60)
    try:
        helper = stage(table).to_pylist()
    finally:
        stage.helper.stop()
    local = DecodeVideos(frames=2, size=48, timeout_s=None)(table).to_pylist()
    assert [r["error_type"] for r in helper] == [r["error_type"] for r in local]
    assert [r["frames"] for r in helper] == [r["frames"] for r in local]
    assert any(r["error"] is None for r in helper) and any(r["error"] is not None for r in helper)


def test_reads_from_s3(s3_options, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.put_file(str(make_clip(tmp_path / "c.mp4", frames=8)), f"{s3_bucket}/v/c.mp4")
    table = list_videos(f"s3://{s3_bucket}/v/", [".mp4"], s3_options)
    row = DecodeVideos(frames=2, size=32, storage_options=s3_options, timeout_s=None)(table).to_pylist()[0]
    assert row["error"] is None and row["num_frames"] == 8 and row["decode_backend"] == "decord"


def test_sampling_fps_caps_the_frames_by_duration(shared_videos):
    table = listed_rows([shared_videos / "chaplin.mp4", shared_videos / "no_duration.webm"])  # 9.6 s and 4.9 s
    rows = DecodeVideos(frames=8, fps=0.5, size=32, timeout_s=None)(table).to_pylist()
    assert [r["frames_shape"][0] for r in rows] == [4, 2]
    assert [r["decode_backend"] for r in rows] == ["decord", "pyav"]


# ---- issue 8: inputs not covered above, generated here -------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_one_and_three_frame_videos_decode(tmp_path, n):
    path = make_clip(tmp_path / f"f{n}.mp4", frames=n)
    row = DecodeVideos(frames=4, size=32, timeout_s=None)(listed_rows([path])).to_pylist()[0]
    assert row["error"] is None, row["error"]
    assert row["num_frames"] == n and frames_of(row).shape == (4, 32, 32, 3)  # short clips repeat frames
    assert max(row["frame_indices"]) == n - 1


def test_synthetic_zero_byte_and_truncated_files_are_decode_errors(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    data = make_clip(tmp_path / "whole.mp4", frames=12).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 4])
    rows = DecodeVideos(frames=2, size=32, timeout_s=None)(listed_rows([tmp_path / "zero.mp4", tmp_path / "cut.mp4"])).to_pylist()
    assert [(r["error_stage"], r["error_type"]) for r in rows] == [("decode", "DecodeError")] * 2
    assert "empty file" in rows[0]["error"] and "pyav:" in rows[1]["error"]


def test_an_object_deleted_between_listing_and_reading_is_a_read_error(s3_options, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for name in ("keep.mp4", "gone.mp4"):
        fs.put_file(str(make_clip(tmp_path / name, frames=4)), f"{s3_bucket}/d/{name}")
    table = list_videos(f"s3://{s3_bucket}/d/", [".mp4"], s3_options)
    fs.rm(f"{s3_bucket}/d/gone.mp4")
    rows = {r["video_uri"].rsplit("/", 1)[-1]: r for r in
            DecodeVideos(frames=2, size=32, storage_options=s3_options, timeout_s=None)(table).to_pylist()}
    assert rows["keep.mp4"]["error"] is None
    assert (rows["gone.mp4"]["error_stage"], rows["gone.mp4"]["error_type"]) == ("read", "FileNotFoundError")
    assert rows["gone.mp4"]["error"]
