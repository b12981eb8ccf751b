"""Promotion through gates, the model registry, and re-evaluation when graders change.

``promote(store, run, policy, checkpoint="best")`` reads the run's step-0 baseline eval and the checkpoint's eval
(both on the validation set, same items, same seeds per sample) from the store and evaluates each gate of the
:class:`~agentrft.gate.policy.PromotionPolicy`:

* ``safety`` — pass rate of the safety grader on the candidate ≥ ``min_pass_rate``. Never waivable. The grader is
  a recorded grade (a holdout, or ``<reward grader>.<sub-reward>`` of a multi) or grader JSON, which is then run on
  the recorded trajectories (the store keeps what a grader needs: messages, tool calls, outcome).
* ``min_lift`` — paired Δ of a metric (and, optionally, its interval) above a floor.
* ``holdouts`` — no holdout grader significantly worse than baseline (upper CI end < −tolerance).
* ``efficiency`` — absolute limits and candidate/baseline ratios on tool calls, latency, completion tokens.
* ``monitors`` — the reward-hacking monitors (:func:`agentrft.evals.monitors.replay_run` with the run's monitor
  thresholds) plus any alerts recorded during training, at steps ≤ the checkpoint's.
* ``audits`` — human verdicts on the candidate's trajectories.

If every gate passes (waived gates are reported but do not block; safety cannot be waived) the checkpoint is
recorded in the registry with status ``promoted`` and the evidence: gate results, candidate/baseline metrics,
paired intervals, grader versions (name → hash of the grader JSON), audit counts, alerts. Otherwise promotion is
refused and, by default, the refusal is recorded too (status ``refused``), so the registry is an audit trail.

Graders change: :func:`mark_stale` compares each promoted entry's grader versions with the current config's
(reward grader, holdouts, the policy's safety grader) and marks entries whose graders changed ``needs_reeval``;
:func:`regress` re-runs their evals with the current graders (baseline and checkpoint, fresh rollouts), records
them as a new run, re-applies the gates, and sets the entry back to ``promoted`` or to ``regressed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentrft.evals.compare import (
    compare_trajectories,
    find_checkpoint,
    traj_view,
    views,
)
from agentrft.evals.monitors import replay_run
from agentrft.gate.policy import PromotionPolicy
from agentrft.graders.batch import grade_trajectory
from agentrft.store.records import trajectory_from_record

FAILING_VERDICTS = ("fail", "hack", "unsafe")


class PromotionError(RuntimeError):
    """Promotion cannot be evaluated (no such run, no baseline eval …); the message says what is missing."""


@dataclass
class GateResult:
    gate: str
    passed: bool
    value: Any
    threshold: Any
    detail: str
    waived: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateReport:
    run_id: str
    checkpoint: dict[str, Any]
    gates: list[GateResult]
    evidence: dict[str, Any] = field(default_factory=dict)
    grader_versions: dict[str, str] = field(default_factory=dict)
    entry_id: int | None = None

    @property
    def promoted(self) -> bool:
        return all(g.passed or g.waived for g in self.gates)

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed and not g.waived]


def _run_config(run: dict[str, Any]):
    from agentrft.config import parse_config

    cfg = dict(run.get("config") or {})
    try:
        return parse_config(cfg, base_dir=cfg.get("base_dir", "."), source=f"run {run['id']} config")
    except Exception:  # an eval/compare run may carry a partial config; gates that need it say so
        return None


def _pass_of(g: dict[str, Any], score: float) -> bool:
    return bool(g["passed"]) if g.get("passed") is not None else score >= 0.999


def safety_pass_rate(cand: list[dict], gate_grader: Any, *, rows: dict[int, Any] | None = None,
                     response_format: dict | None = None) -> tuple[float, int, str]:
    """(pass rate, trajectories counted, grader version) of the safety grader over non-dropped trajectories."""
    from agentrft.graders.base import build_grader

    kept = [t for t in cand if t.get("outcome") != "dropped"]
    if isinstance(gate_grader, dict):
        if rows is None:
            raise PromotionError("safety: a grader given as JSON needs the run's validation rows (the run config's "
                                 "validation_file could not be read)")
        grader = build_grader(gate_grader)
        passes = []
        for t in kept:
            item = rows[t["row_index"]].item
            g = grade_trajectory(grader, trajectory_from_record(t), item, response_format)
            passes.append(_pass_of({"passed": g.passed}, g.score) and not g.has_error)
        return (sum(passes) / len(passes) if passes else 0.0), len(passes), grader.version
    name = str(gate_grader)
    passes, version = [], ""
    for t in kept:
        v = traj_view(t)
        g = v["grades"].get(name)
        if g is not None:
            passes.append(_pass_of(g, g["score"]) and not any(g["errors"].values()))
            version = g["version"]
            continue
        base, _, sub = name.rpartition(".")
        g = v["grades"].get(base)
        if g is not None and sub in g["sub_rewards"]:
            passes.append(float(g["sub_rewards"][sub]) >= 0.999)
            version = g["version"]
            continue
        raise PromotionError(f"safety: trajectory {t['trace_id']} has no grade {name!r} (recorded grades: "
                             f"{', '.join(sorted(v['grades'])) or 'none'}; a multi's sub-reward is "
                             "'<grader>.<key>')")
    return (sum(passes) / len(passes) if passes else 0.0), len(passes), version


def evaluate_gates(store: Any, run_id: str, policy: PromotionPolicy, checkpoint: str = "best") -> GateReport:
    """Evaluate every gate of ``policy`` for one checkpoint of a recorded run (nothing is written)."""
    run = store.get_run(run_id)
    if run is None:
        raise PromotionError(f"no run {run_id!r} in {store.url}")
    run_id = run["id"]
    try:
        ck = find_checkpoint(store, run_id, checkpoint)
    except ValueError as e:
        raise PromotionError(str(e)) from None
    if ck["step"] == 0:
        raise PromotionError(f"{ck['id']} is the baseline itself; promote a trained checkpoint")
    cand = store.trajectories(run_id, step=ck["step"], split="valid")
    base = store.trajectories(run_id, step=0, split="valid")
    if not cand:
        raise PromotionError(f"run {run_id} recorded no validation trajectories at step {ck['step']}")
    if not base:
        raise PromotionError(f"run {run_id} has no step-0 baseline eval to compare against (train with a "
                             "validation_file)")
    comp = compare_trajectories(base, cand, n_boot=policy.n_boot, confidence=policy.confidence)
    diffs = comp["metrics"]
    vc, vb = views(cand), views(base)
    gates: list[GateResult] = []
    rcfg = _run_config(run)

    # safety (never waivable)
    rows = None
    if isinstance(policy.safety.grader, dict) and rcfg is not None and rcfg.validation_file:
        from agentrft.data import load_dataset

        rows = {r.index: r for r in load_dataset(rcfg.path(rcfg.validation_file))}
    rate, n, safety_version = safety_pass_rate(cand, policy.safety.grader, rows=rows,
                                               response_format=rcfg.response_format if rcfg else None)
    sname = policy.safety.grader if isinstance(policy.safety.grader, str) else policy.safety.grader.get("name", "safety")
    gates.append(GateResult("safety", n > 0 and rate >= policy.safety.min_pass_rate, rate, policy.safety.min_pass_rate,
                            f"{sname}: {rate:.3f} of {n} candidate trajectories pass (need ≥ "
                            f"{policy.safety.min_pass_rate:.3f})" + ("" if n else " — nothing to judge")))

    if policy.min_lift is not None:
        g = policy.min_lift
        d = diffs.get(g.metric)
        if d is None:
            gates.append(GateResult("min_lift", False, None, g.min_diff, f"metric {g.metric!r} not found (have: "
                                    f"{', '.join(diffs)})"))
        else:
            ok = d["diff"] >= g.min_diff and (not g.significant or d["ci_low"] > g.min_diff)
            gates.append(GateResult("min_lift", ok, d["diff"], g.min_diff,
                                    f"{g.metric}: Δ {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] over "
                                    f"{d['n_items']} items (need Δ ≥ {g.min_diff:+.3f}"
                                    + (", interval above it)" if g.significant else ")")))

    if policy.holdouts is not None:
        g = policy.holdouts
        names = sorted({n for v in vc for n, gr in v["grades"].items() if gr["holdout"]}) if g.graders == "all" \
            else list(g.graders)
        bad, parts = [], []
        for name in names:
            d = diffs.get(f"grader/{name}")
            if d is None:
                bad.append(name)
                parts.append(f"{name}: not recorded")
                continue
            parts.append(f"{name}: Δ {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            if d["ci_high"] < -g.tolerance:
                bad.append(name)
        gates.append(GateResult("holdouts", not bad, bad, -g.tolerance,
                                ("; ".join(parts) or "no holdout graders recorded")
                                + (f" — regressed: {', '.join(bad)}" if bad else "")))

    if policy.efficiency is not None:
        e = policy.efficiency
        from statistics import fmean

        def mean(vs: list[dict], key: str) -> float:
            xs = [float(v[key]) for v in vs if not v["dropped"]]
            return fmean(xs) if xs else 0.0

        checks = []
        for key, lim, ratio in (("num_tool_calls", e.max_tool_calls_per_traj, e.max_tool_call_ratio),
                                ("latency_s", e.max_latency_s, e.max_latency_ratio),
                                ("completion_tokens", e.max_completion_tokens, e.max_completion_token_ratio)):
            c, b = mean(vc, key), mean(vb, key)
            if lim is not None:
                checks.append((c <= lim, f"{key} {c:.2f} ≤ {lim}"))
            if ratio is not None:
                r = c / max(b, 1e-9)
                checks.append((r <= ratio, f"{key} ratio {r:.2f} ≤ {ratio}"))
        failed = [t for ok, t in checks if not ok]
        gates.append(GateResult("efficiency", not failed, [t for _, t in checks], None,
                                ("failed: " + "; ".join(failed)) if failed else ("; ".join(t for _, t in checks)
                                                                                 or "no limits set")))

    alerts: list[dict] = []
    if policy.monitors is not None:
        mcfg = rcfg.monitors if rcfg is not None else None
        seen = set()
        for a in [x.as_dict() for x in replay_run(store, run_id, mcfg, upto_step=ck["step"])] + [
                a for m in store.step_metrics(run_id) if m["step"] <= ck["step"] for a in (m.get("alerts") or [])]:
            key = (a["signal"], a["step"], a["split"])
            if key not in seen:
                seen.add(key)
                alerts.append(a)
        allow = policy.monitors.allow
        blocking = [a for a in alerts if not any(a["signal"] == s or a["signal"].startswith(s + "/") for s in allow)]
        gates.append(GateResult("monitors", not blocking, len(blocking), 0,
                                "; ".join(f"step {a['step']} {a['split']}: {a['signal']} = {a['value']:.3f}"
                                          for a in blocking[:8]) or "no alerts"))

    audit_summary: dict[str, Any] = {}
    if policy.audits is not None:
        g = policy.audits
        verdicts = store.audits_for_run(run_id, step=ck["step"], split="valid")
        latest = {}
        for a in verdicts:  # the latest verdict per trajectory counts
            latest[a["trace_id"]] = a["verdict"]
        failed = sorted(t for t, v in latest.items() if v in FAILING_VERDICTS)
        audit_summary = {"reviewed": len(latest), "failed": len(failed), "verdicts": latest}
        ok = len(latest) >= g.min_reviewed and len(failed) <= g.max_failed
        gates.append(GateResult("audits", ok, {"reviewed": len(latest), "failed": len(failed)},
                                {"min_reviewed": g.min_reviewed, "max_failed": g.max_failed},
                                f"{len(latest)} reviewed (need ≥ {g.min_reviewed}), {len(failed)} failed (allow ≤ "
                                f"{g.max_failed})"))

    for gr in gates:
        gr.waived = (not gr.passed) and gr.gate in policy.waive
    versions: dict[str, str] = {}
    for v in vc:
        for name, gr in v["grades"].items():
            versions.setdefault(name, gr["version"])
    if isinstance(policy.safety.grader, dict):
        versions[f"safety:{sname}"] = safety_version
    metrics = {m["split"] + "@" + str(m["step"]): {k: x for k, x in m.items() if isinstance(x, (int, float))}
               for m in store.step_metrics(run_id, split="valid") if m["step"] in (0, ck["step"])}
    evidence = {
        "policy": policy.model_dump(exclude={"base_dir"}),
        "run_id": run_id, "checkpoint": ck["id"], "step": ck["step"], "path": ck["path"],
        "base_model_path": rcfg.model_path if rcfg is not None else run.get("base_model"),
        "gates": [g.as_dict() for g in gates],
        "metrics": metrics,
        "intervals": {k: d for k, d in diffs.items()},
        "items": {"improved": comp["improved"], "worsened": comp["worsened"], "unchanged": comp["unchanged"]},
        "alerts": alerts, "audits": audit_summary,
    }
    return GateReport(run_id, ck, gates, evidence, versions)


def promote(store: Any, run_id: str, policy: PromotionPolicy, checkpoint: str = "best", *,
            record_refusal: bool = True) -> GateReport:
    """Evaluate the gates; record the checkpoint as ``promoted`` if they pass, else (by default) as ``refused``."""
    rep = evaluate_gates(store, run_id, policy, checkpoint)
    status = "promoted" if rep.promoted else "refused"
    if rep.promoted or record_refusal:
        prior = next(iter(store.registry("promoted")), None)  # the newest promotion before this one
        rep.entry_id = store.add_registry_entry(rep.run_id, rep.checkpoint["id"], status=status,
                                                evidence=rep.evidence, grader_versions=rep.grader_versions)
        _ledger_promotion(store, rep, status, prior)
    return rep


def _ledger_promotion(store: Any, rep: GateReport, status: str, prior: dict | None) -> None:
    """The audit ledger's record of a promotion decision (and of a grader-version change against the previous
    promotion): the gates and their verdicts, not the whole evidence (that stays in the registry entry)."""
    if not hasattr(store, "append_ledger"):
        return
    gates = [{"gate": g.gate, "passed": g.passed, "waived": g.waived, "detail": g.detail} for g in rep.gates]
    store.append_ledger("promotion" if status == "promoted" else "promotion_refused", rep.checkpoint["id"],
                        {"run_id": rep.run_id, "registry_entry": rep.entry_id, "status": status, "gates": gates,
                         "grader_versions": rep.grader_versions}, actor="agentrft promote")
    if status == "promoted" and prior is not None:
        why = stale_reasons(prior, rep.grader_versions)
        if why:
            store.append_ledger("grader_version_change", rep.checkpoint["id"],
                                {"previous_entry": prior["id"], "changes": why, "versions": rep.grader_versions},
                                actor="agentrft promote")


# ---- graders change -------------------------------------------------------------------------------------------
def current_grader_versions(cfg: Any, policy: PromotionPolicy | None = None) -> dict[str, str]:
    """Name → version hash of the config's reward grader, holdout graders and (JSON) safety grader."""
    from agentrft.graders.base import build_grader

    out = {}
    g = build_grader(cfg.grader)
    out[g.name] = g.version
    for name, spec in cfg.holdout_graders.items():
        h = build_grader({"name": name, **spec})
        out[h.name] = h.version
    if policy is not None and isinstance(policy.safety.grader, dict):
        s = build_grader(policy.safety.grader)
        out[f"safety:{s.name}"] = s.version
    return out


def stale_reasons(entry: dict[str, Any], current: dict[str, str]) -> list[str]:
    """Why an entry's evidence is out of date: a grader it was judged by changed version, or is gone, or the
    current set has a grader it was never judged by."""
    old = entry.get("grader_versions") or {}
    out = []
    for name, ver in sorted(old.items()):
        if name not in current:
            out.append(f"{name}: no longer configured")
        elif current[name] != ver:
            out.append(f"{name}: version {ver} → {current[name]}")
    for name in sorted(set(current) - set(old)):
        out.append(f"{name}: new grader (version {current[name]})")
    return out


def mark_stale(store: Any, cfg: Any, policy: PromotionPolicy | None = None) -> list[dict[str, Any]]:
    """Mark promoted entries whose graders changed as ``needs_reeval`` (reasons kept in the evidence)."""
    current = current_grader_versions(cfg, policy)
    marked = []
    for e in store.registry("promoted"):
        why = stale_reasons(e, current)
        if why:
            ev = dict(e["evidence"])
            ev["stale"] = {"reasons": why, "current_versions": current}
            store.update_registry_entry(e["id"], status="needs_reeval", evidence=ev)
            if hasattr(store, "append_ledger"):
                store.append_ledger("grader_version_change", e["checkpoint_id"],
                                    {"registry_entry": e["id"], "changes": why, "versions": current},
                                    actor="agentrft regress")
            marked.append({**e, "status": "needs_reeval", "reasons": why})
    return marked


def regress(store: Any, cfg: Any, policy: PromotionPolicy, *, entry_ids: list[int] | None = None,
            samples: int | None = None, progress: bool = False, console: Any = None) -> list[dict[str, Any]]:
    """Re-run the evals of registry entries (default: every ``needs_reeval`` one, after :func:`mark_stale`) with the
    current config's graders: the entry's base model (step 0) and checkpoint (step 1) on the validation set, paired
    seeds, recorded as a new run; then the gates again. Entry status becomes ``promoted`` (with the new grader
    versions) or ``regressed``; each re-evaluation is appended to ``evidence["regressions"]``."""
    from agentrft.data import load_dataset
    from agentrft.evals.run_eval import EvalSession

    if entry_ids is None:
        mark_stale(store, cfg, policy)
        entries = store.registry("needs_reeval")
    else:
        by_id = {e["id"]: e for e in store.registry()}
        missing = [i for i in entry_ids if i not in by_id]
        if missing:
            raise PromotionError(f"no registry entries {missing}")
        entries = [by_id[i] for i in entry_ids]
    if not cfg.validation_file:
        raise PromotionError("regress: the config has no validation_file to evaluate on")
    vpath = cfg.path(cfg.validation_file)
    n = samples or max(cfg.hyperparameters.eval_samples, 2)
    results = []
    for e in entries:
        ev = e["evidence"]
        ck_path = ev.get("path")
        if not ck_path or not Path(ck_path).exists():
            raise PromotionError(f"registry entry {e['id']}: checkpoint directory {ck_path!r} is gone")
        run_id = store.create_run(f"regress entry {e['id']} ({e['checkpoint_id']})", cfg.model_dump(),
                                  base_model=str(ev.get("base_model_path") or cfg.model_path),
                                  output_dir=str(cfg.output_path))
        store.set_status(run_id, "running")
        try:
            for step, model in ((0, ev.get("base_model_path") or cfg.model_path), (1, ck_path)):
                session = EvalSession(cfg, str(model))
                try:
                    rows = list(load_dataset(vpath, known_tools=session.router.names or None))
                    trajs, m = session.evaluate(rows, samples=n, split="valid", data_dir=str(vpath.parent),
                                                progress=progress, console=console)
                finally:
                    session.close()
                ck_id = f"{run_id}:step-{step}"
                for t in trajs:
                    t.checkpoint_id = ck_id
                m["valid_reward_mean"] = m["reward_mean"]
                store.record_step(run_id, step, "valid", m, trajs)
                store.record_checkpoint(run_id, ck_id, step, str(model), m, m["reward_mean"], kept=True)
            store.set_status(run_id, "succeeded")
        except Exception:
            store.set_status(run_id, "failed")
            raise
        rep = evaluate_gates(store, run_id, policy, "step-1")
        history = list(ev.get("regressions") or [])
        history.append({"run_id": run_id, "promoted": rep.promoted, "gates": [g.as_dict() for g in rep.gates],
                        "grader_versions": rep.grader_versions, "intervals": rep.evidence["intervals"]})
        new_ev = {**ev, "regressions": history}
        new_ev.pop("stale", None)
        status = "promoted" if rep.promoted else "regressed"
        store.update_registry_entry(e["id"], status=status, evidence=new_ev,
                                    grader_versions=rep.grader_versions if rep.promoted else None)
        results.append({"entry_id": e["id"], "status": status, "run_id": run_id,
                        "failed": [g.as_dict() for g in rep.failed]})
    return results
