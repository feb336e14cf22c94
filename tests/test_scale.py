"""Planning on Ray workers (pipeline/inventory.py, pipeline/listing.py list_on_workers, pipeline/todo.py):
an S3 Inventory read through the moto S3 server gives the rows listing gives; listing in parallel gives the
rows listing serially gives; the distributed anti-join leaves exactly what the driver's filter leaves."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.listing import ListVideos, list_on_workers, list_videos
from pipeline.schema import ANSWERS, ERRORS

EXTS = [".mp4", ".webm"]
KEYS = ["videos/a.mp4", "videos/deep/b.webm", "videos/deep/er/c d+e.mp4", "videos/readme.md", "other/x.mp4"]


def rows(table_or_rows) -> list[tuple]:
    """(video_uri, video_version, video_size) sorted: what listing and the inventory must agree on."""
    items = table_or_rows.to_pylist() if isinstance(table_or_rows, pa.Table) else table_or_rows
    return sorted((r["video_uri"], r["video_version"], r["video_size"]) for r in items)


def write_inventory(fs, bucket: str, objects: list[dict]) -> dict[str, str]:
    """An S3 Inventory of `objects` (boto3 list_objects_v2 Contents) in the bucket, as S3 writes it: a
    Parquet and a headerless gzipped CSV (URL-encoded keys) data file, each with its manifest.json. The rows
    add a delete marker and an old version, which listing the bucket would not show."""
    extra = [{"Key": "videos/deleted.mp4", "Size": 0, "ETag": '"d"', "latest": True, "deleted": True},
             {"Key": "videos/a.mp4", "Size": 3, "ETag": '"old"', "latest": False, "deleted": False}]
    items = [{"Key": o["Key"], "Size": o["Size"], "ETag": o["ETag"], "latest": True, "deleted": False} for o in objects] + extra
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    table = pa.table({
        "bucket": [bucket] * len(items), "key": [o["Key"] for o in items], "size": pa.array([o["Size"] for o in items], pa.int64()),
        "last_modified_date": pa.array([when] * len(items), pa.timestamp("ms", tz="UTC")), "e_tag": [o["ETag"] for o in items],
        "is_latest": [o["latest"] for o in items], "is_delete_marker": [o["deleted"] for o in items],
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs.pipe(f"{bucket}/inv/{bucket}/daily/data/part-0.parquet", sink.getvalue().to_pybytes())
    csv = "".join(f'"{bucket}","{quote_plus(o["Key"])}","{o["Size"]}","2026-01-01T00:00:00.000Z","{o["ETag"].strip(chr(34))}",'
                  f'"{str(o["latest"]).lower()}","{str(o["deleted"]).lower()}"\n' for o in items)
    fs.pipe(f"{bucket}/inv/{bucket}/daily/csv/part-0.csv.gz", gzip.compress(csv.encode()))
    manifests = {}
    for fmt, name, schema in (("Parquet", "data/part-0.parquet", "message s3.inventory { required binary bucket; ... }"),
                              ("CSV", "csv/part-0.csv.gz", "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker")):
        path = f"{bucket}/inv/{bucket}/daily/2026-01-01T01-00Z-{fmt.lower()}/manifest.json"
        fs.pipe(path, json.dumps({"sourceBucket": bucket, "destinationBucket": f"arn:aws:s3:::{bucket}", "fileFormat": fmt,
                                  "fileSchema": schema, "files": [{"key": f"inv/{bucket}/daily/{name}", "size": 1}]}).encode())
        manifests[fmt] = f"s3://{path}"
    return manifests


def test_inventory_parquet_and_csv_give_the_rows_listing_gives(ray_local, s3_options, s3_bucket):
    import boto3
    import s3fs

    from pipeline.inventory import read_inventory

    fs = s3fs.S3FileSystem(**s3_options)
    for key in KEYS:
        fs.pipe(f"{s3_bucket}/{key}", b"0123456789" * len(key))
    client = boto3.client("s3", endpoint_url=s3_options["endpoint_url"], aws_access_key_id=s3_options["key"],
                          aws_secret_access_key=s3_options["secret"], region_name="us-east-1")
    objects = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    manifests = write_inventory(fs, s3_bucket, objects)

    listed = list_videos(f"s3://{s3_bucket}/videos/", EXTS, s3_options)
    assert len(listed) == 3  # a.mp4, b.webm and the key with a space and a plus
    for fmt, manifest in manifests.items():
        got = read_inventory(manifest, EXTS, prefix="videos/", storage_options=s3_options).take_all()
        assert rows(got) == rows(listed), fmt
    # A folder of inventory Parquet files (input.inventory) reads the same way.
    folder = read_inventory(f"s3://{s3_bucket}/inv/{s3_bucket}/daily/data/", EXTS, prefix="videos/", storage_options=s3_options)
    assert rows(folder.take_all()) == rows(listed)
    # Its rows split over 3 files, read by one task: the same rows, in one block (tasks follow the cluster, not the files).
    table = pq.read_table(fs.open(f"{s3_bucket}/inv/{s3_bucket}/daily/data/part-0.parquet"))
    for i, start in enumerate(range(0, table.num_rows, 3)):
        sink = pa.BufferOutputStream()
        pq.write_table(table.slice(start, 3), sink)
        fs.pipe(f"{s3_bucket}/inv3/data/part-{i}.parquet", sink.getvalue().to_pybytes())
    assert len(fs.ls(f"{s3_bucket}/inv3/data/")) == 3
    one_task = read_inventory(f"s3://{s3_bucket}/inv3/data/", EXTS, prefix="videos/", storage_options=s3_options, tasks=1).materialize()
    assert rows(one_task.take_all()) == rows(listed) and one_task.num_blocks() == 1


@pytest.mark.parametrize("wanted", [1, 64])
def test_listing_on_workers_equals_serial_listing(ray_local, tmp_path, monkeypatch, wanted):
    import pipeline.listing as listing

    monkeypatch.setattr(listing, "PARTS_WANTED", wanted)  # 1: one recursive piece; 64: open every level
    for path in ("top.mp4", "a/1.mp4", "a/b/2.webm", "a/b/c/3.mp4", "a/b/c/d/4.mp4", "e/5.MP4", "e/notes.txt", "f/g/"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        if not path.endswith("/"):
            (tmp_path / path).write_bytes(b"x" * len(path))
    parts = listing.list_parts(str(tmp_path))
    assert (len(parts) == 1) == (wanted == 1)
    serial = ListVideos(EXTS)(pa.table({"input_uri": [str(tmp_path)]}))
    assert len(serial) == 6
    assert rows(list_on_workers(str(tmp_path), EXTS).take_all()) == rows(serial)


def _answers(rows_: list[tuple[str, str, str]], settings_id: str) -> pa.Table:
    m = len(rows_)
    cols = {"video_uri": [r[0] for r in rows_], "video_version": [r[1] for r in rows_], "question": [r[2] for r in rows_],
            "question_index": pa.array([0] * m, pa.int16()), "answer": ["x"] * m, "settings_id": [settings_id] * m,
            "run_id": ["prior"] * m}
    return pa.table({f.name: cols.get(f.name, pa.nulls(m, f.type)) for f in ANSWERS}, schema=ANSWERS)


def test_anti_join_leaves_exactly_what_the_driver_filter_leaves(ray_local, tmp_path):
    """Changed, half-answered, failed-for-good and new videos, a questions file with a ranged question and a
    video the listing lacks: the plan on workers (one execution of its joins) gives the driver's rows and counts."""
    from pipeline.config import validate_config
    from pipeline.run import plan, questions_of

    videos = tmp_path / "videos"
    for i in range(20):  # sorted by URI, video i is row i of the listing
        (videos / f"d{i // 7}").mkdir(parents=True, exist_ok=True)
        (videos / f"d{i // 7}" / f"v{i:02d}.mp4").write_bytes(b"x" * (i + 1))
    pq.write_table(pa.table({"video_uri": ["d0/v00.mp4", "d0/v01.mp4", "d0/v00.mp4", "d0/v02.mp4", "gone.mp4"],
                             "question": ["Own?", "Own?", "What is happening?", "When?", "Lost?"],
                             "start_s": [None, None, None, 1.0, None], "end_s": [None, None, None, 2.5, None]}),
                   tmp_path / "q.parquet")
    data = {"input": {"uri": str(videos), "extensions": [".mp4"]}, "questions": ["What is happening?", "Who?"],
            "questions_file": str(tmp_path / "q.parquet"), "model": {"name": "flashvlm-tiny/llava"},
            "output": {"uri": str(tmp_path / "out")}, "incremental": True}
    driver_cfg = validate_config(data)
    sid = driver_cfg.settings_id()
    listed = list_videos(str(videos), [".mp4"])
    uri, version = listed.column("video_uri").to_pylist(), listed.column("video_version").to_pylist()
    done = []
    for i in range(15):  # 15 of 20 answered; of those, 2 changed since (stale version), 1 half answered
        v = version[i] + ("old" if i % 10 == 0 else "")
        done += [(uri[i], v, "What is happening?")] + ([(uri[i], v, "Who?")] if i % 10 != 5 else [])
    done.append((uri[0], version[0], "Own?"))  # v00's own question, at its current version
    (tmp_path / "out" / "answers" / "date=2026-01-01").mkdir(parents=True)
    pq.write_table(_answers(done, sid), tmp_path / "out" / "answers" / "date=2026-01-01" / "prior.parquet")
    (tmp_path / "out" / "errors" / "date=2026-01-01").mkdir(parents=True)
    cols = {"video_uri": [uri[16], uri[17]], "video_version": [version[16], version[17]], "stage": ["decode"] * 2,
            "error_type": ["ValueError", "TimeoutError"], "error": ["bad"] * 2, "settings_id": [sid] * 2, "run_id": ["prior"] * 2}
    failed = pa.table({f.name: cols.get(f.name, pa.nulls(2, f.type)) for f in ERRORS}, schema=ERRORS)
    pq.write_table(failed, tmp_path / "out" / "errors" / "date=2026-01-01" / "prior.parquet")

    questions = questions_of(driver_cfg, str(videos))  # read once, by the driver, for both paths
    expected, n_expected, skipped, already = plan(driver_cfg, str(videos), questions)
    workers_cfg = validate_config({**data, "input": {**data["input"], "list_on_workers": True}})
    todo, n, w_skipped, w_already = plan(workers_cfg, str(videos), questions)

    def key(r):
        ranges = tuple(zip(r["question_start_s"] or (), r["question_end_s"] or ()))
        return (r["video_uri"], r["video_version"], tuple(r["questions"] or ()),
                ranges if any(s is not None for s, _ in ranges) else (), r["error_type"])

    got = sorted(key(r) for r in todo.take_all())
    assert got == sorted(key(r) for r in expected.to_pylist())
    assert (n, w_skipped, w_already) == (n_expected, skipped, already)
    # What that is: 2 changed (v00, v10), 1 half answered (v05), v01's own question, v02's ranged question, the
    # 5 new (v15-v19) less v16 (failed for good; v17's timeout is retried), and the questions file's missing video.
    left = {r[0].rsplit("/", 1)[-1]: r for r in got}
    assert len(left) == 2 + 1 + 1 + 1 + 4 + 1 and "v16.mp4" not in left and "v17.mp4" in left
    assert left["v00.mp4"][2] == ("What is happening?", "Who?")  # changed: asked again; its own question was answered
    assert left["v05.mp4"][2] == ("Who?",) and left["v01.mp4"][2] == ("Own?",)
    assert left["v02.mp4"][2:4] == (("When?",), ((1.0, 2.5),))  # the range carried into question_start_s / _end_s
    assert left["v15.mp4"][2] == ("What is happening?", "Who?")
    assert left["gone.mp4"][2:] == (("What is happening?", "Who?", "Lost?"), (), "FileNotFoundError")


def test_plan_dataset_takes_the_planned_dataset_as_it_takes_the_drivers_table(ray_local, tmp_path):
    """Mode none: whole_videos over a Ray dataset of LISTED rows (map_batches) gives the PLANNED rows it
    gives over the driver's table, ranged questions asked once each."""
    from pipeline.config import validate_config
    from pipeline.run import plan_dataset
    from pipeline.schema import LISTED

    cfg = validate_config({"input": {"uri": str(tmp_path)}, "questions": ["Q?"], "model": {"name": "flashvlm-tiny/llava"},
                           "output": {"uri": str(tmp_path / "out")}})
    listed = pa.Table.from_pylist([
        {"video_uri": "file:///v/a.mp4", "video_version": "1", "video_size": 3, "questions": ["Q?", "R?", "R?"],
         "question_start_s": [None, 1.0, 4.0], "question_end_s": [None, 2.0, 9.0]},
        {"video_uri": "file:///v/b.mp4", "video_version": "2", "video_size": 4, "questions": ["Q?"]},
    ], schema=LISTED)
    from_table = plan_dataset(cfg, listed).take_all()
    from_dataset = plan_dataset(cfg, ray_local.data.from_arrow(listed)).take_all()
    assert sorted(from_dataset, key=lambda r: r["video_uri"]) == sorted(from_table, key=lambda r: r["video_uri"])
    assert [r["questions"] for r in sorted(from_dataset, key=lambda r: r["video_uri"])] == [["Q?", "R?"], ["Q?"]]
