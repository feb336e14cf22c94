"""The job config: shipped configs validate, bad keys and values are errors that name the key."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, apply_overrides, load_config, parse_override, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

MINIMAL = {"input": {"uri": "/data"}, "questions": ["why?"], "model": {"name": "m"}, "output": {"uri": "/out"}}


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return str(info.value)


def with_(section: str, **values) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MINIMAL.items()}
    data.setdefault(section, {})
    data[section] = {**data[section], **values}
    return data


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.model.name and cfg.output.uri and (cfg.questions or cfg.questions_file)


def test_shipped_configs_are_the_three_asked_for():
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "llava15_7b.yaml", "qwen25vl_7b.yaml"}


def test_defaults_fill_optional_sections():
    cfg = validate_config(MINIMAL)
    assert cfg.sampling.frames == 8 and cfg.sampling.size == 336 and cfg.selection.budget == 64
    assert cfg.ray.decode_timeout_s and cfg.model.trust_remote_code is False


@pytest.mark.parametrize(
    "data, key",
    [
        ({**MINIMAL, "extra": 1}, "extra: unknown key"),
        (with_("selection", budgte=3), "selection.budgte: unknown key"),
        (with_("ray", model_pool=3), "ray.model_pool: unknown key"),
        (with_("model", nmae="x"), "model.nmae: unknown key"),
    ],
)
def test_unknown_key_is_named(data, key):
    assert key in error_of(data)


@pytest.mark.parametrize(
    "data, key, hint",
    [
        (with_("selection", budget="lots"), "selection.budget", "'lots'"),
        (with_("selection", budget=0), "selection.budget", "greater than or equal to 1"),
        (with_("selection", gamma=-1.0), "selection.gamma", "> 0"),
        (with_("selection", top_p=1.5), "selection.top_p", "[0, 1)"),
        (with_("selection", split="sideways"), "selection.split", "'sideways'"),
        (with_("sampling", frames=0), "sampling.frames", "greater than or equal to 1"),
        (with_("sampling", resize="stretch"), "sampling.resize", "'stretch'"),
        (with_("model", dtype="fp8"), "model.dtype", "'fp8'"),
        (with_("model", trust_remote_code="maybe"), "model.trust_remote_code", "'maybe'"),
        (with_("ray", decode_actors=[4, 2]), "ray.decode_actors", "min <= max"),
        (with_("ray", decode_timeout_s=-5), "ray.decode_timeout_s", "greater than 0"),
        ({**MINIMAL, "run_id": "../etc"}, "run_id", "pattern"),
    ],
)
def test_bad_value_is_named(data, key, hint):
    message = error_of(data)
    assert f"{key}:" in message and hint in message, message


def test_missing_required_keys_are_named():
    message = error_of({"questions": ["q"]})
    for key in ("input:", "model:", "output:"):
        assert key in message


def test_questions_or_questions_file_required():
    data = {k: v for k, v in MINIMAL.items() if k != "questions"}
    assert "questions_file" in error_of(data)
    assert validate_config({**data, "questions_file": "q.jsonl"}).questions_file == "q.jsonl"


def test_overrides_parse_yaml_scalars_and_nest():
    assert parse_override("selection.budget=32") == (["selection", "budget"], 32)
    assert parse_override("selection.budget=null") == (["selection", "budget"], None)
    assert parse_override("ray.decode_actors=[1, 4]") == (["ray", "decode_actors"], [1, 4])
    assert parse_override("input.uri=s3://b/p?x=1") == (["input", "uri"], "s3://b/p?x=1")
    data = apply_overrides(MINIMAL, ["sampling.frames=4", "ray.address=ray://head:10001"])
    assert data["sampling"] == {"frames": 4} and data["ray"]["address"] == "ray://head:10001"
    assert "sampling" not in MINIMAL  # the input is not modified


def test_load_config_applies_overrides_and_reports_them_by_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: /data}\nquestions: [q]\nmodel: {name: m}\noutput: {uri: /out}\n")
    cfg = load_config(path, ["selection.budget=32", "model.max_new_tokens=5"])
    assert cfg.selection.budget == 32 and cfg.model.max_new_tokens == 5
    with pytest.raises(ConfigError, match=r"selection\.budget: .*'abc'"):
        load_config(path, ["selection.budget=abc"])
    with pytest.raises(ConfigError, match=r"selection\.nope: unknown key"):
        load_config(path, ["selection.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["selection.budget"])


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_public_dict_hides_credentials():
    cfg = validate_config({**MINIMAL, "storage_options": {"key": "AKIA123", "secret": "s3cr3t", "endpoint_url": "http://x"}})
    public = cfg.public_dict()
    assert public["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert "s3cr3t" not in str(public) and "AKIA123" not in str(public)


def test_settings_id_tracks_answer_changing_settings_only():
    base = validate_config(MINIMAL)
    assert validate_config(with_("selection", budget=32)).settings_id() != base.settings_id()
    assert validate_config(with_("sampling", frames=4)).settings_id() != base.settings_id()
    assert validate_config(with_("ray", decode_actors=3)).settings_id() == base.settings_id()
    assert validate_config(with_("output", uri="/elsewhere")).settings_id() == base.settings_id()


def test_selection_library_options_only_the_set_ones():
    cfg = validate_config(with_("selection", gamma=3.0, budget=16))
    assert cfg.selection.library_options() == {"gamma": 3.0}


def test_redaction_keeps_token_counts_and_hides_nested_secrets():
    cfg = validate_config(
        {**MINIMAL, "storage_options": {"token": "t0k", "client_kwargs": {"aws_secret_access_key": "s", "region_name": "r"}}}
    )
    public = cfg.public_dict()
    assert public["model"]["max_new_tokens"] == 32
    assert public["storage_options"] == {"token": "***", "client_kwargs": {"aws_secret_access_key": "***", "region_name": "r"}}
