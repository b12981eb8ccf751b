"""A ``POST /v1/fine_tuning/jobs`` body → what a worker runs: OpenAI's hyperparameters mapped onto ours.

Every mapping is documented in docs/openai-api.md; in short (``N`` = the model's parameter count):

* ``learning_rate = base(N, LoRA or full, RL or SFT) × learning_rate_multiplier`` (``auto`` = 1.0);
* ``compute_multiplier`` scales the rollouts per task: ``group_size = clamp(round(4 × cm), 2, 64)`` (``auto`` = 1);
* ``batch_size`` (tasks per step) ``auto`` = min(8, training rows); ``n_epochs`` ``auto`` = 1 (RL) / 3 (SFT);
  ``eval_interval`` ``auto`` = ceil(total steps / 5); ``eval_samples`` ``auto`` = 1;
* ``reasoning_effort`` other than ``auto``/``default``: not applied → a ``warn`` event; a wandb integration turns on
  the run's wandb logger where the package is installed (``wandb_loggers``), else a ``warn`` event;
* Agent RFT's ``tools`` and ``max_episode_steps`` and the ``endpoint`` grader map one to one;
* ``hyperparameters.agentrft``: any field of our own ``Hyperparameters`` (``agentrft.config``), applied last.

Every problem raises an :class:`APIError` 400 whose ``param`` names the field (``method.reinforcement.
hyperparameters.batch_size``) or, for a dataset, whose message names the file's line.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentrft.serve.errors import APIError

RL_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs", "eval_interval", "eval_samples",
           "compute_multiplier", "reasoning_effort", "agentrft")
SFT_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs", "agentrft")
REINFORCEMENT_KEYS = ("grader", "hyperparameters", "tools", "max_episode_steps", "response_format")
BODY_KEYS = ("model", "training_file", "validation_file", "suffix", "seed", "metadata", "integrations", "method",
             "hyperparameters")
REASONING = ("auto", "default", "low", "medium", "high")

# base learning rates by parameter count (upper bound, rate): LoRA RL, full RL, SFT (full)
BASE_LR = {
    "lora": [(1e8, 1e-3), (1e9, 2e-4), (1e10, 1e-4), (math.inf, 5e-5)],
    "full": [(1e8, 3e-4), (1e9, 1e-5), (1e10, 5e-6), (math.inf, 2e-6)],
    "sft": [(1e8, 1e-3), (1e9, 2e-5), (1e10, 1e-5), (math.inf, 5e-6)],
}
UNKNOWN_SIZE = 5e9  # a model whose size cannot be read here (an HF id not on disk) takes the 1-10B row

# our field → the request field to name when it is wrong
_PARAM_OF = {"batch_size": "batch_size", "n_epochs": "n_epochs", "learning_rate": "learning_rate_multiplier",
             "group_size": "compute_multiplier", "eval_interval": "eval_interval", "eval_samples": "eval_samples"}


@dataclass
class Source:
    """The weights a job starts from and what its checkpoints will be served as."""

    model: str  # as the client named it
    path: str  # weights to load (local dir or HF id)
    base_model: str  # the run's base (the served base for ft: models), so the server lists its checkpoints
    served_base: str  # the base's id in /v1/models
    full_checkpoint: bool = False  # starting from a full fine-tuned checkpoint (its RL must be full fine-tuning)


@dataclass
class JobSpec:
    method_type: str
    method: dict[str, Any]  # echoed back, with "auto" resolved
    hyperparameters: dict[str, Any]  # the job object's top-level (supervised-shaped) hyperparameters
    config: dict[str, Any]  # for the worker
    total_steps: int
    warnings: list[str] = field(default_factory=list)


def bad(msg: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, msg, param=param, code=code)


# ---------------------------------------------------------------------------------------------------------------
def parameter_count(path: str) -> int | None:
    """Parameters of a local model (safetensors headers: shapes only, no weights read); None if not local."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files:
        return None
    n = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for k, v in header.items():
            if k != "__metadata__":
                n += math.prod(v.get("shape") or [1])
    return n


def base_lr(kind: str, n_params: int | None) -> float:
    n = UNKNOWN_SIZE if n_params is None else n_params
    return next(lr for bound, lr in BASE_LR[kind] if n < bound)


def _number(hp: dict, key: str, prefix: str, *, integer: bool, lo: float | None = None) -> Any:
    v = hp.get(key, "auto")
    if v == "auto" or v is None:
        return "auto"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise bad(f"{prefix}.{key}: expected {'an integer' if integer else 'a number'} or \"auto\", got {v!r}",
                  f"{prefix}.{key}")
    if lo is not None and v < lo:
        raise bad(f"{prefix}.{key}: must be at least {lo:g}, got {v!r}", f"{prefix}.{key}")
    if not math.isfinite(float(v)) or v <= 0:
        raise bad(f"{prefix}.{key}: must be a positive number, got {v!r}", f"{prefix}.{key}")
    return int(v) if integer else float(v)


def _check_keys(obj: Any, allowed: tuple[str, ...], prefix: str) -> dict:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise bad(f"{prefix}: expected an object, got {type(obj).__name__}", prefix)
    for k in obj:
        if k not in allowed:
            raise bad(f"{prefix}: unknown field {k!r} (allowed: {', '.join(allowed)})", f"{prefix}.{k}")
    return obj


def wandb_loggers(integrations: list[dict[str, Any]], warnings: list[str]) -> list[str]:
    """The run's ``loggers`` for a job's ``integrations``: a wandb integration turns on the wandb sink
    (agentrft.loggers: offline under the run directory unless WANDB_API_KEY / WANDB_MODE is set where the worker
    runs) when the package is installed, else a warning says it is not honoured. What the sink does not take from
    the integration (project, entity, name, tags: it uses WANDB_PROJECT or the run name) is said in a warning."""
    import importlib.util

    if not any(it.get("type") == "wandb" for it in integrations):
        return []
    if importlib.util.find_spec("wandb") is None:
        warnings.append("the wandb integration is not honoured: the wandb package is not installed where this "
                        "server runs (pip install 'agentrft[wandb]'); every metric is in this job's metrics events "
                        "and result file")
        return []
    opts = sorted({k for it in integrations if it.get("type") == "wandb" for k in (it.get("wandb") or {})})
    warnings.append("wandb: metrics and trajectories go to W&B, offline under the run directory unless WANDB_API_KEY "
                    "or WANDB_MODE is set for the worker; the project is WANDB_PROJECT or the run name"
                    + (f" (not applied from the integration: {', '.join(opts)})" if opts else ""))
    return ["wandb"]


def _pydantic_param(e: ValidationError, prefix: str, our_prefix: str = "hyperparameters") -> tuple[str, str]:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    if loc and loc[0] == our_prefix:
        loc = loc[1:]
    name = loc[0] if loc else ""
    param = f"{prefix}.{_PARAM_OF[name]}" if name in _PARAM_OF else f"{prefix}.agentrft.{'.'.join(loc)}"
    return f"{param}: {err['msg']}", param


# ---------------------------------------------------------------------------------------------------------------
def check_body(body: dict) -> None:
    for k in body:
        if k not in BODY_KEYS:
            raise bad(f"Unknown parameter: {k!r}", k)
    for k in ("model", "training_file"):
        if not isinstance(body.get(k), str) or not body.get(k):
            raise bad(f"Missing required parameter: {k!r}", k)
    if body.get("validation_file") is not None and not isinstance(body["validation_file"], str):
        raise bad("validation_file must be a file id", "validation_file")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
        raise bad("suffix must be a string of at most 64 characters", "suffix")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31):
        raise bad(f"seed must be an integer in [0, 2147483647], got {seed!r}", "seed")
    md = body.get("metadata")
    if md is not None:
        if not isinstance(md, dict) or len(md) > 16:
            raise bad("metadata must be an object of at most 16 pairs", "metadata")
        for k, v in md.items():
            if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
                raise bad(f"metadata.{k}: keys are at most 64 characters, values strings of at most 512",
                          f"metadata.{k}")
    integ = body.get("integrations")
    if integ is not None:
        if not isinstance(integ, list):
            raise bad("integrations must be a list", "integrations")
        for i, it in enumerate(integ):
            if not isinstance(it, dict) or it.get("type") != "wandb" or not isinstance(it.get("wandb"), dict):
                raise bad(f"integrations.{i}: expected {{\"type\": \"wandb\", \"wandb\": {{\"project\": …}}}}",
                          f"integrations.{i}")


def method_of(body: dict) -> tuple[str, dict]:
    """``(type, the type's object)``; the deprecated top-level ``hyperparameters`` means supervised."""
    method = body.get("method")
    if method is None:
        return "supervised", {"hyperparameters": body.get("hyperparameters") or {}}
    if not isinstance(method, dict):
        raise bad("method must be an object", "method")
    mtype = method.get("type")
    if mtype not in ("supervised", "dpo", "reinforcement"):
        raise bad(f"method.type must be 'supervised', 'dpo' or 'reinforcement', got {mtype!r}", "method.type")
    if mtype == "dpo":
        raise bad("method.type 'dpo' is not supported by this server (supervised and reinforcement are)",
                  "method.type", code="unsupported")
    sub = method.get(mtype) or {}
    if not isinstance(sub, dict):
        raise bad(f"method.{mtype} must be an object", f"method.{mtype}")
    if body.get("hyperparameters") and not sub.get("hyperparameters"):
        sub = {**sub, "hyperparameters": body["hyperparameters"]}
    return mtype, sub


def _tools(raw: Any) -> list[dict]:
    if raw is None:
        return []
    p = "method.reinforcement.tools"
    if not isinstance(raw, list):
        raise bad(f"{p} must be a list of {{name, server_url, headers}}", p)
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise bad(f"{p}.{i}: expected an object {{name, server_url, headers}}", f"{p}.{i}")
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise bad(f"{p}.{i}.name is required", f"{p}.{i}.name")
        url = t.get("server_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise bad(f"{p}.{i}.server_url must be an http(s) URL, got {url!r}", f"{p}.{i}.server_url")
        headers = t.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise bad(f"{p}.{i}.headers must be an object of strings", f"{p}.{i}.headers")
        out.append({**t, "headers": headers})
    return out


def check_grader(spec: Any, param: str = "method.reinforcement.grader") -> None:
    from agentrft.graders.base import GraderSpecError, build_grader

    if not isinstance(spec, dict):
        raise bad(f"{param} is required: an OpenAI grader object", param)
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        raise bad(f"{param}: {e}", param, code="invalid_grader") from None
    g.close()


def load_rows(train: dict, valid: dict | None, *, allow_demos: bool, known_tools: set[str] | None) -> tuple[int, int]:
    """Validate the job's files as datasets; 400 naming the file's line."""
    from agentrft.serve.files import dataset_problems

    counts = []
    for f, param in ((train, "training_file"), (valid, "validation_file")):
        if f is None:
            counts.append(0)
            continue
        problem, n = dataset_problems(Path(f["path"]), f["filename"], allow_demos=allow_demos, known_tools=known_tools)
        if problem is not None:
            raise bad(f"{param} {f['id']} ({f['filename']}) is not a valid dataset for this job: {problem}", param,
                      code="invalid_file")
        if n == 0 and param == "training_file":
            raise bad(f"training_file {f['id']} ({f['filename']}) has no rows", param, code="invalid_file")
        counts.append(n)
    return counts[0], counts[1]


# ---------------------------------------------------------------------------------------------------------------
def reinforcement_spec(sub: dict, src: Source, train: dict, valid: dict | None, *, seed: int, store_url: str,
                       output_dir: str, name: str, integrations: list) -> JobSpec:
    from agentrft.config import Hyperparameters, RunConfig

    _check_keys(sub, REINFORCEMENT_KEYS, "method.reinforcement")
    check_grader(sub.get("grader"))
    tools = _tools(sub.get("tools"))
    pre = "method.reinforcement.hyperparameters"
    hp_in = _check_keys(sub.get("hyperparameters"), RL_KEYS, pre)
    ours_in = _check_keys(hp_in.get("agentrft"), tuple(Hyperparameters.model_fields), f"{pre}.agentrft")
    warnings: list[str] = []
    n_train, _ = load_rows(train, valid, allow_demos=False, known_tools={t["name"] for t in tools} or None)

    bs = _number(hp_in, "batch_size", pre, integer=True)
    ep = _number(hp_in, "n_epochs", pre, integer=True)
    lrm = _number(hp_in, "learning_rate_multiplier", pre, integer=False)
    cm = _number(hp_in, "compute_multiplier", pre, integer=False)
    ei = _number(hp_in, "eval_interval", pre, integer=True)
    es = _number(hp_in, "eval_samples", pre, integer=True)
    effort = hp_in.get("reasoning_effort", "auto")
    if effort not in REASONING:
        raise bad(f"{pre}.reasoning_effort must be one of {', '.join(REASONING)}, got {effort!r}",
                  f"{pre}.reasoning_effort")
    if effort not in ("auto", "default"):
        warnings.append(f"reasoning_effort={effort!r} is not applied: this model has no reasoning-effort control "
                        "(the per-turn token budget is hyperparameters.agentrft.max_new_tokens)")
    mes = sub.get("max_episode_steps")
    if mes is not None and (isinstance(mes, bool) or not isinstance(mes, int) or mes < 1):
        raise bad(f"method.reinforcement.max_episode_steps must be a positive integer, got {mes!r}",
                  "method.reinforcement.max_episode_steps")

    lora_default = Hyperparameters.model_fields["lora"].get_default(call_default_factory=True)
    lora = ours_in["lora"] if "lora" in ours_in else (None if src.full_checkpoint else lora_default)
    if src.full_checkpoint and lora is not None:
        raise bad(f"{pre}.agentrft.lora: {src.model} is a full fine-tuned checkpoint; continuing from it trains all "
                  "weights (set lora to null or leave it out)", f"{pre}.agentrft.lora")
    kind = "full" if lora is None else "lora"
    n_params = parameter_count(src.path)
    ours: dict[str, Any] = {
        "batch_size": min(8, n_train) if bs == "auto" else bs,
        "n_epochs": 1 if ep == "auto" else ep,
        "learning_rate": base_lr(kind, n_params) * (1.0 if lrm == "auto" else lrm),
        "group_size": max(2, min(64, round(4 * (1.0 if cm == "auto" else cm)))),
        "eval_samples": 1 if es == "auto" else es,
        "seed": seed,
        "lora": lora,
    }
    if mes is not None:
        ours["max_episode_steps"] = mes
    for k, v in ours_in.items():
        if k == "learning_rate" and lrm != "auto":
            warnings.append(f"learning_rate_multiplier={lrm} is not applied: agentrft.learning_rate={v} is set")
        if k == "seed" and v != seed:
            warnings.append(f"agentrft.seed={v} replaces the job's seed {seed}")
        ours[k] = v
    total = ours.get("max_steps") or ours["n_epochs"] * math.ceil(n_train / max(1, int(ours["batch_size"])))
    if "eval_interval" not in ours_in:
        ours["eval_interval"] = max(1, math.ceil(total / 5)) if ei == "auto" else ei
    try:
        hp = Hyperparameters.model_validate(ours)
    except ValidationError as e:
        msg, param = _pydantic_param(e, pre)
        raise bad(msg, param) from None
    total = hp.max_steps or hp.n_epochs * math.ceil(n_train / hp.batch_size)
    if not valid:
        warnings.append("no validation_file: no evaluations run, so the job's model is its final checkpoint")
    loggers = wandb_loggers(integrations, warnings)
    run_cfg = {
        "name": name, "model": src.path, "training_file": train["path"], "loggers": loggers,
        "validation_file": valid["path"] if valid else None, "tools": tools, "grader": sub["grader"],
        "response_format": sub.get("response_format"), "hyperparameters": hp.model_dump(),
        "store": store_url, "output_dir": output_dir, "base_dir": output_dir,
    }
    try:
        RunConfig.model_validate(run_cfg)
    except ValidationError as e:
        raise bad(f"method.reinforcement: {e.errors()[0]['msg']}", "method.reinforcement") from None
    resolved = {"batch_size": hp.batch_size, "learning_rate_multiplier": 1.0 if lrm == "auto" else lrm,
                "n_epochs": hp.n_epochs, "eval_interval": hp.eval_interval, "eval_samples": hp.eval_samples,
                "compute_multiplier": 1.0 if cm == "auto" else cm, "reasoning_effort": effort}
    if ours_in:
        resolved["agentrft"] = ours_in
    method = {"type": "reinforcement", "reinforcement": {"grader": sub["grader"], "hyperparameters": resolved}}
    if tools:
        method["reinforcement"]["tools"] = tools
    if mes is not None:
        method["reinforcement"]["max_episode_steps"] = mes
    return JobSpec("reinforcement", method,
                   {"batch_size": hp.batch_size, "learning_rate_multiplier": resolved["learning_rate_multiplier"],
                    "n_epochs": hp.n_epochs},
                   {"kind": "reinforcement", "run_config": run_cfg, "base_learning_rate": base_lr(kind, n_params),
                    "parameters": n_params}, total, warnings)


def supervised_spec(sub: dict, src: Source, train: dict, valid: dict | None, *, seed: int, output_dir: str,
                    integrations: list) -> JobSpec:
    from agentrft.rl.sft import SFTHyperparameters

    _check_keys(sub, ("hyperparameters",), "method.supervised")
    pre = "method.supervised.hyperparameters"
    hp_in = _check_keys(sub.get("hyperparameters"), SFT_KEYS, pre)
    ours_in = _check_keys(hp_in.get("agentrft"), tuple(SFTHyperparameters.model_fields), f"{pre}.agentrft")
    n_train, _ = load_rows(train, valid, allow_demos=True, known_tools=None)
    bs = _number(hp_in, "batch_size", pre, integer=True)
    ep = _number(hp_in, "n_epochs", pre, integer=True)
    lrm = _number(hp_in, "learning_rate_multiplier", pre, integer=False)
    warnings: list[str] = []
    n_params = parameter_count(src.path)
    ours: dict[str, Any] = {"n_epochs": 3 if ep == "auto" else ep, "batch_size": min(16, n_train) if bs == "auto" else bs,
                            "learning_rate": base_lr("sft", n_params) * (1.0 if lrm == "auto" else lrm), "seed": seed}
    ours["micro_batch_size"] = ours["batch_size"]
    ours.update(ours_in)
    if ours.get("lora") is not None:
        raise bad(f"{pre}.agentrft.lora: supervised jobs here write full models (the adapter is merged); leave "
                  "lora out", f"{pre}.agentrft.lora")
    try:
        hp = SFTHyperparameters.model_validate(ours)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        key = {"n_epochs": "n_epochs", "batch_size": "batch_size", "learning_rate": "learning_rate_multiplier"}.get(name)
        param = f"{pre}.{key}" if key else f"{pre}.agentrft.{name}"
        raise bad(f"{param}: {err['msg']}", param) from None
    if valid:
        warnings.append("validation_file is checked but not scored by supervised jobs here (no validation loss)")
    for it in integrations:
        if it.get("type") == "wandb":
            warnings.append("the wandb integration is not honoured by this server; every metric is in this job's "
                            "metrics events and result file")
    total = hp.n_epochs * max(1, -(-n_train // hp.batch_size))
    resolved = {"batch_size": hp.batch_size, "learning_rate_multiplier": 1.0 if lrm == "auto" else lrm,
                "n_epochs": hp.n_epochs}
    method = {"type": "supervised", "supervised": {"hyperparameters": {**resolved, **({"agentrft": ours_in}
                                                                                      if ours_in else {})}}}
    return JobSpec("supervised", method, resolved,
                   {"kind": "supervised", "model_path": src.path, "demos_file": train["path"],
                    "params": hp.model_dump(), "output_dir": output_dir, "parameters": n_params,
                    "base_learning_rate": base_lr("sft", n_params)}, total, warnings)
