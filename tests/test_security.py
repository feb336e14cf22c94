"""Security: no credential in output, logs or tables; trust_remote_code off unless configured; manifest
and questions-file entries cannot leave the input location; a commit manifest cannot move files outside
the output location."""

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipeline.config import load_config, validate_config
from pipeline.run import run, summary_text
from pipeline.listing import list_videos
from pipeline.questions import attach_questions, questions_table
from shapes.clips import make_clip
from tiny_models import LLAVA_PATH

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "input": {"uri": "/x"}, "questions": ["q?"], "model": {"name": LLAVA_PATH, "device": "cpu"},
    "output": {"uri": "/y"},
}


@pytest.mark.parametrize("path", [p for p in sorted((ROOT / "configs").glob("*.yaml")) if not p.name.startswith("train_")], ids=lambda p: p.name)
def test_shipped_configs_keep_trust_remote_code_off(path):
    from pipeline.eval_config import EvalConfig

    assert "trust_remote_code" not in yaml.safe_load(path.read_text()).get("model", {})
    schema = EvalConfig if path.name.startswith("eval_") else None  # evaluation configs extend the job's
    assert load_config(path, schema=schema).model.trust_remote_code is False


@pytest.mark.parametrize("setting, expected", [(None, False), (False, False), (True, True)])
def test_trust_remote_code_reaches_the_loader_only_when_set(monkeypatch, setting, expected):
    import flashvlm

    from pipeline.answer import AnswerQuestions, ModelLoadError
    from pipeline.schema import DECODED

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(flashvlm, "load", fake_load)
    model = dict(BASE["model"], **({} if setting is None else {"trust_remote_code": setting}))
    cfg = validate_config({**BASE, "model": model})
    stage = AnswerQuestions(model=cfg.model.model_dump(), selection=cfg.selection.model_dump(), selection_options={},
                            frame_size=336, run_id="r", settings_id="s")
    with pytest.raises(ModelLoadError, match="RuntimeError: stop here"):  # with the first batch: it fails the run
        stage(DECODED.empty_table())
    assert seen["trust_remote_code"] is expected


def test_manifest_entries_cannot_escape_the_input_location(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    (inside / "ok.mp4").write_bytes(b"inside")
    manifest = inside / "list.txt"
    manifest.write_text(f"ok.mp4\n../secret.mp4\n{tmp_path}/secret.mp4\nfile:///etc/hostname\nhttp://example.com/v.mp4\n"
                        f"sub/../ok.mp4\n")
    rows = list_videos(str(manifest), [".mp4"]).to_pylist()
    refused = [r for r in rows if r["error_type"] == "PathOutsideInput"]
    assert len(refused) == 4 and all(r["error_stage"] == "list" and "outside the input location" in r["error"] for r in refused)
    assert any("'../secret.mp4'" in r["error"] for r in refused)  # the error names the entry
    assert all(r["video_size"] is None for r in refused)  # never read, not even stat-ed
    ok = [r for r in rows if r["error"] is None]
    assert [r["video_uri"] for r in ok] == [f"file://{inside}/ok.mp4"]  # sub/../ok.mp4 is the same file
    allowed = list_videos(str(manifest), [".mp4"], allowed_prefixes=[str(tmp_path)]).to_pylist()
    assert sum(r["error"] is None for r in allowed) == 2  # ../secret.mp4 and its absolute spelling: one file


def test_questions_file_entries_cannot_escape_the_input_location(tmp_path):
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mp4", frames=2)
    listed = list_videos(str(tmp_path / "in"), [".mp4"])
    table = pa.table({"video_uri": ["a.mp4", "../b.mp4", "s3://other/c.mp4"], "question": ["q1", "q2", "q3"]})
    out, _ = attach_questions(listed, [], questions_table(table, str(tmp_path / "in")), str(tmp_path / "in"))
    rows = {r["video_uri"].rsplit("/", 1)[-1]: r for r in out.to_pylist()}
    assert rows["a.mp4"]["error"] is None
    for name in ("b.mp4", "c.mp4"):
        assert (rows[name]["error_stage"], rows[name]["error_type"]) == ("list", "PathOutsideInput")
        assert "questions_file entry" in rows[name]["error"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("entry", ["../x", "/ABS/victim.parquet", "s3://other/y.parquet", "answers/../../x", "notes/x"])
def test_recover_refuses_manifest_entries_outside_the_staging_folder(tmp_path, entry):
    from pipeline.commit import MANIFEST, STAGING, recover

    out = tmp_path / "out"
    stage = out / STAGING / "evil"
    (stage / "answers" / "date=2026-01-01").mkdir(parents=True)
    (stage / "answers" / "date=2026-01-01" / "ok.parquet").write_bytes(b"staged")
    (out / STAGING / "x").write_bytes(b"not this run's")  # what '../x' names from the staging folder
    (tmp_path / "victim.parquet").write_bytes(b"outside output.uri")
    entry = entry.replace("/ABS", str(tmp_path))
    (stage / MANIFEST).write_text(json.dumps({"run_id": "evil", "files": ["answers/date=2026-01-01/ok.parquet", entry]}))
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="outside the run's staging folder") as info:
        recover(str(out), None)
    assert repr(entry) in str(info.value)  # the error names the entry
    assert tree(tmp_path) == before  # nothing created, moved or deleted, inside output.uri or out of it


def test_recover_refuses_a_manifest_without_a_list_of_files(tmp_path):
    from pipeline.commit import MANIFEST, STAGING, recover

    stage = tmp_path / STAGING / "odd"
    stage.mkdir(parents=True)
    (stage / MANIFEST).write_text(json.dumps({"run_id": "odd", "files": "answers/x.parquet"}))
    with pytest.raises(ValueError, match="'files' must be a list"):
        recover(str(tmp_path), None)
    assert (stage / MANIFEST).exists()


@pytest.mark.slow
def test_credentials_never_printed_logged_or_written(ray_local, flashvlm_cache, s3_options, s3_bucket, tmp_path, capsys, monkeypatch):
    import s3fs


    env_secret, option_secret = "ENVSECRET-7f3a9c", "OPTSECRET-2b8d41"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env_secret)
    # moto accepts any credentials. s3fs hands s3_additional_kwargs to every S3 call that takes them (SSE-C on
    # put and get) and drops the rest: names no list of secret-looking words catches still reach the config.
    extra = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "SSECKEY-0c1d2e3f4a5b6c7d8e9f0a1b2c",
             "accessKey": "ACCESSKEY-9a8b7c", "api-key": "APIKEY-4d5e6f"}
    options = dict(s3_options, secret=option_secret, key="OPTKEYID-5e1c", s3_additional_kwargs=extra)
    fs = s3fs.S3FileSystem(**options)
    for i in range(2):
        fs.put_file(str(make_clip(tmp_path / f"c{i}.mp4", frames=4, seed=i)), f"{s3_bucket}/v/c{i}.mp4")
    fs.pipe(f"{s3_bucket}/v/bad.mp4", b"not a video")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"uri": f"s3://{s3_bucket}/v/"}, "questions": ["q?"],
        "model": {"name": LLAVA_PATH, "dtype": "float32", "device": "cpu", "max_new_tokens": 2},
        "sampling": {"frames": 2, "size": 336}, "selection": {"budget": 8},
        "output": {"uri": f"s3://{s3_bucket}/qa"}, "storage_options": options, "ray": {"decode_timeout_s": 30},
    }))
    cfg = load_config(config)
    record = run(cfg)
    print(summary_text(cfg, record))
    printed = capsys.readouterr()
    assert "1 failed" in printed.out  # the run did write an error row (messages are a leak path too)
    secrets = (env_secret, option_secret, options["key"], extra["SSECustomerKey"], extra["accessKey"], extra["api-key"])
    blobs = {"stdout": printed.out, "stderr": printed.err}
    for key in fs.find(f"{s3_bucket}/qa"):
        blobs[key] = fs.cat_file(key).decode("latin-1")  # Parquet pages are compressed: check the decoded rows too
    from pipeline.tables import read_table

    for name in ("answers", "errors", "runs"):
        blobs[f"table {name}"] = json.dumps(read_table(f"s3://{s3_bucket}/qa", name, options).to_pylist(), default=str)
    assert len([k for k in blobs if k.startswith(s3_bucket)]) >= 3
    session = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    for log in session.rglob("*"):
        if log.is_file():
            blobs[str(log)] = log.read_text(errors="replace")
    leaks = [(where, s) for where, text in blobs.items() for s in secrets if s in text]
    assert not leaks, leaks
    stored = json.loads(json.loads(blobs["table runs"])[0]["config"])["storage_options"]
    assert stored["endpoint_url"] == s3_options["endpoint_url"] and stored["key"] == stored["secret"] == "***"
    assert stored["s3_additional_kwargs"] == dict.fromkeys(extra, "***")
