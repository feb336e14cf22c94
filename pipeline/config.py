"""The job's configuration: pydantic models for `configs/*.yaml`, plus dotted `--set` overrides.

Every model forbids unknown keys, so a typo (`selection.budgte`) is an error naming the key instead
of a silently ignored setting; every field with a fixed set of values is a Literal taken from where the
library defines that set (flashvlm's GUIDES, SPLITS, TEXT_WEIGHTINGS, dtypes, SelectionConfig), and settings that must
agree (selection.min_per_frame with budget, split and sampling.frames) are checked together. So a bad
config fails at load, before Ray starts, not inside a model actor. `load_config` turns pydantic's errors
into one `ConfigError` whose message lists each offending key as a dotted path with the value it got.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import fsspec
import torch
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from flashvlm.models import DTYPES
from flashvlm.models.base import GUIDES
from flashvlm.selection import TEXT_WEIGHTINGS, SelectionConfig, split_budget
from flashvlm.selectors import METHODS, method_options
from flashvlm.video import SPLITS, select_video_tokens
from pipeline.storage import redact_options
from shapes.clips import SPLITS as SHAPES_SPLITS

# The library's own sets of values, as the types of the fields that take them (Literal[("a", "b")] is
# Literal["a", "b"]): a value the library would refuse in a model actor is refused at load instead.
Guide = Literal[GUIDES]
Split = Literal[SPLITS]
TextWeighting = Literal[TEXT_WEIGHTINGS]
DType = Literal[tuple(DTYPES)]
Method = Literal[tuple(METHODS)]
# Keywords of a selector the adapter fills itself (or the config sets elsewhere: split, min_per_frame and
# the SelectionConfig fields such as text_weighting are selection keys), never a method option.
_ADAPTER_KEYWORDS = ("text_mask", "config", "return_important", "split", "min_per_frame") + tuple(
    f.name for f in dataclasses.fields(SelectionConfig)
)


def check_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A selector's own options (seed for random, grid for uniform), refused by name when `method`
    does not take them (split / min_per_frame have their own selection keys)."""
    known = [k for k in method_options(method, video=True) if k not in _ADAPTER_KEYWORDS]
    for name in options:
        if name not in known:
            raise ValueError(f"method {method!r} has no option {name!r}; its options: {', '.join(known) or 'none'}")
    if "grid" in options and options["grid"] is not None:
        options = {**options, "grid": tuple(options["grid"])}
    return options
# What the adapters use when selection.split is None: select_video_tokens' own default.
DEFAULT_SPLIT = inspect.signature(select_video_tokens).parameters["split"].default


def takes_min_per_frame(split: Optional[str]) -> bool:
    """Whether a video split (None: the library's default) takes min_per_frame: only "global" does."""
    return (split or DEFAULT_SPLIT) == "global"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names every bad key."""


class FieldError(ValueError):
    """Raised by a validator that checks several fields together, to name the one at fault.

    key is dotted and relative to the model that raises it; the message shows it after the model's
    own location, with the value it got."""

    def __init__(self, key: str, value: Any, message: str):
        super().__init__(message)
        self.key, self.value = key, value


def _known_protocol(uri: str) -> str:
    """A URI whose scheme fsspec knows (plain paths are local files); the scheme is a fixed set."""
    protocol = fsspec.utils.get_protocol(uri)
    if protocol not in fsspec.available_protocols():
        raise ValueError(f"unknown protocol {protocol!r}: use a local path, file://, s3:// or another fsspec protocol")
    return uri


def _torch_device(device: Optional[str]) -> Optional[str]:
    """A device string torch parses (what flashvlm.load hands to torch.device)."""
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"not a torch device ({exc})") from None
    return device


Uri = Annotated[str, Field(min_length=1), AfterValidator(_known_protocol)]


class StrictModel(BaseModel):
    # protected_namespaces=(): fields such as ray.model_actors are ours, not pydantic's.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


class GenerateShapes(StrictModel):
    """A split of the labelled shapes task (shapes/clips.py): its clips and its questions.jsonl."""

    split: Literal[SHAPES_SPLITS] = "test"  # type: ignore[valid-type]
    clips: int = Field(default=8, ge=1)
    frames: int = Field(default=4, ge=1, le=8)


class InputConfig(StrictModel):
    uri: Uri = Field(description="a local folder, file://, s3://bucket/prefix, a glob, or a manifest file")
    extra_uris: list[Uri] = Field(
        default_factory=list,
        description="more locations listed in the same run, each like uri; relative questions_file entries stay relative to uri",
    )
    extensions: list[str] = Field(
        default=[".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg"],
        description="suffixes kept when listing a folder or prefix (a glob or manifest is taken as is)",
    )
    allowed_prefixes: list[Uri] = Field(
        default_factory=list,
        description="other locations manifest / questions_file entries may point to (besides the input location)",
    )
    inventory: bool = Field(
        default=False,
        description="uri is a folder of S3 Inventory files (Parquet, ORC, or CSV with a header row); a uri naming a "
        "manifest.json is read as an inventory without this",
    )
    inventory_prefix: str = Field(
        default="", description="with an inventory input: only keys under this prefix (e.g. videos/2026/)"
    )
    list_on_workers: bool = Field(
        default=False,
        description="plan on Ray workers (pipeline/todo.py): list the folder, prefix or manifest in Ray tasks, and join the "
        "questions_file and the done answers as Ray Data joins, so the driver holds no row per video; inventory inputs "
        "always plan this way",
    )
    generate_if_missing: int = Field(
        default=0,
        ge=0,
        description="demo only: when uri is a local path that does not exist, generate this many short clips instead",
    )
    generate_shapes: Optional[GenerateShapes] = Field(
        default=None,
        description="demo only: when uri is a local folder that does not exist, write this shapes split there "
        "(uri must end in the split's name); local extra_uris that do not exist are then left out",
    )

    generate_long: Optional[GenerateLong] = Field(
        default=None,
        description="demo only (with generate_shapes or generate_if_missing): after the run, a second run over "
        "labelled long shapes videos in time segments (written to its uri when that local folder does not exist)",
    )

    @field_validator("extensions")
    @classmethod
    def _lower_with_dot(cls, value: list[str]) -> list[str]:
        if not value or any(not e.strip(".") for e in value):
            raise ValueError("must be a non-empty list of suffixes such as .mp4")
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in value]


class ModelConfig(StrictModel):
    name: str = Field(min_length=1, description="hub id (org/name), local checkpoint directory, or a registered name (flashvlm-tiny/shapes); checked before Ray starts")
    dtype: Optional[DType] = Field(default=None, description="None: the loader's default")
    device: Annotated[Optional[str], AfterValidator(_torch_device)] = Field(
        default=None, description="cpu, cuda, cuda:N (any torch device); None lets flashvlm.load choose"
    )
    trust_remote_code: bool = False
    max_new_tokens: int = Field(default=32, ge=1, le=4096)


class SegmentsConfig(StrictModel):
    """How a video is cut into time segments, each answered on its own (docs/segments.md)."""

    mode: Literal["none", "fixed", "scenes"] = Field(
        default="none", description="none: the whole video is one segment; fixed: windows of length_s; scenes: shots"
    )
    length_s: Optional[float] = Field(
        default=None, gt=0, description="fixed: the window length (required); scenes: longer shots are cut into windows of it"
    )
    min_s: float = Field(default=0.0, ge=0, description="a last window (fixed) or a shot (scenes) shorter than this joins its neighbour")
    threshold: float = Field(
        default=27.0, gt=0, description="scenes: PySceneDetect ContentDetector threshold (mean HSV change between sampled frames)"
    )
    detect_fps: float = Field(default=8.0, gt=0, description="scenes: frames a second the shot detector looks at")

    @model_validator(mode="after")
    def _lengths(self) -> "SegmentsConfig":
        if self.mode == "fixed" and self.length_s is None:
            raise FieldError("length_s", self.length_s, "mode fixed needs length_s, the window length in seconds")
        if self.length_s is not None and self.min_s >= self.length_s:
            raise FieldError("min_s", self.min_s, f"must be shorter than length_s ({self.length_s})")
        return self


class GenerateLong(StrictModel):
    """Labelled long shapes videos (shapes.clips.write_long_videos), answered per segment in a second run."""

    uri: Uri = Field(description="a local folder: the long videos and their long_questions.jsonl")
    videos: int = Field(default=1, ge=1)
    scenes: int = Field(default=6, ge=1, description="scenes per video, with hard cuts between them")
    scene_s: float = Field(default=4.0, gt=0, description="seconds per scene")
    frames: int = Field(default=4, ge=1, le=8, description="rendered frames per scene")
    segments: SegmentsConfig = Field(
        default_factory=lambda: SegmentsConfig(mode="scenes", threshold=10.0),
        description="sampling.segments of that run (threshold 10: the generated scenes' cuts, docs/segments.md)",
    )


class SamplingConfig(StrictModel):
    frames: int = Field(default=8, ge=1, le=1024, description="frames sampled uniformly per video (per segment)")
    fps: Optional[float] = Field(
        default=None, gt=0, description="if set, at most duration*fps frames (never more than `frames`)"
    )
    size: int = Field(default=336, ge=8, le=4096, description="frames are resized to size x size at decode time")
    resize: Literal["crop", "squash"] = Field(
        default="crop",
        description="crop: shortest side to size then centre crop (CLIP's own preprocessing); squash: ignore aspect",
    )
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig, description="time segments of long videos")

    def hashed(self) -> dict[str, Any]:
        """What settings ids hash: every key, segments only when set (mode none keeps earlier runs' ids)."""
        data = self.model_dump(mode="json")
        if self.segments.mode == "none":
            data.pop("segments")
        return data

    def frame_options(self) -> dict[str, Any]:
        """The frame sampling options of flashvlm.decode.Sampling (everything but segments)."""
        return self.model_dump(exclude={"segments"})


def _selection_option_fields() -> dict[str, Any]:
    """One optional field per flashvlm.SelectionConfig field, so the two never drift apart.

    None means "the library's default"; only the options a config sets are passed to the library.
    """
    out: dict[str, Any] = {}
    sets = {"text_weighting": TextWeighting}  # the fields whose values are a fixed set of the library's
    for f in dataclasses.fields(SelectionConfig):
        kind = sets.get(f.name, type(f.default))  # else int or float; pydantic rejects strings and bools for both
        out[f.name] = (Optional[kind], Field(default=None, description=f"SelectionConfig.{f.name} (default {f.default!r})"))
    return out


_SelectionBase = create_model("_SelectionBase", __base__=StrictModel, **_selection_option_fields())


class SelectionOptions(_SelectionBase):  # type: ignore[misc, valid-type]
    budget: Optional[int] = Field(default=64, ge=1, description="visual tokens kept per frame; null keeps all")
    split: Optional[Split] = Field(
        default=None, description=f"how the clip budget is split across frames; None: the library's default ({DEFAULT_SPLIT})"
    )
    min_per_frame: Optional[int] = Field(
        default=None, ge=0, description='split "global" only: important tokens every frame gets at least'
    )
    guide: Guide = Field(default="question", description="what guides the selection (flashvlm.wrap's guide=)")
    method: Method = Field(
        default="flashvlm",
        description="the selector (flashvlm.selectors.METHODS): flashvlm, saliency, diversity, uniform or random",
    )
    method_options: dict[str, Any] = Field(
        default_factory=dict, description="the selector's own options, e.g. {seed: 3} for random, {grid: [r, c]} for uniform"
    )

    @model_validator(mode="after")
    def _check_with_library(self) -> "SelectionOptions":
        # The library owns the ranges (e.g. top_p in [0, 1)); ask it now rather than in a model actor.
        SelectionConfig(**self.library_options())
        try:
            check_method_options(self.method, self.method_options)
        except ValueError as exc:
            raise FieldError("method_options", self.method_options, str(exc)) from None
        video_keywords = method_options(self.method, video=True)
        for key in ("split", "min_per_frame"):
            if getattr(self, key) is not None and key not in video_keywords:
                raise FieldError(key, getattr(self, key), f"method {self.method!r} takes no {key} (only flashvlm and saliency do)")
        if self.min_per_frame is not None:
            if self.budget is None:
                raise FieldError("min_per_frame", self.min_per_frame, "needs a budget (selection.budget is null: nothing is pruned)")
            if not takes_min_per_frame(self.split):
                raise FieldError(
                    "min_per_frame", self.min_per_frame,
                    f'applies to selection.split "global" only, not {self.split or "null"} '
                    f'(null: the library\'s default, "{DEFAULT_SPLIT}"); "per_frame" fixes every frame\'s share',
                )
        return self

    def check_min_per_frame(self, frames: int) -> None:
        """min_per_frame against the important share of the clip budget, for every frame count a clip
        of at most `frames` frames can have (short clips decode fewer; Qwen2.5-VL pairs frames)."""
        if self.min_per_frame is None or self.budget is None:
            return
        config = SelectionConfig(**self.library_options())
        # (the clip's important tokens, as select_video_tokens counts them) // frames, for every frame count
        limit = min(split_budget(self.budget * t, config)[0] // t for t in range(1, frames + 1))
        if self.min_per_frame > limit:
            raise FieldError(
                "min_per_frame", self.min_per_frame,
                f"at most {limit}: the important share (important_ratio {config.important_ratio}) of "
                f"selection.budget {self.budget} per frame, for clips of 1 to {frames} frames (sampling.frames)",
            )

    def library_options(self) -> dict[str, Any]:
        """The SelectionConfig fields this config sets (None fields are left to the library)."""
        names = {f.name for f in dataclasses.fields(SelectionConfig)}
        return {k: v for k, v in self.model_dump().items() if k in names and v is not None}


class OutputConfig(StrictModel):
    uri: Uri = Field(description="a local folder, file://, or s3://bucket/prefix; tables go to answers/, errors/, runs/")


class RayConfig(StrictModel):
    address: Optional[str] = Field(default=None, description="None: RAY_ADDRESS if set, else a new local Ray")
    num_cpus: Optional[int] = Field(default=None, ge=1, description="CPUs of a new local Ray (ignored when connecting)")
    dashboard: bool = Field(default=False, description="start the dashboard with a new local Ray")
    decode_actors: Union[int, tuple[int, int]] = Field(default=1, description="decode pool size, or [min, max]")
    decode_batch_size: int = Field(default=4, ge=1, description="videos per decode call")
    decode_num_cpus: float = Field(default=1.0, gt=0)
    decode_threads: int = Field(
        default=1, ge=0, description="decoder threads per decode actor (0: the decoder's choice, every core); "
        "1 keeps each actor to the CPU Ray reserved for it: scale decoding with decode_actors"
    )
    decode_timeout_s: Optional[float] = Field(
        default=120.0, gt=0, description="per video; a decoder that hangs is killed. None: no timeout, in-process"
    )
    model_actors: Union[int, tuple[int, int]] = Field(default=1, description="model pool size, or [min, max]")
    model_batch_size: int = Field(default=2, ge=1, description="videos per model call")
    model_num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: Optional[float] = Field(
        default=None, ge=0, description="GPUs per model actor; None: 1 when the cluster has GPUs and model.device is not cpu"
    )
    write_batch_size: int = Field(default=512, ge=1, description="rows per output file (at most)")
    write_num_cpus: float = Field(default=0.1, gt=0)
    log_to_driver: bool = Field(
        default=False, description="stream the actors' output (a failed video's traceback) to the job's console; "
        "it is always in Ray's log files (/tmp/ray/session_latest/logs)"
    )

    @field_validator("decode_actors", "model_actors")
    @classmethod
    def _pool(cls, value: Union[int, tuple[int, int]]) -> Union[int, tuple[int, int]]:
        lo, hi = (value, value) if isinstance(value, int) else value
        if lo < 1 or hi < lo:
            raise ValueError("must be an int >= 1 or [min, max] with 1 <= min <= max")
        return value


# --------------------------------------------------------------------------------------------------
# The whole file
# --------------------------------------------------------------------------------------------------


class RunPolicy(StrictModel):
    max_answer_failure_share: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="the run fails (and rolls back) when more than this share of the decoded videos fail in the "
        "answer stage: the model is broken, not the inputs (1.0: never)",
    )


# Selection fields added after answers were first written with a settings_id: while null (the library
# default) they are left out of the hash, so a scheduled incremental run does not redo every answer.
_HASHED_WHEN_SET = ("text_weighting",)


class JobConfig(StrictModel):
    run_id: Optional[str] = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="None: generated; set it to make a retried run overwrite its own files",
    )
    input: InputConfig
    incremental: bool = Field(
        default=False,
        description="answer only (video_uri, video_version, question) not yet answered under the same settings_id",
    )
    incremental_retry: Literal["transient", "all"] = Field(
        default="transient",
        description="incremental runs retry failed videos: transient = all but decode errors of the same version; all = every failure",
    )
    questions: list[str] = Field(default_factory=list, description="asked of every video")
    questions_file: Optional[Uri] = Field(
        default=None, description="Parquet or JSONL with columns video_uri, question (per-video questions)"
    )
    model: ModelConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    selection: SelectionOptions = Field(default_factory=SelectionOptions)
    output: OutputConfig
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to fsspec/s3fs for remote URIs (e.g. endpoint_url, key, secret); stored and logged masked",
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    run: RunPolicy = Field(default_factory=RunPolicy)

    @field_validator("questions")
    @classmethod
    def _non_empty_questions(cls, value: list[str]) -> list[str]:
        if any(not q.strip() for q in value):
            raise ValueError("questions must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _some_questions(self) -> "JobConfig":
        if not self.questions and not self.questions_file:
            raise ValueError("set `questions` (asked of every video) or `questions_file` (per-video), or both")
        try:
            self.selection.check_min_per_frame(self.sampling.frames)
        except FieldError as exc:
            raise FieldError(f"selection.{exc.key}", exc.value, str(exc)) from None
        return self

    def public_dict(self) -> dict[str, Any]:
        """The config as plain data with every storage option masked but known non-secret ones, safe
        to log and to store in runs/ (no other section holds a credential: unknown keys are refused)."""
        data = self.model_dump(mode="json")
        data["storage_options"] = redact_options(data["storage_options"])
        return data

    def settings_id(self) -> str:
        """A short hash of every setting that changes an answer: model, sampling and selection.

        Two runs with the same settings_id would give the same answers for the same video version, so
        (video_uri, video_version, question, settings_id) identifies an answer across runs.
        """
        selection = self.selection.model_dump(mode="json")
        for name in _HASHED_WHEN_SET:  # unset, they change no answer of earlier runs: keep those runs' ids
            if selection.get(name) is None:
                selection.pop(name, None)
        key = {
            "model": self.model.model_dump(mode="json", exclude={"device", "trust_remote_code"}),
            "sampling": self.sampling.hashed(),
            "selection": selection,
        }
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # org/name


def check_model_name(name: str) -> None:
    """model.name before Ray starts: an existing local directory, a name a package registers in the
    flashvlm.checkpoints entry-point group, or a hub id (org/name); else a one-line ConfigError naming the key.
    A name that is a path (absolute, ./, ../ or ~) is never taken for a hub id."""
    from importlib.metadata import entry_points

    from flashvlm.models import CHECKPOINTS_GROUP

    path = Path(name).expanduser()
    if path.is_dir() or name in entry_points(group=CHECKPOINTS_GROUP).names:
        return
    if path.exists():
        raise ConfigError(f"model.name: {name!r} is a file, not a checkpoint directory")
    if name.startswith(("/", "./", "../", "~")) or not HUB_ID.match(name) or "--" in name or ".." in name:
        raise ConfigError(
            f"model.name: {name!r} is not an existing local directory, a hub id (org/name) or a registered "
            f"checkpoint ({', '.join(sorted(entry_points(group=CHECKPOINTS_GROUP).names)) or 'none installed'})"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """'selection.budget=32' -> (['selection', 'budget'], 32); the value is parsed as a YAML scalar/flow."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key.path=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a copy of data; unknown keys are left for validation to report by name.

    A number indexes a list from 0: `stages.1.steps=100` sets the second stage's steps."""
    data = json.loads(json.dumps(data))  # a deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {'.'.join(path)}: {where} is not an item of a list of {len(node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is not a section")
            if i == len(path) - 1:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        cause = item.get("ctx", {}).get("error")
        library = re.search(r"SelectionConfig\.(\w+) (.*)", msg)  # a range the library checks: name its key
        if isinstance(cause, FieldError):  # a check of several fields: it names the one at fault
            key, msg = ".".join(k for k in (key, cause.key) if k), f"{cause} (got {cause.value!r})"
        elif library:
            key, msg = f"{key}.{library.group(1)}", library.group(2)
        elif item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict) \
                and item["loc"][:1] != ("storage_options",):  # never echo what may be a credential
            msg = f"{msg} (got {item['input']!r})"
        key = key or "<top level>"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "<dict>", schema: type[BaseModel] = None) -> Any:
    """`schema` (default JobConfig; or e.g. pipeline.evaluate.EvalConfig, shapes.training.TrainConfig)
    validated from plain data; ConfigError names each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config ({source}): the top level must be a mapping, got {type(data).__name__}")
    try:
        return (schema or JobConfig).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def job_parser(description: str, default_config: Union[str, Path], example: str) -> argparse.ArgumentParser:
    """The jobs' shared command line: `--config FILE` and repeatable `--set KEY=VALUE` (read by load_config);
    a job adds its own flags to it. example: an override shown in the help, e.g. "selection.budget=32"."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config), help=f"YAML config (default: {default_config})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable; values are YAML)",
    )
    return parser


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None, schema: type[BaseModel] = None) -> Any:
    """Read a YAML config, apply `key.path=value` overrides, validate as `schema` (default JobConfig)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"invalid config ({path}): the top level must be a mapping")
        data = apply_overrides(data, overrides)
    return validate_config(data, source=str(path), schema=schema)
