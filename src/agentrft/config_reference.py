"""The config reference, generated from the schemas themselves: every key of a run config and of an SFT config with
its type, default and meaning (``agentrft config reference`` writes docs/config.md; ``agentrft config
show-defaults`` prints a config with every default filled in). A test keeps docs/config.md equal to this output."""

from __future__ import annotations

import json
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agentrft.config import (
    CurriculumConfig,
    DistillConfig,
    DynamicSamplingConfig,
    GigpoConfig,
    Hyperparameters,
    LoraConfig,
    MonitorConfig,
    RolloutConfig,
    RunConfig,
    SamplerConfig,
    SegmentDpoConfig,
    TeacherConfig,
)
from agentrft.rl.sft import SFTConfig, SFTHyperparameters

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Run config (`agentrft train`, `eval`, `check`, `compare`, `validate`)", RunConfig, ""),
    ("`hyperparameters`", Hyperparameters, "hyperparameters."),
    ("`hyperparameters.lora` (null for full fine-tuning)", LoraConfig, "hyperparameters.lora."),
    ("`hyperparameters.gigpo` (with advantage: gigpo)", GigpoConfig, "hyperparameters.gigpo."),
    ("`hyperparameters.segment_dpo` (with loss: segment_dpo | mixed)", SegmentDpoConfig,
     "hyperparameters.segment_dpo."),
    ("`monitors`", MonitorConfig, "monitors."),
    ("`curriculum`", CurriculumConfig, "curriculum."),
    ("`dynamic_sampling`", DynamicSamplingConfig, "dynamic_sampling."),
    ("`sampler` (docs/gpu.md)", SamplerConfig, "sampler."),
    ("`rollout`", RolloutConfig, "rollout."),
    ("`distill` (`agentrft distill`; on-policy distillation in `train`)", DistillConfig, "distill."),
    ("`distill.teacher`", TeacherConfig, "distill.teacher."),
    ("SFT config (`agentrft sft --config`)", SFTConfig, ""),
    ("SFT `hyperparameters`", SFTHyperparameters, "hyperparameters."),
]
HIDDEN = {"base_dir"}  # set by the loader, not by users


def _type(ann: Any) -> str:
    text = ann.__name__ if isinstance(ann, type) else str(ann)
    for junk in ("typing.", "agentrft.config.", "Annotated[", "NoneType"):
        text = text.replace(junk, "" if junk != "NoneType" else "null")
    if typing.get_origin(ann) is list and "ToolEntry" in str(ann) or "Tag(" in text:
        return "list of tool entries"
    return text.replace("| null", "| null").strip()


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section below)"
        return json.dumps(value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default, default=str)


def reference_markdown() -> str:
    out = ["# Config reference", "",
           "Generated from the schemas (`agentrft config reference > docs/config.md`; a test keeps this page equal",
           "to the code). Paths are relative to the config file. Unknown keys are errors that name the nearest known",
           "key; `agentrft validate CONFIG` checks a whole config without loading a model.", ""]
    for title, model, prefix in SECTIONS:
        out += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if name in HIDDEN:
                continue
            desc = field.description or ""
            aliases = getattr(field.validation_alias, "choices", None)
            if aliases:
                desc = (desc + " " if desc else "") + f"(also read as {', '.join(a for a in aliases if a != name)})"
            cells = [f"`{prefix}{name}`", _type(field.annotation), _default(field), desc]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def defaults_yaml(kind: str = "train") -> str:
    """A config with every default filled in (required keys as placeholders)."""
    if kind == "sft":
        data: dict[str, Any] = {"model": "<HF id or model directory>", "demos_file": "<demos.jsonl>",
                                "output_dir": "<directory>", "hyperparameters": SFTHyperparameters().model_dump()}
    else:
        data = {"model": "<HF id or model directory>", "training_file": "<train.jsonl>", "validation_file": None,
                "environment": None, "tools": [], "grader": "<grader JSON object or a .json path>",
                "holdout_graders": {}, "monitors": MonitorConfig().model_dump(), "response_format": None,
                "hyperparameters": Hyperparameters().model_dump(), "curriculum": CurriculumConfig().model_dump(),
                "dynamic_sampling": DynamicSamplingConfig().model_dump(), "approval": {"policy": "allow"},
                "sampler": SamplerConfig().model_dump(exclude_none=True), "rollout": RolloutConfig().model_dump(),
                "store": None, "output_dir": "runs"}
    return yaml.safe_dump(data, sort_keys=False)
