"""Listing: local folder, file://, glob, manifests (txt, jsonl, parquet), S3 prefix; questions files."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.listing import list_videos
from pipeline.questions import attach_questions, questions_table, read_questions_file
from pipeline.schema import LISTED

EXTS = [".mp4", ".webm", ".mov"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.mp4", "b.webm", "sub/c.MOV", "notes.txt", "sub/d.json"):
        (tmp_path / name).write_bytes(b"x" * (len(name) + 1))
    return tmp_path


def names(table):
    return [u.rsplit("/", 1)[-1] for u in table.column("video_uri").to_pylist()]


def test_local_folder_recursive_by_extension_sorted(folder):
    table = list_videos(str(folder), EXTS)
    assert table.schema == LISTED
    assert names(table) == ["a.mp4", "b.webm", "c.MOV"]
    row = table.to_pylist()[0]
    assert row["video_uri"] == f"file://{folder}/a.mp4"
    assert row["video_size"] == len("a.mp4") + 1
    assert row["video_version"].startswith(f"{row['video_size']}:") and row["error"] is None


def test_file_scheme_and_trailing_slash_give_the_same_rows(folder):
    assert list_videos(f"file://{folder}/", EXTS).equals(list_videos(str(folder), EXTS))


def test_version_changes_when_the_file_does(folder):
    before = list_videos(str(folder / "a.mp4"), EXTS).column("video_version")[0].as_py()
    (folder / "a.mp4").write_bytes(b"changed content")
    after = list_videos(str(folder / "a.mp4"), EXTS).column("video_version")[0].as_py()
    assert before != after


def test_glob_takes_what_matches(folder):
    assert names(list_videos(f"{folder}/*.mp4", EXTS)) == ["a.mp4"]
    assert names(list_videos(f"{folder}/**/*.MOV", EXTS)) == ["c.MOV"]


def test_txt_manifest_relative_absolute_comments_and_missing(folder):
    manifest = folder / "list.txt"
    manifest.write_text(f"# clips\na.mp4\n{folder}/sub/c.MOV\n\nmissing.mp4\na.mp4\n")
    table = list_videos(str(manifest), EXTS)
    rows = {r["video_uri"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert sorted(rows) == ["a.mp4", "c.MOV", "missing.mp4"]  # duplicates dropped
    assert rows["a.mp4"]["error"] is None and rows["a.mp4"]["video_size"] == 6
    missing = rows["missing.mp4"]
    assert (missing["error_stage"], missing["error_type"]) == ("list", "FileNotFoundError")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_tabular_manifests(folder, kind):
    path = folder / f"list.{kind}"
    uris = [f"file://{folder}/b.webm", "a.mp4"]
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps({"video_uri": u}) for u in uris))
    elif kind == "parquet":
        pq.write_table(pa.table({"uri": uris}), path)
    else:
        path.write_text("video_uri\n" + "\n".join(uris) + "\n")
    assert names(list_videos(str(path), EXTS)) == ["a.mp4", "b.webm"]


def test_manifest_without_uri_column_is_a_clear_error(folder):
    path = folder / "list.jsonl"
    path.write_text(json.dumps({"path": "a.mp4"}))
    with pytest.raises(ValueError, match="video_uri"):
        list_videos(str(path), EXTS)


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_videos(str(tmp_path / "nothing.mp4"), EXTS)


def test_s3_prefix_glob_and_manifest(s3_options, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for key in ("videos/a.mp4", "videos/deep/b.webm", "videos/readme.md", "other/c.mp4"):
        fs.pipe(f"{s3_bucket}/{key}", b"0123456789")
    fs.pipe(f"{s3_bucket}/videos/list.txt", b"a.mp4\ns3://%s/other/c.mp4\ngone.mp4\n" % s3_bucket.encode())

    table = list_videos(f"s3://{s3_bucket}/videos/", EXTS, s3_options)
    assert table.column("video_uri").to_pylist() == [f"s3://{s3_bucket}/videos/a.mp4", f"s3://{s3_bucket}/videos/deep/b.webm"]
    etag = table.column("video_version")[0].as_py()
    assert etag and '"' not in etag and table.column("video_size")[0].as_py() == 10

    assert names(list_videos(f"s3://{s3_bucket}/videos/**/*.webm", EXTS, s3_options)) == ["b.webm"]

    listed = {r["video_uri"]: r for r in list_videos(f"s3://{s3_bucket}/videos/list.txt", EXTS, s3_options).to_pylist()}
    outside = listed[f"s3://{s3_bucket}/other/c.mp4"]  # not under the manifest's folder: refused by default
    assert (outside["error_stage"], outside["error_type"]) == ("list", "PathOutsideInput") and "allowed_prefixes" in outside["error"]
    listed = {r["video_uri"]: r for r in list_videos(
        f"s3://{s3_bucket}/videos/list.txt", EXTS, s3_options, allowed_prefixes=[f"s3://{s3_bucket}/other/"]).to_pylist()}
    assert listed[f"s3://{s3_bucket}/other/c.mp4"]["error"] is None
    assert listed[f"s3://{s3_bucket}/videos/gone.mp4"]["error_type"] == "FileNotFoundError"


def test_s3_with_aws_environment_variables(s3_options, s3_env, s3_bucket, monkeypatch):
    import s3fs

    s3fs.S3FileSystem(**s3_options).pipe(f"{s3_bucket}/v/x.mp4", b"abc")
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    assert names(list_videos(f"s3://{s3_bucket}/v", EXTS)) == ["x.mp4"]  # no storage_options at all


# ---- questions ---------------------------------------------------------------------------------------


def test_questions_file_jsonl_and_parquet_match_relative_and_absolute(folder):
    listed = list_videos(str(folder), EXTS)
    rows = [
        {"video_uri": "a.mp4", "question": "Who?"},
        {"video_uri": f"file://{folder}/a.mp4", "question": "Where?"},
        {"video_uri": str(folder / "sub" / "c.MOV"), "question": "When?"},
        {"video_uri": "ghost.mp4", "question": "Is it there?"},
    ]
    jsonl = folder / "q.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), folder / "q.parquet")
    for path in (jsonl, folder / "q.parquet"):
        per_video = questions_table(read_questions_file(str(path)), str(folder))
        table, skipped = attach_questions(listed, ["Common?"], per_video)
        got = {r["video_uri"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
        assert got["a.mp4"]["questions"] == ["Common?", "Who?", "Where?"]
        assert got["b.webm"]["questions"] == ["Common?"]
        assert got["c.MOV"]["questions"] == ["Common?", "When?"]
        assert got["ghost.mp4"]["error_stage"] == "list" and "questions_file" in got["ghost.mp4"]["error"]
        assert skipped == 0


def test_only_a_questions_file_skips_videos_it_does_not_name(folder):
    listed = list_videos(str(folder), EXTS)
    per_video = questions_table(pa.table({"video_uri": ["b.webm"], "question": ["What?"]}), str(folder))
    table, skipped = attach_questions(listed, [], per_video)
    assert names(table) == ["b.webm"] and skipped == 2


def test_malformed_questions_file_is_a_clear_error(folder):
    path = folder / "q.jsonl"
    path.write_text('{"video_uri": "a.mp4"}\n')
    with pytest.raises(ValueError, match="question"):
        read_questions_file(str(path))
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"questions_file .*q\.jsonl: not a readable \.jsonl table"):
        read_questions_file(str(path))


def test_extra_uris_are_listed_with_the_input_and_a_demo_leaves_missing_ones_out(folder, tmp_path_factory, capsys):
    from pipeline.config import validate_config
    from pipeline.run import list_inputs

    other = tmp_path_factory.mktemp("other")
    (other / "e.mp4").write_bytes(b"e")
    base = {"input": {"uri": str(folder), "extra_uris": [str(other), str(other / "missing")]}, "questions": ["why?"],
            "model": {"name": "m"}, "output": {"uri": "/out"}}
    with pytest.raises(FileNotFoundError, match="missing"):  # a job: a missing location is an error
        list_inputs(validate_config(base), str(folder), None)
    demo = validate_config({**base, "input": {**base["input"], "generate_if_missing": 1}})
    listed, skipped = list_inputs(demo, str(folder), None)
    assert sorted(names(listed)) == ["a.mp4", "b.webm", "c.MOV", "e.mp4"] and skipped == 0
    assert listed.column("questions").to_pylist() == [["why?"]] * 4
    assert f"{other / 'missing'} not found: left out of the demo" in capsys.readouterr().out


def test_canonical_uris_in_arrow_match_normalize_uri_one_by_one(folder):
    from pipeline.questions import canonical_uris
    from pipeline.storage import normalize_uri

    cases = [f"{folder}/a.mp4", f"file://{folder}/a.mp4", f"{folder}/./sub/../a.mp4", f"{folder}/sub/", "s3://b/k/x.mp4",
             "s3://b/k/../x.mp4", "s3://b/k//x.mp4", "s3://b/x/", "relative.mp4", None]
    assert canonical_uris(pa.array(cases)).to_pylist() == [None if c is None else normalize_uri(c) for c in cases]
    relative = canonical_uris(pa.array(["a.mp4", "sub/../a.mp4", "s3://b/z.mp4"]), str(folder)).to_pylist()
    assert relative == [normalize_uri(f"{folder}/a.mp4")] * 2 + ["s3://b/z.mp4"]
