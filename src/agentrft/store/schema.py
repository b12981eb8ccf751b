"""The run store's tables (SQLAlchemy 2 declarative).

One run has many steps; a step (run, step, split) has its metrics and the trajectories sampled in it; a trajectory
(``trace_id``) has its tool calls and grades. Checkpoints hang off the run. ``registry`` (promoted models) and
``audits`` (human verdicts on trajectories) are minimal here; later stages extend them.

``split`` is ``"train"``, ``"valid"`` or ``"eval:<name>"``; trajectories are stored under the split of the step that
recorded them. ``run_id`` is repeated on tool_calls and grades so audit queries over a run need no join.
Timestamps are UTC. JSON columns hold plain JSON (the store's serializer turns numpy scalars, paths and sets into
JSON values first).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 4  # 2: runs.heartbeat_at; 3: traces.deployment/arm and the feedback table; 4: deployments, their
#                      events and observations, and the ledger (columns and tables added in place to older stores on
#                      their first write open)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _run_fk() -> Any:
    return ForeignKey("runs.id", ondelete="CASCADE")


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(32), default="queued")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    base_model: Mapped[str] = mapped_column(Text, default="")
    output_dir: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # touched every ~30 s by the process running the run; a `running` run whose heartbeat is stale was killed
    # (or stopped by a full disk) and is shown as interrupted. Deferred: a read-only open of a version-1 store,
    # which has no such column, must still read the run rows.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, deferred=True)


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "step", "split", name="uq_steps_run_step_split"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), _run_fk(), index=True)
    step: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(100))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrajectoryRow(Base):
    __tablename__ = "trajectories"
    __table_args__ = (Index("ix_traj_run_step_split", "run_id", "step", "split"),)

    trace_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), _run_fk())
    step: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(100))
    row_index: Mapped[int] = mapped_column(Integer)
    group_id: Mapped[str] = mapped_column(String(100), default="")
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    turns: Mapped[list[Any]] = mapped_column(JSON, default=list)  # per turn: index, span, text, finish, parse_error
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)  # sampled tokens (loss-mask ones)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)  # len(token_ids): prompt + sampled + tool tokens
    num_turns: Mapped[int] = mapped_column(Integer, default=0)
    num_tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    tool_errors: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(32), default="completed")
    drop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    advantage: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    tool_time_s: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ToolCallRow(Base):
    __tablename__ = "tool_calls"
    __table_args__ = (Index("ix_tool_calls_run_name", "run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(100), ForeignKey("trajectories.trace_id", ondelete="CASCADE"),
                                          index=True)
    run_id: Mapped[str] = mapped_column(String(64), _run_fk())
    seq: Mapped[int] = mapped_column(Integer)  # order of the call within its trajectory, 0-based
    turn_index: Mapped[int] = mapped_column(Integer, default=0)
    call_id: Mapped[str] = mapped_column(String(100), default="")
    name: Mapped[str] = mapped_column(String(200), default="")
    arguments: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text, default="")
    output_sha256: Mapped[str] = mapped_column(String(64), default="")
    output_bytes: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default="ok")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    approval: Mapped[str | None] = mapped_column(String(100), nullable=True)  # from meta["approval"]
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class GradeRow(Base):
    __tablename__ = "grades"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(100), ForeignKey("trajectories.trace_id", ondelete="CASCADE"),
                                          index=True)
    run_id: Mapped[str] = mapped_column(String(64), _run_fk(), index=True)
    grader_name: Mapped[str] = mapped_column(String(200))
    grader_type: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128), default="")
    score: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    errors: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sub_rewards: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    turn_scores: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # "metadata" is reserved on declarative classes, so the attribute is ``meta`` and the column "metadata".
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    execution_time_s: Mapped[float] = mapped_column(Float, default=0.0)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), _run_fk(), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    val_reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    kept: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RegistryEntry(Base):
    """A promoted model: which checkpoint, from which run, on what evidence, graded by which grader versions."""

    __tablename__ = "registry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[str] = mapped_column(String(200), index=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    grader_versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="candidate")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Audit(Base):
    """A person's verdict on one trajectory. No foreign key: a verdict outlives a resumed run's deleted steps."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(100), index=True)
    verdict: Mapped[str] = mapped_column(String(64))
    reviewer: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Meta(Base):
    """Key/value facts about the store itself (schema version)."""

    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")


class TraceRow(Base):
    """One served request (``agentrft serve``): what was asked, what answered, what came back. A conversation's
    requests share the client's ``trace_id`` (``X-Trace-Id``); ``request_id`` is unique per request."""

    __tablename__ = "traces"
    __table_args__ = (Index("ix_traces_model_created", "model", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(100), unique=True)
    trace_id: Mapped[str] = mapped_column(String(200), index=True)
    endpoint: Mapped[str] = mapped_column(String(64), default="chat.completions")
    model: Mapped[str] = mapped_column(String(400), default="")
    checkpoint_id: Mapped[str] = mapped_column(String(400), default="")
    status: Mapped[int] = mapped_column(Integer, default=200)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the request's messages (or prompts)
    tools: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # temperature, top_p, seed, n, max_tokens…
    choices: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the answer's messages / texts + finish reasons
    tool_calls: Mapped[list[Any]] = mapped_column(JSON, default=list)  # calls made, across choices
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    user: Mapped[str | None] = mapped_column(String(400), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A request to a deployment's name (``agentrft deploy``): the deployment, and which arm answered it —
    # ``production``, ``candidate`` (a canary's share, or after ``full``) or ``shadow`` (the candidate's answer to a
    # shadowed request, recorded and graded, never returned). None for requests to a model id. Deferred: a read-only
    # open of a version-2 store, which lacks them, must still read its traces.
    deployment: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True, deferred=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True, deferred=True)


class FeedbackRow(Base):
    """A person's (or a client's) verdict on a served answer: ``POST /v1/feedback {trace_id, score | label,
    comment}``. Keyed by the conversation's ``trace_id`` (optionally one ``request_id`` of it); several per trace
    are kept (the newest wins where one is needed). Read by deployment KPIs and ``traces export``."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(200), index=True)
    request_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# The OpenAI fine-tuning API (issue 16): uploaded files, fine-tuning jobs and their lifecycle events.
# Read and written by agentrft.store.jobs.JobStore (mixed into RunStore); served by agentrft.serve.files / .jobs.
# Times are Unix seconds (floats), as OpenAI's objects report them; a job's metrics events are not stored here
# but derived from its run's steps, so they always agree with ``agentrft show``.
# ---------------------------------------------------------------------------------------------------------------


class FileRow(Base):
    """An uploaded file (``POST /v1/files``): bytes on disk under the server's data directory, metadata here."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(400), default="")
    purpose: Mapped[str] = mapped_column(String(64), default="fine-tune")
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(32), default="processed")
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=0.0)


class JobRow(Base):
    """A fine-tuning job. ``config``: everything a worker needs to run it (resolved at create); ``lease_owner`` /
    ``lease_expires``: the worker running it, renewed by heartbeat — an expired lease is free to take (resume)."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (Index("ix_ftjobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default="validating_files")
    model: Mapped[str] = mapped_column(Text, default="")
    base_model: Mapped[str] = mapped_column(Text, default="")  # the served base the job's run descends from
    served_base: Mapped[str] = mapped_column(String(400), default="")  # its id in /v1/models (for ft: ids)
    method_type: Mapped[str] = mapped_column(String(32), default="reinforcement")
    method: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # as requested, "auto"s resolved
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # OpenAI-shaped, resolved
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_file: Mapped[str] = mapped_column(String(64), default="")
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    integrations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "pause" | "cancel" asked of a worker
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker took the job
    created_at: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class JobEventRow(Base):
    """A lifecycle event of a job (``type: message``); ``seq`` orders them."""

    __tablename__ = "fine_tuning_job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[float] = mapped_column(Float, default=0.0)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


# ---- dashboard (agentrft ui): the approval queue, and indexes for paging trajectories -------------------------
class Approval(Base):
    """A tool call waiting for a person's decision (the production approval flow enqueues; ``agentrft ui`` decides).
    No foreign key: a request may come from a served trace that is not (yet) a stored trajectory."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trace_id: Mapped[str] = mapped_column(String(100), index=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tool_name: Mapped[str] = mapped_column(String(200), default="")
    arguments: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending | approved | denied
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")


# Keyset paging of the trajectory browser (newest step first, within a run or across runs) walks this index;
# it is also created on stores made before it existed (RunStore.__init__ → ensure_indexes).
Index("ix_traj_run_step_trace", TrajectoryRow.run_id, TrajectoryRow.step, TrajectoryRow.trace_id)
# the browser's reward-range filter
Index("ix_traj_run_reward", TrajectoryRow.run_id, TrajectoryRow.reward)
# the same validation item across checkpoints (the dashboard's before/after view)
Index("ix_traj_run_split_row", TrajectoryRow.run_id, TrajectoryRow.split, TrajectoryRow.row_index)


def ensure_indexes(conn: Any) -> None:
    """Create any index of the schema that an existing database lacks (``create_all`` adds only missing tables)."""
    for table in Base.metadata.sorted_tables:
        for ix in table.indexes:
            ix.create(conn, checkfirst=True)


# ---------------------------------------------------------------------------------------------------------------
# Deployments (issue 17): a stable model name in front of a production checkpoint and a candidate, in shadow,
# canary or full mode; what the online graders observed on every served request of it; its history (weights over
# time, advances, rollbacks, holds). Read and written by agentrft.store.deployments.DeploymentStore; decided by
# agentrft.gate.rollout; served by agentrft.serve.deployments.
# ---------------------------------------------------------------------------------------------------------------


class DeploymentRow(Base):
    """One deployment. ``production`` / ``candidate`` / ``previous``: model references the server resolves (a
    checkpoint id of the store, an ``ft:`` id, the base model's id or an adapter name). ``mode``: ``shadow`` |
    ``canary`` | ``full``; ``weight``: the candidate's share of traffic in ``canary`` (0..1). ``status``:
    ``active`` | ``held`` (drift: automatic advance paused) | ``rolled_back`` | ``completed`` (the candidate went
    ``full``). ``phase`` counts the steps taken (observations are tagged with it, so each step is judged on its own
    samples); ``stage``: the index into the policy's weight schedule (-1 in shadow). ``state``: the controller's
    decision state (trace watermark, last decision, drift baseline). ``version``: compare-and-set counter, so two
    servers sharing the store never both apply a decision."""

    __tablename__ = "deployments"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    production: Mapped[str] = mapped_column(String(400))
    candidate: Mapped[str | None] = mapped_column(String(400), nullable=True)
    previous: Mapped[str | None] = mapped_column(String(400), nullable=True)
    mode: Mapped[str] = mapped_column(String(16), default="shadow")
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_fraction: Mapped[float] = mapped_column(Float, default=1.0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    phase: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[int] = mapped_column(Integer, default=-1)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentEventRow(Base):
    """What happened to a deployment, in order: ``create``, ``advance``, ``rollback``, ``hold``, ``drift_alert``,
    ``release`` …, with the mode and weight after it (the canary weight's history) and the evidence."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16), default="")
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    phase: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(200), default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentObservationRow(Base):
    """One served request of a deployment as the controller saw it: which arm answered (``production``,
    ``candidate``, ``shadow``), whether it failed, its latency and tool calls, and the online graders' scores
    (``scores``: grader name → score; ``safety_violation``: a safety grader flagged it). ``trace_row``: the
    ``traces.id`` it came from (unique: a trace is observed once); ``created_at``: when that request was served."""

    __tablename__ = "deployment_observations"
    __table_args__ = (Index("ix_depobs_dep_phase_arm", "deployment", "phase", "arm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(200))
    phase: Mapped[int] = mapped_column(Integer, default=0)
    arm: Mapped[str] = mapped_column(String(16))
    trace_row: Mapped[int] = mapped_column(Integer, unique=True)
    trace_id: Mapped[str] = mapped_column(String(200), index=True)
    checkpoint_id: Mapped[str] = mapped_column(String(400), default="")
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    tool_calls: Mapped[int] = mapped_column(Integer, default=0)
    graded: Mapped[bool] = mapped_column(Boolean, default=False)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    safety_violation: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# ---------------------------------------------------------------------------------------------------------------
# The audit ledger (issue 17): one append-only, hash-chained table — promotions, deployment steps and rollbacks,
# approvals, grader-version changes. Written and verified by agentrft.store.ledger.LedgerStore.
# ---------------------------------------------------------------------------------------------------------------


class LedgerRow(Base):
    """One ledger record. ``seq`` is its position (1, 2, …; the primary key, so two writers cannot both take one);
    ``hash = sha256(prev_hash + canonical JSON of (seq, kind, subject, data, actor, created))``; ``created`` is
    the ISO time text that went into the hash (kept as text so the hash never depends on a driver's datetime)."""

    __tablename__ = "ledger"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(String(400), default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[str] = mapped_column(String(40))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
