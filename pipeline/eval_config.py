"""The evaluation's configuration: the main job's config plus `evaluation:` (budgets x settings), and
the grid of settings a run measures.

    from pipeline.eval_config import DEFAULT_CONFIG, grid_of, load_eval_config
    cfg = load_eval_config(DEFAULT_CONFIG, ["evaluation.budgets=[null, 64]"])
    grid_of(cfg)    # [{"method": "full", "budget": None, ...}, {"method": "flashvlm", "budget": 64, ...}, ...]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import Field, field_validator, model_validator

from flashvlm.selection import SelectionConfig
from flashvlm.selectors import METHODS
from flashvlm.video import SPLITS
from pipeline.config import FieldError, JobConfig, Method, StrictModel, check_method_options, load_config, takes_min_per_frame

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "eval_demo.yaml"
FULL = "full"  # the method name of the full-budget rows



# Selection keys a setting may set for itself, where its method takes them: how a clip's budget spreads
# (flashvlm and saliency), and the SelectionConfig fields a method takes as options (flashvlm: text_weighting).
SELECTION_KEYS = ("split", "min_per_frame", *dict.fromkeys(k for m in METHODS.values() for k in m.config_options))


class Setting(StrictModel):
    """One selector of the grid: a method and its options (split / min_per_frame for flashvlm and
    saliency, text_weighting for flashvlm, seed for random, grid for uniform)."""

    method: Method
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "Setting":
        from flashvlm.selectors import method_options

        try:
            self.checked_options()
        except ValueError as exc:
            raise FieldError("options", self.options, str(exc)) from None
        for key in SELECTION_KEYS:
            if key in self.options and key not in method_options(self.method, video=True):
                takers = [m for m in METHODS if key in method_options(m, video=True)]
                only = f"only {' and '.join(takers)} {'does' if len(takers) == 1 else 'do'}"
                raise FieldError("options", self.options, f"method {self.method!r} takes no {key} ({only})")
        split = self.options.get("split")
        if split is not None and split not in SPLITS:
            raise FieldError("options", self.options, f"split must be one of {list(SPLITS)}, got {split!r}")
        if self.options.get("min_per_frame") is not None and not takes_min_per_frame(split):
            raise FieldError("options", self.options, f'min_per_frame applies to split "global" only, not {split or "the default"}')
        config_options = {k: self.options[k] for k in METHODS[self.method].config_options if k in self.options}
        try:
            SelectionConfig(**config_options)  # the library's own check of their values
        except ValueError as exc:
            raise FieldError("options", self.options, str(exc)) from None
        return self

    def checked_options(self) -> dict[str, Any]:
        """The options as the adapter gets them: the selection keys as given, the method's own checked."""
        own = check_method_options(self.method, {k: v for k, v in self.options.items() if k not in SELECTION_KEYS})
        return {**{k: self.options[k] for k in SELECTION_KEYS if k in self.options}, **own}

    def label(self) -> str:
        return self.method + ("" if not self.options else " " + json.dumps(self.options, sort_keys=True))


class EvaluationOptions(StrictModel):
    budgets: list[Optional[int]] = Field(
        default=[None, 192, 128, 64, 32, 16], description="visual tokens per frame; null = all (the full-budget reference)"
    )
    settings: list[Setting] = Field(
        default_factory=lambda: [Setting(method=m) for m in ("flashvlm", "saliency", "diversity", "uniform", "random")],
        description="methods x options, each run at every budget",
    )
    max_videos: Optional[int] = Field(default=None, ge=1, description="evaluate the first N listed videos only")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: list[Optional[int]]) -> list[Optional[int]]:
        if not value or any(b is not None and b < 1 for b in value):
            raise ValueError("must be a non-empty list of ints >= 1 or null (all tokens)")
        return list(dict.fromkeys(value))


class EvalConfig(JobConfig):
    evaluation: EvaluationOptions = Field(default_factory=EvaluationOptions)


def load_eval_config(path: str | Path, overrides: Optional[list[str]] = None) -> EvalConfig:
    return load_config(path, overrides, schema=EvalConfig)  # type: ignore[return-value]


def setting_id(cfg: EvalConfig, method: str, options: Mapping[str, Any], budget: Optional[int]) -> str:
    """Like JobConfig.settings_id for one setting of the grid: same id, same answers."""
    key = {
        "model": cfg.model.model_dump(mode="json", exclude={"device", "trust_remote_code"}),
        "sampling": cfg.sampling.hashed(),
        "selection": {**cfg.selection.model_dump(mode="json"), "method": method, "method_options": dict(options), "budget": budget},
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def grid_of(cfg: EvalConfig) -> list[dict[str, Any]]:
    """The settings in run order: the full budget first, then budget x setting."""
    full = {"method": FULL, "options": {}, "budget": None, "settings_id": setting_id(cfg, FULL, {}, None)}
    out = [full]
    for budget in (b for b in cfg.evaluation.budgets if b is not None):
        for s in cfg.evaluation.settings:
            out.append({"method": s.method, "options": s.checked_options(), "budget": budget,
                        "settings_id": setting_id(cfg, s.method, s.options, budget)})
    return out

