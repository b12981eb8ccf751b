"""The run config: one YAML file shaped like an OpenAI RFT job, validated with pydantic.

Example (see ``examples/``)::

    model: ./models/tiny            # HF id or local path
    training_file: data/train.jsonl  # relative paths resolve against the config file's directory
    validation_file: data/valid.jsonl
    tools:
      - agentrft.environments.repo_locator.tools:*       # Python tools by module:function (or module:*)
      - {name: get_order, server_url: http://127.0.0.1:8000/}   # Agent RFT HTTP tools
    grader: {type: string_check, name: exact, input: "{{sample.output_text}}", reference: "{{item.answer}}",
             operation: eq}       # inline grader JSON, or a path to a .json file
    hyperparameters: {n_epochs: 2, batch_size: 4, group_size: 4, learning_rate: 1e-3, ...}
    store: sqlite:///runs/agentrft.db
    output_dir: runs

Errors name the field path (``hyperparameters.group_size: Input should be greater than or equal to 2``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

import agentrft.bounded as bounded


class ConfigError(ValueError):
    """The config is invalid; ``str()`` lists every problem with its field path."""


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` in YAML (or Infinity/NaN in JSON) are rejected naming the field
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LoraConfig(_Strict):
    r: int = Field(16, ge=1, le=65_536, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | str = Field("all-linear", description="modules that get adapters (peft syntax)")


class GigpoConfig(_Strict):
    """Step-level credit (GiGPO): turns of one task's group that act from the same state are compared by their
    discounted return (agentrft.rl.step_credit)."""

    step_coef: float = Field(1.0, ge=0, description="weight ω of the step advantage added to the episode advantage")
    gamma: float = Field(0.95, gt=0, le=1, description="discount γ: a turn's return is γ^(turns after it) × reward")
    state: Literal["last", "history"] = Field("last", description="what makes two turns' states equal: the "
                                              "previous turn's tool calls and observations (last) or every "
                                              "earlier turn's (history)")
    normalize: Literal["std", "none"] = Field("std", description="divide step advantages by the step group's "
                                              "standard deviation (std) or only subtract its mean (none)")


class SegmentDpoConfig(_Strict):
    """Preference pairs from a group's trajectories that share a prefix and diverge at a turn
    (agentrft.rl.segment_dpo)."""

    beta: float = Field(0.1, gt=0, description="DPO temperature β")
    mix_coef: float = Field(1.0, gt=0, description="loss: mixed — weight λ of the DPO term beside the GRPO term")
    min_reward_gap: float = Field(0.1, gt=0, description="a pair needs chosen reward − rejected reward ≥ this")
    max_pairs_per_group: int = Field(8, ge=1, le=1_000_000, description="pairs kept per group: the longest shared "
                                     "prefix first, then the largest reward gap")
    segment_turns: int | None = Field(None, ge=1, le=100_000, description="turns in a segment from the divergence "
                                      "turn on (null: to the end of the trajectory)")


class Hyperparameters(_Strict):
    n_epochs: int = Field(1, ge=1, le=50, description="passes over the training rows (unless max_steps)")
    max_steps: int | None = Field(None, ge=1, le=10_000_000, description="stop after this many steps (overrides n_epochs)")
    batch_size: int = Field(4, ge=1, le=256, description="tasks (dataset rows) per step")
    group_size: int = Field(4, ge=2, le=1024, description="rollouts per task (G)")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clip per optimizer step")
    micro_batch_size: int = Field(8, ge=1, le=65_536, description="trajectories per forward/backward pass")
    mini_batches: int = Field(1, ge=1, le=1024, description="optimizer steps per RL step (>1 makes clipping matter)")
    eval_interval: int = Field(5, ge=1, le=10_000_000, description="validation eval every this many steps (and at step 0 and the end)")
    eval_samples: int = Field(1, ge=1, le=1024, description="rollouts per validation row")
    eval_rows: int | None = Field(None, ge=1, le=10_000_000, description="evaluate on the first this many validation "
                                  "rows only (the same rows at every eval, so checkpoints stay paired); null = all")
    max_episode_steps: int = Field(8, ge=1, le=100_000, description="tool-call budget per rollout")
    max_turns: int = Field(8, ge=1, le=100_000, description="assistant turns per rollout")
    max_new_tokens: int = Field(128, ge=1, le=10_000_000, description="tokens per assistant turn")
    max_context_tokens: int = Field(2048, ge=16, le=10_000_000, description="a rollout ends (context_limit) when its ids reach this")
    temperature: float = Field(1.0, gt=0, description="sampling temperature for training rollouts (the learner uses it too)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    eval_temperature: float | None = Field(None, gt=0, description="defaults to temperature")
    advantage: str = Field("grpo", pattern=r"^(grpo|dr_grpo|rloo|gigpo|[\w.]+:\w+)$",
                           description="grpo | dr_grpo | rloo | gigpo (grpo plus step-level credit, see gigpo) | "
                           "module:function (agentrft.rl.advantages)")
    gigpo: GigpoConfig = Field(default_factory=lambda: GigpoConfig(), description="step-level credit when "
                               "advantage: gigpo (agentrft.rl.step_credit)")
    loss: str = Field("token", pattern=r"^(token|sequence|segment_dpo|mixed|[\w.]+:\w+)$",
                      description="token | sequence | segment_dpo | mixed (token GRPO plus segment DPO, see "
                      "segment_dpo) | module:function returning a PolicyLoss (agentrft.rl.loss)")
    segment_dpo: SegmentDpoConfig = Field(default_factory=lambda: SegmentDpoConfig(), description="preference "
                                          "pairs over diverging segments when loss: segment_dpo | mixed "
                                          "(agentrft.rl.segment_dpo)")
    clip_eps_low: float = Field(0.2, ge=0, description="ratio clip below 1 (1 - eps_low)")
    clip_eps_high: float = Field(0.28, ge=0, description="ratio clip above 1 (1 + eps_high; DAPO's clip-higher)")
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL to the reference (LoRA: adapter off)")
    turn_credit_coef: float = Field(0.0, ge=0, description="weight of per-turn process-grader advantages")
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="null for full fine-tuning")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds data order, rollouts and init")
    keep_checkpoints: int = Field(3, ge=1, le=10_000, description="eval checkpoints kept (best by validation reward)")
    save_interval_s: float = Field(60.0, ge=0, le=10_000_000, description="seconds between resume checkpoints (`latest`); also "
                                   "saved after each eval, at the end and on pause; 0 = every step")
    tool_timeout_s: float = Field(30.0, gt=0, le=86_400, description="per tool call, unless the tool sets its own")
    tool_workers: int = Field(16, ge=1, le=4096, description="threads running tool calls")
    max_batch_trajectories: int = Field(64, ge=1, le=65_536, description="trajectories decoded together")
    max_signal_free_steps: int = Field(3, ge=0, le=1_000_000, description="stop the run as failed after this many "
                                       "consecutive train steps with no trainable signal (every group zero-variance "
                                       "or every rollout dropped); 0 = never")
    compile_learner: bool = Field(False, description="torch.compile the training forward: 20-70 s of compiling "
                                  "at the start, then faster updates for small models (needs a C++ compiler)")


class PythonToolConfig(_Strict):
    """In-process Python tools: ``module:function`` (one ``@tool`` function) or ``module:*`` (all of a module's).
    A plain string in ``tools`` is this kind."""

    type: Literal["python"] = "python"
    ref: str = Field(pattern=r"^[\w.]+:(\*|[\w.]+)$")


class HttpToolConfig(BaseModel):
    """An Agent RFT HTTP tool, exactly OpenAI's ``{name, server_url, headers}`` (``server_url`` is the URL each
    call is POSTed to) plus our optional keys; the HTTP backend validates each field (agentrft.tools.http)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["http"] = "http"
    name: str
    server_url: str
    headers: dict[str, str] = Field(default_factory=dict)


class McpToolConfig(BaseModel):
    """The tools of one MCP server; the MCP backend validates the other keys (agentrft.tools.mcp)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["mcp"] = "mcp"
    mcp: str | dict[str, Any] = Field(description="a command line (stdio) or an http(s) URL (streamable HTTP)")


class CustomToolConfig(BaseModel):
    """Tools from a backend of your own: ``type`` names its factory as ``module:function`` (docs/extending.md);
    the other keys are the factory's."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(pattern=r"^[\w.]+:[\w.]+$")


def _tool_kind(entry: Any) -> str:
    """Which config model a ``tools`` entry is: an explicit ``type``, else the shape (a string is a Python
    reference; ``server_url`` is the Agent RFT HTTP shape; ``mcp`` an MCP server)."""
    if isinstance(entry, str):
        return "python"
    if isinstance(entry, dict):
        kind = entry.get("type")
        if kind is None:
            return "http" if "server_url" in entry else "mcp" if "mcp" in entry else "unknown"
        return kind if kind in ("python", "http", "mcp") else "custom"
    return getattr(entry, "type", "unknown")


def _tool_entry(entry: Any) -> Any:
    return {"type": "python", "ref": entry} if isinstance(entry, str) else entry


ToolEntry = Annotated[
    Annotated[PythonToolConfig, Tag("python")] | Annotated[HttpToolConfig, Tag("http")]
    | Annotated[McpToolConfig, Tag("mcp")] | Annotated[CustomToolConfig, Tag("custom")],
    Discriminator(_tool_kind, custom_error_type="tool_kind",
                  custom_error_message="expected 'module:function' / 'module:*', {name, server_url, headers}, "
                  "{mcp: ...} or {type: module:factory, ...}"),
    BeforeValidator(_tool_entry),
]


class ApprovalConfig(_Strict):
    policy: str = Field("allow", description="allow | deny | module:function(call, item, messages) -> bool")


class MonitorConfig(_Strict):
    """Reward-hacking and collapse monitor thresholds (see agentrft.evals.monitors for each signal's formula).
    Defaults follow the reference guidance: gap > 0.1, rank correlation < 0.8, length growth >= 3x, errors > 0."""

    enabled: bool = True
    train_valid_gap: float = Field(0.1, ge=0, description="alert when (train - valid) reward grew by more than this")
    holdout_gap: float = Field(0.1, ge=0, description="alert when the reward rose this much more than a holdout")
    holdout_rank_correlation: float = Field(0.8, ge=-1, le=1, description="alert when Spearman rho falls below")
    length_growth: float = Field(3.0, gt=1, description="alert when completion tokens grow by this factor")
    tool_call_growth: float = Field(3.0, gt=1, description="alert when tool calls per trajectory grow this much")
    grader_error_rate: float = Field(0.0, ge=0, description="alert when grader errors per trajectory exceed this")
    repeated_bigram_increase: float = Field(0.3, ge=0, le=1, description="alert when the repeated tool-name bigram "
                                            "fraction rose this much above its first value")
    entropy_collapse: float = Field(0.2, ge=0, le=1, description="alert when entropy < this x its first value")
    min_trajectories: int = Field(8, ge=2, description="fewest trajectories for a rank correlation")
    train_window: int = Field(3, ge=1, description="train steps averaged for the train-valid gap")
    pause_on_alert: bool | list[str] = Field(False, description="pause the run on any alert (true) or on these signals")


class SamplerConfig(_Strict):
    """Where rollouts are sampled (agentrft.policy.remote_sampler): ``local`` = the learner's own model in this
    process; ``remote`` = an OpenAI/vLLM-compatible server's token-id ``/v1/completions``, with the learner's weights
    pushed to it after every update (``weight_sync``). docs/gpu.md has the vLLM recipe."""

    type: Literal["local", "remote"] = Field("local", description="local (in-process) | remote (a server)")
    base_url: str | None = Field(None, description="remote: the server's OpenAI base URL, e.g. "
                                 "http://127.0.0.1:8000/v1")
    api_key: str | None = Field(None, description="remote: Bearer token ('${VAR}' reads the environment); never "
                                "recorded")
    model: str | None = Field(None, description="remote: the base model's id on the server (default: the first "
                              "entry of its /v1/models)")
    command: str | list[str] | None = Field(None, description="remote: start the engine here — a command the trainer "
                                            "runs, waits on until <base_url>/../health answers, and stops at the end; "
                                            "null = connect to a running one")
    startup_timeout_s: float = Field(600.0, gt=0, le=86_400, description="remote: how long command may take to "
                                     "become healthy")
    request_timeout_s: float = Field(300.0, gt=0, le=86_400, description="remote: per completion request")
    max_concurrency: int = Field(64, ge=1, le=4096, description="remote: completion requests in flight")
    retries: int = Field(3, ge=0, le=100, description="remote: retries of a request on a transport error, 429 "
                         "or 5xx")
    seed_mode: Literal["offset", "mixed"] = Field("offset", description="remote: offset = send seed + seed_offset "
                                                  "(agentrft serve: token-identical to the in-process sampler); "
                                                  "mixed = one seed per turn (vLLM, which has no offset)")
    weight_sync: Literal["lora", "full", "none"] = Field("lora", description="remote: lora = hot-load the adapter "
                                                         "after each update under a new name; full = full "
                                                         "fine-tuning, the whole model via agentrft serve's "
                                                         "/pause, /update_weights, /resume (not vLLM's); none = "
                                                         "never (the server samples its weights as loaded)")
    keep_adapters: int = Field(2, ge=1, le=1000, description="remote: adapters left loaded on the server (older "
                               "ones are unloaded)")
    check_mismatch: bool = Field(True, description="remote: per step, recompute the learner's log-probs of the "
                                 "sampled tokens (one extra forward) for the sampler-vs-learner KL monitor")
    mismatch_kl_alert: float = Field(1e-3, gt=0, description="alert (signal sampler_mismatch_kl) when the mean KL "
                                     "between sampler and learner at the sampled tokens exceeds this")

    @model_validator(mode="after")
    def _remote_keys(self) -> "SamplerConfig":
        if self.type == "remote" and not self.base_url:
            raise ValueError("type: remote needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.type == "local":
            given = [k for k in ("base_url", "api_key", "model", "command") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for type: remote")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        return self


class RolloutConfig(_Strict):
    """How rollouts are scheduled against updates (agentrft.rl.async_rollouts)."""

    max_staleness: int = Field(0, ge=0, le=64, description="0 = synchronous (each step samples from the weights of "
                               "the step before); k > 0 = async off-policy: the rollouts of the next steps are "
                               "sampled while the current step trains, from weights at most k updates old (needs "
                               "sampler.type: remote)")
    tis_cap: float | None = Field(None, ge=1, description="truncated importance sampling (async, token loss): the "
                                  "clipped ratio is taken against the learner's log-probs before the update and each "
                                  "token's advantage weighted by min(p_learner / p_sampler, tis_cap); null = off (the "
                                  "ratio is against the sampler's log-probs)")
    backend: Literal["local", "ray"] = Field("local", description="local = agent loops in this process; ray = in "
                                             "Ray actors (tools run there; needs sampler.type: remote and "
                                             "agentrft[ray])")
    workers: int = Field(2, ge=1, le=4096, description="ray: rollout actors")
    worker_concurrency: int = Field(16, ge=1, le=4096, description="ray: rollouts one actor runs at once")
    ray_address: str | None = Field(None, description="ray: a cluster to join (default: start a local one)")
class TeacherConfig(_Strict):
    """An OpenAI-compatible endpoint whose model is distilled into the student (``agentrft serve`` is one)."""

    base_url: str = Field(pattern=r"^https?://", description="the endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(min_length=1, description="the teacher's model name on that endpoint")
    api_key_env: str | None = Field(None, description="environment variable holding its API key (the key itself "
                                    "is never written to the config, store or logs)")
    timeout_s: float = Field(120.0, gt=0, le=86_400, description="per request")
    price_prompt_per_million: float | None = Field(None, ge=0, description="price of 1M prompt tokens; with the "
                                                   "completion price, each trajectory's cost is recorded")
    price_completion_per_million: float | None = Field(None, ge=0, description="price of 1M completion tokens")


class DistillConfig(_Strict):
    """Distillation from a teacher endpoint (agentrft.rl.distill): ``agentrft distill`` (the teacher as the agent,
    its passing trajectories as SFT demos) and, with ``on_policy``, on-policy distillation in ``agentrft train``."""

    teacher: TeacherConfig | None = Field(None, description="the teacher endpoint (agentrft distill's --teacher and "
                                          "--teacher-model override it)")
    samples_per_row: int = Field(1, ge=1, le=1024, description="teacher rollouts per training row")
    temperature: float = Field(0.7, ge=0, le=2, description="the teacher's sampling temperature (0 = greedy)")
    min_reward: float | None = Field(None, description="keep teacher trajectories with at least this reward; null = "
                                     "those the grader marks passed (reward >= 1 where it sets no pass threshold)")
    workers: int = Field(8, ge=1, le=1024, description="teacher rollouts in flight at once")
    sft_epochs: int = Field(3, ge=1, le=1000, description="SFT passes over the kept trajectories")
    sft_batch_size: int = Field(16, ge=1, le=65_536, description="kept trajectories per SFT step")
    sft_learning_rate: float = Field(1e-3, gt=0, description="SFT learning rate")
    on_policy: bool = Field(False, description="train: the student samples, the teacher's log-probs of the student's "
                            "tokens give a per-token reverse-KL advantage (needs the teacher's tokenizer)")
    kl_coef: float = Field(1.0, gt=0, description="on_policy: weight of the per-token advantage log p_T - log p_S")
    reward_coef: float = Field(0.0, ge=0, description="on_policy: weight of the graders' group advantage added to "
                               "it (0 = pure distillation)")
class CurriculumConfig(_Strict):
    """Which training rows a step samples (agentrft.rl.curriculum). Off: the shuffled epoch order."""

    enabled: bool = Field(False, description="sample rows by their headroom instead of the epoch order")
    window: int = Field(4, ge=1, le=10_000, description="recent groups per row behind its pass rate and variance")
    retire_after: int = Field(2, ge=1, le=10_000, description="a row whose last this many groups all passed "
                              "(solved) or all failed (unsolved), every sample scoring the same, leaves the pool")
    recheck_every: int = Field(10, ge=1, le=10_000_000, description="steps a retired row stays out before it comes "
                               "back for one check group")
    min_weight: float = Field(0.05, ge=0, le=1, description="sampling weight of an active row with no measured "
                              "headroom (an unseen row weighs 1)")
    weakness_key: str | None = Field(None, description="a row field (e.g. task) whose values group rows; rows whose "
                                     "value fails more at the last eval are over-sampled")
    weakness_weight: float = Field(1.0, ge=0, description="a row's weight × (1 + this × its group's eval fail rate)")


class DynamicSamplingConfig(_Strict):
    """DAPO-style dynamic sampling: zero-variance groups (no signal) are replaced by groups of new rows."""

    enabled: bool = Field(False, description="replace zero-variance groups within max_extra_groups")
    max_extra_groups: int = Field(8, ge=1, le=100_000, description="extra groups rolled out per step at most")
    max_rounds: int = Field(2, ge=1, le=100, description="refill rounds per step at most")


class RunConfig(_Strict):
    name: str | None = Field(None, description="the run's name in the store (default: the training file's stem)")
    model: str = Field(description="HF id, model directory or agentrft checkpoint directory")
    training_file: str = Field(description="OpenAI RFT JSONL: messages, optional tools, reference keys")
    validation_file: str | None = Field(None, description="rows evaluated every eval_interval steps")
    environment: str | None = Field(None, description="a bundled environment or module:function returning one; "
                                    "supplies tools, grader and holdout_graders the config leaves out")
    tools: list[ToolEntry] = Field(default_factory=list, description="'module:function' / 'module:*' (Python), "
                                   "{name, server_url, headers} (Agent RFT HTTP: server_url is the exact URL each "
                                   "call is POSTed to), {mcp: command or URL}, {type: module:factory, ...}")
    grader: dict[str, Any] = Field(description="OpenAI grader JSON (inline, or a path to a .json file); its score "
                                   "is the reward")
    holdout_graders: dict[str, dict[str, Any]] = Field(default_factory=dict, description="name -> grader JSON, "
                                                       "recorded beside the reward, never part of it")
    monitors: MonitorConfig = Field(default_factory=MonitorConfig)
    response_format: dict[str, Any] | None = Field(None, description="OpenAI response_format; graders then see "
                                                   "sample.output_json")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    distill: DistillConfig | None = Field(None, description="distillation from a teacher endpoint (agentrft distill; "
                                          "on-policy distillation in train with distill.on_policy)")
    store: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<output_dir>/agentrft.db")
    loggers: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=list, description="metric sinks beside the store (agentrft.loggers); offline by default")
    output_dir: str = Field("runs", description="run directories (checkpoints, config.json) and the default store")
    base_dir: str = Field(".", description="set by the loader: the config file's directory")

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        """Fill ``tools``/``grader``/``holdout_graders`` from the named environment where the config has none. The
        environment is resolved like every user reference (agentrft.refs), so this layer imports no environment."""
        if not isinstance(data, dict) or not data.get("environment"):
            return data
        try:
            env = load_environment_ref(str(data["environment"]))
        except ValueError as e:
            raise ValueError(f"environment: {e}") from None
        data = dict(data)
        if not data.get("tools"):
            data["tools"] = list(env.tool_refs)
        data.setdefault("grader", env.grader)
        if not data.get("holdout_graders"):
            data["holdout_graders"] = dict(env.holdout_graders)
        return data

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if not self.grader.get("type"):
            raise ValueError("grader.type is required")
        if self.distill is not None and self.distill.on_policy and self.distill.teacher is None:
            raise ValueError("distill.teacher is required when distill.on_policy is true ({base_url, model})")
        return self

    @model_validator(mode="after")
    def _async_needs_remote(self) -> "RunConfig":
        if self.rollout.max_staleness and (self.curriculum.enabled or self.dynamic_sampling.enabled):
            raise ValueError("rollout.max_staleness > 0 cannot be combined with curriculum / dynamic_sampling (the "
                             "async producer takes rows in epoch order, ahead of the pool's updates)")
        if self.rollout.max_staleness and self.sampler.type != "remote":
            raise ValueError("rollout.max_staleness > 0 needs sampler.type: remote (the in-process sampler is the "
                             "learner's own model, which the update changes under it)")
        if self.sampler.type == "remote":
            lora = self.hyperparameters.lora is not None
            if self.sampler.weight_sync == "lora" and not lora:
                raise ValueError("sampler.weight_sync: lora needs a LoRA learner; full fine-tuning (hyperparameters."
                                 "lora: null) uses weight_sync: full")
            if self.sampler.weight_sync == "full" and lora:
                raise ValueError("sampler.weight_sync: full is for full fine-tuning (hyperparameters.lora: null); a "
                                 "LoRA learner uses weight_sync: lora")
        if self.rollout.backend == "ray" and self.sampler.type != "remote":
            raise ValueError("rollout.backend: ray needs sampler.type: remote (the actors sample through the engine)")
        if self.rollout.tis_cap is not None and self.hyperparameters.loss != "token":
            raise ValueError("rollout.tis_cap weights each token's advantage: it needs hyperparameters.loss: token")
        return self

    # ---- resolved paths --------------------------------------------------------------------------
    def path(self, p: str | None) -> Path | None:
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (Path(self.base_dir) / q)

    @property
    def output_path(self) -> Path:
        return self.path(self.output_dir)  # type: ignore[return-value]

    @property
    def store_url(self) -> str:
        if self.store:
            if self.store.startswith("sqlite:///") and not self.store.startswith("sqlite:////"):
                rel = self.store[len("sqlite:///") :]
                return "sqlite:///" + str(self.path(rel))
            return self.store
        return "sqlite:///" + str(self.output_path / "agentrft.db")

    @property
    def model_path(self) -> str:
        """A local path relative to the config if it exists there, else the string as given (HF id)."""
        local = self.path(self.model)
        return str(local) if local is not None and local.exists() else self.model


def load_environment_ref(name: str) -> Any:
    """The environment ``name`` names: a bundled one (``agentrft.environments.<name>:load_environment``) or a
    ``module:function`` reference returning one."""
    import importlib.util

    from agentrft.refs import load_callable

    if ":" not in name:
        if not name.isidentifier() or importlib.util.find_spec(f"agentrft.environments.{name}") is None:
            raise ValueError(f"unknown environment {name!r} (a bundled name such as repo_locator or support_desk, "
                             "or 'module:function')")
        name = f"agentrft.environments.{name}:load_environment"
    env = load_callable(name)()
    for attr in ("tool_refs", "grader", "holdout_graders"):
        if not hasattr(env, attr):
            raise ValueError(f"environment {name!r} returned {type(env).__name__}, which has no {attr!r}")
    return env


def _loc_part(x: Any) -> str:
    """A field path part as written, or quoted when it is empty or holds spaces or control characters (so each
    problem stays on one line that starts with the file)."""
    t = str(x)
    return t if t and t.isprintable() and not any(c.isspace() for c in t) else json.dumps(t)


def _shown(x: Any) -> str:
    """A user-given value in a message: as written, or JSON-quoted when it holds a character that would break the
    message's one line (a newline, a record separator: anything not printable)."""
    t = str(x)
    return t if t.isprintable() else json.dumps(t)


def _format_errors(e: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem, ``source: field.path: message``; an unknown key also gets the nearest known key and
    the allowed keys at its level (``model`` is the schema that was validated)."""
    lines = []
    for err in e.errors():
        loc = ".".join(_loc_part(x) for x in err["loc"]
                       if not str(x).startswith(("function-", "str", "HttpToolConfig"))
                       and str(x) not in ("python", "http", "mcp", "custom"))
        msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
        if err.get("type") == "extra_forbidden" and model is not None:
            msg += _key_hint(model, [x for x in err["loc"] if isinstance(x, str)])
        lines.append(f"{source}: {msg}" if not loc and msg.startswith("environment: ") else
                     f"{source}: {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def _key_hint(model: type[BaseModel], path: list[str]) -> str:
    """`` (did you mean 'n_epochs'? allowed: …)`` for an unknown key at ``path`` under ``model``."""
    import difflib
    import typing

    cls: Any = model
    for name in path[:-1]:
        field = getattr(cls, "model_fields", {}).get(name)
        if field is None:
            return ""
        ann = field.annotation
        cands = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cands:
            return ""
        cls = cands[0]
    allowed = sorted(k for k in getattr(cls, "model_fields", {}) if k != "base_dir")
    if not allowed:
        return ""
    near = difflib.get_close_matches(path[-1], allowed, n=1, cutoff=0.6)
    return (f" (did you mean {near[0]!r}? " if near else " (") + f"allowed: {', '.join(allowed)})"


def parse_config(data: Any, *, base_dir: str | Path = ".", source: str = "<config>") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    data.setdefault("base_dir", str(base_dir))
    grader = data.get("grader")
    if isinstance(grader, str):
        gpath = Path(grader) if Path(grader).is_absolute() else Path(base_dir) / grader
        shown = _shown(gpath)
        try:
            data["grader"] = bounded.loads_json(bounded.read_text(gpath))
        except OSError as e:
            raise ConfigError(f"{source}: grader: cannot read {shown}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: grader: {shown}:{e.lineno}: not valid JSON: {e.msg}") from None
        except bounded.BoundsError as e:  # too large, too deep, not UTF-8
            raise ConfigError(f"{source}: grader: {shown}: {e}") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, RunConfig)) from None


def read_yaml(path: str | Path, error: type[Exception] = None) -> Any:  # type: ignore[assignment]
    """Read a YAML file; unreadable or invalid YAML raises ``error`` (default ConfigError) naming ``file:line``; so
    does a file over 16 MB, one that is not UTF-8, or one whose aliases expand past 200,000 values
    (:mod:`agentrft.bounded`)."""
    error = error or ConfigError
    path = Path(path)
    try:
        text = bounded.read_text(path)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    except bounded.BoundsError as e:  # too large or not UTF-8
        raise error(f"{path}: {e}") from None
    try:
        return bounded.load_yaml(text)  # refuses alias bombs and deep nesting before building anything
    except bounded.BoundsError as e:
        raise error(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        if mark is None and isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
            where = f"{path}:{text.count(chr(10), 0, e.position) + 1}"
            raise error(f"{where}: not valid YAML: character {e.character!r} is not allowed") from None
        raise error(f"{where}: not valid YAML: {' '.join(str(getattr(e, 'problem', None) or e).split())}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    data = read_yaml(path)
    if overrides and isinstance(data, dict):
        data = _deep_merge(data, overrides)
    return parse_config(data, base_dir=path.parent.resolve(), source=str(path))


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
