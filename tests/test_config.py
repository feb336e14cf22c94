"""The job config: shipped configs validate, bad keys and values are errors that name the key."""

import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from pipeline.config import ConfigError, apply_overrides, load_config, parse_override, validate_config

ROOT = Path(__file__).resolve().parents[1]
# Configs of jobs/video_qa.py; train_*.yaml and eval_*.yaml belong to the training and evaluation jobs.
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith(("train_", "eval_")))

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
    from pipeline.eval_config import load_eval_config

    # eval_*.yaml are jobs/evaluate.py's (the job config plus an evaluation section).
    cfg = load_eval_config(path) if path.name.startswith("eval_") else load_config(path)
    assert cfg.model.name and cfg.output.uri and (cfg.questions or cfg.questions_file)


def test_training_config_validates():
    from shapes.training import TrainConfig

    cfg = load_config(ROOT / "configs" / "train_shapes.yaml", schema=TrainConfig)
    kinds = [s.kind for s in cfg.stages]
    assert kinds[:3] == ["text", "vision", "alignment"] and set(kinds[3:]) == {"qa"}, "language model and tower first, then LLaVA's two stages"
    alignment = cfg.stages[2]
    assert alignment.freeze_vision and alignment.freeze_language, "LLaVA-1.5's alignment trains the projector alone"
    with pytest.raises(ConfigError, match="stages.0.kind"):
        load_config(ROOT / "configs" / "train_shapes.yaml", ["stages.0.kind=captions"], schema=TrainConfig)


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
        (with_("selection", guide="questoin"), "selection.guide", "'question' or 'prompt' (got 'questoin')"),
        (with_("selection", text_weighting="foo"), "selection.text_weighting", "'none' or 'norm' (got 'foo')"),
        (with_("selection", method_options={"text_weighting": "norm"}), "selection.method_options", "no option 'text_weighting'"),
        ({**MINIMAL, "incremental_retry": "some"}, "incremental_retry", "'transient' or 'all' (got 'some')"),
        (with_("model", device="gpu"), "model.device", "cuda"),
        (with_("model", name=""), "model.name", "at least 1 character"),
        (with_("input", uri="s4://bucket/v/"), "input.uri", "unknown protocol 's4'"),
        (with_("input", extensions=["", ".mp4"]), "input.extensions", "suffixes"),
        (with_("input", allowed_prefixes=["zz://x"]), "input.allowed_prefixes.0", "unknown protocol 'zz'"),
        (with_("input", extra_uris=["zz://x"]), "input.extra_uris.0", "unknown protocol 'zz'"),
        (with_("input", generate_shapes={"split": "dev"}), "input.generate_shapes.split", "'test' (got 'dev')"),
        (with_("input", generate_shapes={"frames": 9}), "input.generate_shapes.frames", "less than or equal to 8"),
        (with_("output", uri=""), "output.uri", "at least 1 character"),
        ({**MINIMAL, "questions_file": "zz://q.jsonl"}, "questions_file", "unknown protocol 'zz'"),
    ],
)
def test_bad_value_is_named(data, key, hint):
    message = error_of(data)
    assert f"{key}:" in message and hint in message, message


def test_fixed_sets_come_from_the_library():
    from flashvlm.models import DTYPES
    from flashvlm.models.base import GUIDES
    from flashvlm.selection import TEXT_WEIGHTINGS
    from flashvlm.video import SPLITS
    from pipeline.config import JobConfig, ModelConfig, SelectionOptions

    def literal(model, name):
        annotation = model.model_fields[name].annotation
        if type(None) in get_args(annotation):  # Optional[Literal[...]]
            (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
        return get_args(annotation)

    assert literal(SelectionOptions, "guide") == GUIDES
    assert literal(SelectionOptions, "split") == SPLITS
    assert literal(SelectionOptions, "text_weighting") == TEXT_WEIGHTINGS
    assert literal(ModelConfig, "dtype") == tuple(DTYPES)
    assert set(get_args(JobConfig.model_fields["incremental_retry"].annotation)) == {"transient", "all"}


@pytest.mark.parametrize(
    "selection, frames, hint",
    [
        # the library's default split is per_frame, which fixes each frame's share itself
        ({"min_per_frame": 4}, 8, 'applies to selection.split "global" only, not null'),
        ({"min_per_frame": 4, "split": "per_frame"}, 8, "not per_frame"),
        ({"min_per_frame": 4, "split": "global", "budget": None}, 8, "needs a budget"),
        # important share of 64 at ratio 0.5: 32 a frame
        ({"min_per_frame": 33, "split": "global", "budget": 64}, 8, "at most 32"),
        ({"min_per_frame": 17, "split": "global", "budget": 64, "important_ratio": 0.25}, 8, "at most 16"),
        # int(5 * 0.5) = 2 important tokens for 1 frame, int(15 * 0.5) // 3 = 2 for 3: 3 never fits
        ({"min_per_frame": 3, "split": "global", "budget": 5}, 4, "at most 2"),
    ],
)
def test_min_per_frame_is_checked_against_budget_split_and_frames(selection, frames, hint):
    data = {**with_("selection", **selection), "sampling": {"frames": frames}}
    message = error_of(data)
    assert "selection.min_per_frame:" in message and hint in message and f"(got {selection['min_per_frame']})" in message, message


@pytest.mark.parametrize(
    "selection, frames",
    [
        ({"min_per_frame": 32, "split": "global", "budget": 64}, 8),
        ({"min_per_frame": 0, "split": "global", "budget": 1}, 8),
        ({"min_per_frame": 2, "split": "global", "budget": 5}, 4),
        ({"min_per_frame": 16, "split": "global", "budget": 64, "important_ratio": 0.25}, 1024),
    ],
)
def test_min_per_frame_that_fits_loads(selection, frames):
    cfg = validate_config({**with_("selection", **selection), "sampling": {"frames": frames}})
    assert cfg.selection.min_per_frame == selection["min_per_frame"]


def test_min_per_frame_limit_is_what_select_video_tokens_accepts():
    """The config's limit is exactly the library's: at the limit select_video_tokens runs, one above it refuses."""
    import torch

    from flashvlm.video import select_video_tokens

    budget, T, N = 10, 3, 16
    limit = int(budget * T * 0.5) // T  # 5
    assert validate_config({**with_("selection", split="global", budget=budget, min_per_frame=limit), "sampling": {"frames": T}})
    assert "at most 5" in error_of({**with_("selection", split="global", budget=budget, min_per_frame=limit + 1),
                                    "sampling": {"frames": T}})
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, T, N, 8, generator=g), torch.randn(1, T, N, 8, generator=g), torch.rand(1, T, N, generator=g), None)
    assert select_video_tokens(*args, budget * T, split="global", min_per_frame=limit).shape == (1, budget * T)
    with pytest.raises(ValueError, match="min_per_frame"):
        select_video_tokens(*args, budget * T, split="global", min_per_frame=limit + 1)


def test_a_bad_value_exits_2_before_ray_starts(tmp_path):
    """`python jobs/video_qa.py --set selection.guide=questoin`, as a user types it: exit 2, the key, the bad
    value and the allowed ones on stderr, and Ray never imported (so never started)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]  # as `python jobs/video_qa.py ...` sets it\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "finally:\n"
        "    print('ray imported:', 'ray' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        # (input and output in tmp_path: if the bad value ever loaded, the job would find nothing to do there)
        [sys.executable, "-c", probe, "jobs/video_qa.py", "--set", "selection.guide=questoin",
         "--set", f"input.uri={tmp_path}/in", "--set", "input.generate_if_missing=0", "--set", f"output.uri={tmp_path}/out"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "selection.guide: Input should be 'question' or 'prompt' (got 'questoin')" in done.stderr
    assert "ray imported: False" in done.stderr and done.stdout == ""


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


def test_overrides_index_lists_from_zero_and_name_a_missing_item():
    data = {"stages": [{"steps": 1}, {"steps": 2}]}
    assert apply_overrides(data, ["stages.1.steps=100"])["stages"] == [{"steps": 1}, {"steps": 100}]
    with pytest.raises(ConfigError, match=r"stages\.2 is not an item of a list of 2"):
        apply_overrides(data, ["stages.2.steps=1"])
    with pytest.raises(ConfigError, match=r"stages\.x is not an item"):
        apply_overrides(data, ["stages.x=1"])
    with pytest.raises(ConfigError, match=r"stages\.0\.steps is not a section"):
        apply_overrides(data, ["stages.0.steps.x=1"])


def test_load_config_applies_overrides_and_reports_them_by_key(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: {uri: /data}\nquestions: [q]\nmodel: {name: m}\noutput: {uri: /out}\n")
    cfg = load_config(path, ["selection.budget=32", "model.max_new_tokens=5"])
    assert cfg.selection.budget == 32 and cfg.model.max_new_tokens == 5
    assert load_config(path, ["selection.text_weighting=norm"]).selection.text_weighting == "norm"
    refused = {
        "selection.budget=abc": r"selection\.budget: .*'abc'",
        "selection.nope=1": r"selection\.nope: unknown key",
        "selection.text_weighting=foo": r"selection\.text_weighting: .*'none' or 'norm' \(got 'foo'\)",
        "run.max_answer_failure_share=1.5": r"run\.max_answer_failure_share: .*less than or equal to 1",
        "selection.budget": "key.path=value",
    }
    for override, match in refused.items():
        with pytest.raises(ConfigError, match=match):
            load_config(path, [override])


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


def test_settings_ids_of_earlier_runs_stay_when_new_fields_are_unset():
    # The ids these configs had before selection.text_weighting existed: their answers stay current.
    earlier_demo = ["model.name=flashvlm-tiny/llava", "model.max_new_tokens=8"]  # the demo's model then (a name only)
    assert load_config(ROOT / "configs" / "demo.yaml", earlier_demo).settings_id() == "8205684e18c2"
    assert load_config(ROOT / "configs" / "llava15_7b.yaml").settings_id() == "f55afc1f8339"
    assert load_config(ROOT / "configs" / "demo.yaml", [*earlier_demo, "selection.text_weighting=norm"]).settings_id() != "8205684e18c2"


def test_selection_library_options_only_the_set_ones():
    cfg = validate_config(with_("selection", gamma=3.0, budget=16))
    assert cfg.selection.library_options() == {"gamma": 3.0}
    cfg = validate_config(with_("selection", text_weighting="norm"))
    assert cfg.selection.library_options() == {"text_weighting": "norm"}
    assert validate_config(with_("selection", text_weighting="none")).settings_id() != cfg.settings_id()


def test_every_storage_option_is_masked_unless_known_to_be_public():
    secrets = {"SSECustomerKey": "sse-1", "accessKey": "ak-2", "api-key": "api-3", "Password": "pw-4", "sas": "sas-5"}
    options = {
        **secrets, "endpoint_url": "http://minio:9000", "anon": False, "use_ssl": True, "token": None,
        "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "st-6", "endpoint_url": "https://u:pw-11@s3.x"},
        "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "proxies": {"https": "http://u:pw-7@proxy"}},
        "s3_additional_kwargs": {"ServerSideEncryption": "AES256", "SSECustomerKey": "sse-8", "SSEKMSKeyId": "kms-9"},
        "some_list": ["l-10"],
    }
    public = validate_config({**MINIMAL, "storage_options": options}).public_dict()["storage_options"]
    assert public == {
        **dict.fromkeys(secrets, "***"), "endpoint_url": "http://minio:9000", "anon": False, "use_ssl": True, "token": None,
        "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "***", "endpoint_url": "https://***@s3.x"},
        "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"}, "proxies": "***"},
        "s3_additional_kwargs": {"ServerSideEncryption": "AES256", "SSECustomerKey": "***", "SSEKMSKeyId": "***"},
        "some_list": "***",
    }
    text = str(public)
    assert not [s for s in ("sse-", "ak-2", "api-3", "pw-", "sas-5", "st-6", "kms-9", "l-10", "u:") if s in text]


def test_a_bad_storage_options_value_is_not_echoed():
    assert "key=SECRET" not in error_of({**MINIMAL, "storage_options": "key=SECRET"})


def test_redaction_keeps_token_counts_and_hides_nested_secrets():
    cfg = validate_config(
        {**MINIMAL, "storage_options": {"token": "t0k", "client_kwargs": {"aws_secret_access_key": "s", "region_name": "r"}}}
    )
    public = cfg.public_dict()
    assert public["model"]["max_new_tokens"] == 32
    assert public["storage_options"] == {"token": "***", "client_kwargs": {"aws_secret_access_key": "***", "region_name": "r"}}
