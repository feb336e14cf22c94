"""Long videos as time segments (sampling.segments): planning, decoding a time range by seeking, and the
pipeline over a generated long video with time-ranged labels, in fixed and scenes mode."""

import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.compute as pc
import pytest

from flashvlm.decode import DecodeError, Sampling, decode_range, probe
from pipeline.config import ConfigError, validate_config
from pipeline.decode import read_and_decode
from pipeline.plan import detect_cuts, fixed_windows, plan_video, scene_windows
from pipeline.questions import segment_questions
from pipeline.run import run
from pipeline.storage import RangeReader
from pipeline.tables import read_table
from pipeline_fixtures import tiny_job_config
from shapes.clips import encode_long_mp4, long_video_specs, render, write_long_videos

# Two decode actors on the tests' 2-CPU Ray, so one video's segments are decoded by both
RAY = {"decode_batch_size": 1, "model_batch_size": 2, "decode_timeout_s": 60, "decode_actors": 2, "decode_num_cpus": 0.25,
       "model_num_cpus": 0.25}
# The demo's pools on the same 2 CPUs: one decode and one model actor of a CPU each leave no CPU for
# planning tasks in the same execution (planning runs first, in its own)
DEMO_RAY = {"decode_batch_size": 2, "model_batch_size": 2, "decode_timeout_s": 60, "decode_actors": 1, "model_actors": 1}
SCENES, SCENE_S, FRAMES, FPS = 3, 2.0, 2, 4  # 6 s videos: 24 frames at 336 px


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    write_long_videos(folder, "test", 1, scenes=SCENES, scene_s=SCENE_S, frames=FRAMES, fps=FPS)
    return folder


# ---- planning ----------------------------------------------------------------------------------------


def test_fixed_windows_and_min_s():
    assert fixed_windows(0, 100, 30) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert fixed_windows(0, 100, 30, min_s=15) == [(0, 30), (30, 60), (60, 100)]  # a 10 s tail joins
    assert fixed_windows(0, 20, 30) == [(0, 20)]


def test_scene_windows_join_short_shots_and_cut_long_ones():
    assert scene_windows([4, 8, 8.3, 12], 20, min_s=1.0) == [(0, 4), (4, 8.3), (8.3, 12), (12, 20)]
    assert scene_windows([0.5, 4], 10, min_s=1.0) == [(0, 4), (4, 10)]  # a short first shot joins the next
    assert scene_windows([4], 30, length_s=10, min_s=2) == [(0, 4), (4, 14), (14, 24), (24, 30)]


def test_segment_questions_keep_overlapping_ranges_and_the_largest_overlap():
    qs, starts, ends = segment_questions(["a?", "b?", "b?", "c?"], [None, 0.0, 4.0, 10.0], [None, 4.0, 8.0, 12.0], 3.0, 8.0)
    assert qs == ["a?", "b?"] and starts == [None, 4.0] and ends == [None, 8.0]


def test_segments_config_is_validated_by_key():
    base = tiny_job_config("/in", "/out", {})
    data = json.loads(base.model_dump_json())
    for bad, key in (({"mode": "fixed"}, "sampling.segments.length_s"), ({"mode": "shots"}, "sampling.segments.mode"),
                     ({"mode": "fixed", "length_s": -1}, "sampling.segments.length_s"),
                     ({"mode": "fixed", "length_s": 5, "min_s": 5}, "sampling.segments.min_s")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config({**data, "sampling": {**data["sampling"], "segments": bad}})
    fixed = validate_config({**data, "sampling": {**data["sampling"], "segments": {"mode": "fixed", "length_s": 5}}})
    assert fixed.settings_id() != base.settings_id()  # segments change answers, so the id


def test_plan_finds_the_generated_cuts(long_dir):
    path = long_dir / "long_00000.mp4"
    with open(path, "rb") as f:
        cuts = detect_cuts(f, rate=8.0, threshold=10.0)
    assert np.allclose(cuts, [SCENE_S * k for k in range(1, SCENES)], atol=0.25)
    segments = {"mode": "scenes", "length_s": None, "min_s": 0.0, "threshold": 10.0, "detect_fps": 8.0}
    assert plan_video(str(path), segments) == [(SCENE_S * k, SCENE_S * (k + 1)) for k in range(SCENES)]


# ---- decoding a time range -----------------------------------------------------------------------------


def test_decode_range_seeks_and_reads_only_part_of_the_file(tmp_path):
    specs = long_video_specs("test", 7, scenes=24, frames=FRAMES)
    path = encode_long_mp4(tmp_path / "l.mp4", specs, scene_s=SCENE_S, fps=FPS)
    size = os.path.getsize(path)
    reader = RangeReader(fsspec.filesystem("file"), str(path), size, fetch=32 << 10)
    frames, meta = decode_range(reader, 20.0, 22.0, Sampling(frames=FRAMES, size=336))
    assert meta["duration_s"] == pytest.approx(24 * SCENE_S) and list(meta["times"]) == [20.5, 21.5]
    # one scene of 24, PyAV's first 32 KiB buffer (the MP4 index is at the front) and the keyframe's GOP
    assert reader.bytes_read < size / 2
    # the frames shown at the centres of the segment's halves are the scene's own frames
    assert np.abs(frames.astype(int) - render(specs[10]).astype(int)).mean() < 4
    whole, _ = read_and_decode(str(path), Sampling(frames=FRAMES), None, 20.0, 22.0)
    assert np.array_equal(whole, frames)


def test_range_reader_reads_like_the_file_and_fetches_only_what_it_does_not_hold(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path / "blob").write_bytes(data)
    reader = RangeReader(fsspec.filesystem("file"), str(tmp_path / "blob"), len(data), fetch=4096, keep=16384)
    rng = np.random.default_rng(1)
    for _ in range(200):
        offset, n = int(rng.integers(0, len(data) + 10)), int(rng.integers(0, 9000))
        reader.seek(offset)
        assert reader.read(n) == data[offset : offset + n] and reader.tell() == min(offset + n, max(offset, len(data)))
        assert sum(len(d) for _, d in reader.held) <= 16384 + 9000 + 4096  # oldest dropped past keep
    reader.seek(-10, os.SEEK_END)
    assert reader.read() == data[-10:] and reader.read(5) == b""
    reader = RangeReader(fsspec.filesystem("file"), str(tmp_path / "blob"), len(data), fetch=4096)
    reader.seek(50_000)
    assert reader.read(100) == data[50_000:50_100] and reader.bytes_read == 4096  # a miss: one fetch
    reader.seek(50_010)
    assert reader.read(1000) == data[50_010:51_010] and reader.bytes_read == 4096  # held: no request


def test_segments_from_s3_are_range_reads_and_the_next_one_does_not_fetch_the_index_again(
    tmp_path, s3_options, s3_bucket, monkeypatch
):
    import s3fs

    import pipeline.decode

    specs = long_video_specs("test", 7, scenes=24, frames=FRAMES)
    path = encode_long_mp4(tmp_path / "l.mp4", specs, scene_s=SCENE_S, fps=FPS)
    size = os.path.getsize(path)
    s3fs.S3FileSystem(**s3_options).put_file(str(path), f"{s3_bucket}/l.mp4")
    monkeypatch.setattr(pipeline.decode, "RANGE_BLOCK", 4096)  # the index in small reads, as in a large file
    index = RangeReader(fsspec.filesystem("file"), str(path), size, fetch=4096)
    probe(index)
    uri, sampling = f"s3://{s3_bucket}/l.mp4", Sampling(frames=FRAMES, size=336)

    first, m1 = read_and_decode(uri, sampling, s3_options, 20.0, 22.0, version="1", size=size)
    second, m2 = read_and_decode(uri, sampling, s3_options, 22.0, 24.0, version="1", size=size)
    changed, m3 = read_and_decode(uri, sampling, s3_options, 22.0, 24.0, version="2", size=size)
    assert np.array_equal(first, read_and_decode(str(path), sampling, None, 20.0, 22.0)[0])
    assert np.array_equal(second, changed)
    assert index.bytes_read + 1000 < m1["bytes_read"] < size / 2  # the index and one segment's range
    assert m2["bytes_read"] <= m1["bytes_read"] - index.bytes_read  # the index was held: only the frames
    assert m3["bytes_read"] >= m2["bytes_read"] + index.bytes_read  # another version is another object


def test_a_range_past_a_truncation_is_an_error(tmp_path, long_dir):
    data = (long_dir / "long_00000.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with open(cut, "rb") as f:
        assert probe(f)["duration_s"] == pytest.approx(SCENES * SCENE_S)
        decode_range(f, 0.0, SCENE_S, Sampling(frames=FRAMES, size=64))
        with pytest.raises(DecodeError):  # no frame there, or a packet cut short
            decode_range(f, (SCENES - 1) * SCENE_S, SCENES * SCENE_S, Sampling(frames=FRAMES, size=64))


# ---- the pipeline --------------------------------------------------------------------------------------


def long_config(input_dir: Path, out: Path, segments: dict, ray: dict = RAY):
    return tiny_job_config(
        input_dir, out, ray, questions=[], questions_file=str(input_dir / "long_questions.jsonl"),
        sampling={"frames": FRAMES, "size": 336, "segments": segments},
    )


@pytest.mark.parametrize("segments, ray", [
    ({"mode": "scenes", "threshold": 10.0}, DEMO_RAY),
    ({"mode": "fixed", "length_s": 3.0}, RAY),  # windows straddle the cuts at 2 s and 4 s
])
def test_long_video_segments_are_answered_with_their_labels(ray_local, long_dir, tmp_path, segments, ray):
    import ray as ray_module

    assert ray_module.cluster_resources()["CPU"] == 2
    cfg = long_config(long_dir, tmp_path / "out", segments, ray)
    record = run(cfg)
    assert record.status == "succeeded" and record.videos_failed == 0
    answers = read_table(str(tmp_path / "out"), "answers")
    rows = answers.to_pylist()
    labels = [json.loads(line) for line in (long_dir / "long_questions.jsonl").read_text().splitlines()]
    bounds = sorted({(r["segment_index"], r["start_s"], r["end_s"]) for r in rows})
    if segments["mode"] == "scenes":
        assert bounds == [(k, SCENE_S * k, SCENE_S * (k + 1)) for k in range(SCENES)]
        for r in rows:  # each scene is asked its own questions, labelled by its own rows
            mine = {(q["question"], q["answer"]) for q in labels if q["start_s"] == r["start_s"]}
            assert (r["question"], r["expected"]) in mine
        assert len(rows) == len(labels)
    else:
        assert bounds == [(0, 0.0, 3.0), (1, 3.0, 6.0)]
        assert all(r["expected"] is not None for r in rows)
    assert all(r["frames"] == FRAMES for r in rows)
    assert answers.schema.field("segment_index").type.bit_width == 32

    if segments["mode"] == "scenes":  # (the planner skips the same way in both modes: one rerun is enough)
        again = run(cfg.model_copy(update={"incremental": True}))  # every (segment, question) is done
        assert again.answers == 0 and again.videos_failed == 0


def test_the_evaluation_asks_each_segment_the_items_its_range_overlaps(ray_local, long_dir, tmp_path):
    from pipeline.eval_config import EvalConfig
    from pipeline.evaluate import evaluate

    windows = [(0.0, 3.0), (3.0, 6.0)]  # fixed 3 s windows: the middle scene (2-4 s) is in both
    job = long_config(long_dir, tmp_path / "out", {"mode": "fixed", "length_s": 3.0})
    cfg = EvalConfig.model_validate({**job.model_dump(), "evaluation": {"budgets": [None, 16], "settings": [{"method": "flashvlm"}]}})
    summary = evaluate(cfg)["summary"]
    rows = read_table(str(tmp_path / "out"), "evaluations").to_pylist()
    labels = [json.loads(line) for line in (long_dir / "long_questions.jsonl").read_text().splitlines()]
    expected = {(i, k) for i, label in enumerate(labels) for k, (a, b) in enumerate(windows)
                if label["start_s"] < b and label["end_s"] > a}
    assert len(expected) > len(labels)  # the middle scene's items are asked twice
    assert all(r["error"] is None for r in rows)
    for method in ("full", "flashvlm"):
        assert sorted((r["item"], r["segment_index"]) for r in rows if r["method"] == method) == sorted(expected)
    for r in rows:
        assert (r["start_s"], r["end_s"]) == windows[r["segment_index"]]
        assert r["expected"] == labels[r["item"]]["answer"] and r["correct"] is not None
    assert summary["items"] == len(expected)


def test_a_file_broken_in_the_middle_fails_only_its_segments(ray_local, long_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = bytearray((long_dir / "long_00000.mp4").read_bytes())
    # overwrite a stretch inside the second scene (the index, at the front, stays whole)
    with open(long_dir / "long_00000.mp4", "rb") as f:
        import av

        with av.open(f) as container:
            offsets = [p.pos for p in container.demux(container.streams.video[0]) if p.pts is not None and p.pos and p.pos > 0
                       and SCENE_S * 1.25 <= float(p.pts * p.time_base) < SCENE_S * 1.75]
    lo, hi = min(offsets), max(offsets) + 64
    data[lo:hi] = bytes(np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8))
    (folder / "broken.mp4").write_bytes(bytes(data))
    cfg = tiny_job_config(folder, tmp_path / "out", RAY, questions=["Is there a red star?"],
                          sampling={"frames": FRAMES, "size": 336, "segments": {"mode": "fixed", "length_s": SCENE_S}})
    record = run(cfg)
    assert record.status == "succeeded"
    errors = read_table(str(tmp_path / "out"), "errors").to_pylist()
    answers = read_table(str(tmp_path / "out"), "answers")
    assert [(e["segment_index"], e["stage"]) for e in errors] == [(1, "decode")]
    assert sorted(pc.unique(answers.column("segment_index")).to_pylist()) == [0, 2]


def test_the_demo_answers_a_generated_long_video_per_scene_in_a_second_run(tmp_path):
    from pipeline.config import load_config
    from pipeline.run import DEFAULT_CONFIG, long_demo, long_demo_line

    demo = load_config(DEFAULT_CONFIG, [f"input.generate_long.uri={tmp_path}/long", "input.generate_long.scenes=2",
                                        "run_id=r1"])
    long = long_demo(demo)
    assert sorted(p.name for p in (tmp_path / "long").iterdir()) == ["long_00000.mp4", "long_questions.jsonl"]
    assert long.input.uri == f"{tmp_path}/long" and long.questions_file == f"{tmp_path}/long/long_questions.jsonl"
    assert long.sampling.segments.mode == "scenes" and long.sampling.segments.threshold == 10.0
    assert long.input.extra_uris == [] and long.input.generate_shapes is None and long.run_id == "r1-long"
    assert long.settings_id() != demo.settings_id() and long.sampling.frames == demo.sampling.frames
    assert long_demo(long) is None
    own_videos = load_config(DEFAULT_CONFIG, [f"input.generate_long.uri={tmp_path}/long", "input.generate_shapes=null"])
    assert long_demo(own_videos) is None  # not a demo: no second run
    from types import SimpleNamespace  # the two runs' records: only these fields are read

    line = long_demo_line(long, SimpleNamespace(answers_correct=3, answers_labelled=4),
                          SimpleNamespace(answers_correct=1, answers_labelled=2, videos_ok=2))
    assert line == "accuracy: clips 3 of 4 (75.0%); long videos in scenes mode, per segment (2 segments): 1 of 2 (50.0%)"
