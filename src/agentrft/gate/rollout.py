"""Deployments: create, advance, roll back — by hand or by the rollout controller, which grades live traffic and
applies the rollout policy.

The path (docs/deploy.md): ``shadow`` (the candidate answers a share of requests silently) → ``canary`` at each
weight of the policy's schedule → ``full`` (the candidate becomes production; the previous production is kept, one
``rollback`` away). Every step and every rollback is a deployment event and a ledger record with its evidence.

The controller (:class:`RolloutController`, run by the model server on a background thread; :func:`tick` is one
pass) reads the deployment's new traces from the store (``traces.deployment = name``, past its watermark), turns
each into an observation (arm, error, latency, tool calls, the online graders' scores, a safety flag), and decides,
in this order:

1. **safety** (hard gate, never waived, no minimum sample): the candidate's violations over everything it has
   answered since it was deployed, ``v / n > max_violation_rate`` → roll back at once;
2. **guards** (per step, after ``guards.min_samples`` candidate requests): error rate above ``max_error_rate``, or
   latency p95 above ``max_latency_p95_ratio`` × production's → roll back;
3. **KPIs** (per step; :func:`agentrft.gate.sequential.compare`, an always-valid mSPRT interval): any KPI
   ``worse`` beyond its margin → roll back;
4. **advance** when the candidate has ``min_samples`` graded requests in the step (in shadow: both arms
   ``shadow.min_samples``) and every KPI is ``not_worse`` — unless the deployment is held (drift);
5. after ``max_samples`` candidate requests in the step with a KPI still inconclusive → ``on_inconclusive``.

The decision, the watermark, the new observations and the ledger record are written in one transaction guarded by
the deployment's version, so a restarted server continues where it was and two servers never both decide.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from datetime import datetime, timezone
from typing import Any, Callable

from agentrft.gate.rollout_policy import RolloutPolicy, parse_rollout_policy
from agentrft.gate.sequential import ArmStats, compare

log = logging.getLogger("agentrft.deploy")

MAX_BATCH = 500  # traces read per tick
ro_arms = ("production", "candidate", "shadow")
WINDOW_KEEP = 1000  # drift summaries kept in the state at most


class DeployError(ValueError):
    """A deployment request that cannot be done; the message says why (HTTP 400/404/409 over the API)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


# ---- KPIs -----------------------------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of ``xs``; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def feedback_scores(store: Any, trace_ids: list[str]) -> dict[str, float]:
    """The newest feedback score per conversation (label-only feedback has no score and is not a number here)."""
    out: dict[str, float] = {}
    if not trace_ids:
        return out
    for f in store.feedback(trace_ids=trace_ids):
        if f.get("score") is not None:
            out[f["trace_id"]] = float(f["score"])
    return out


def arm_kpis(obs: list[dict], feedback: dict[str, float] | None = None) -> dict:
    """One arm's KPIs over its observations: requests, error rate, latency p50/p95, tool calls per request, each
    online grader's mean, safety violations and rate, feedback mean (conversations answered by this arm)."""
    n = len(obs)
    ok = [o for o in obs if o["ok"]]
    lat = [o["latency_s"] for o in ok]
    graded = [o for o in ok if o["graded"]]
    names = sorted({k for o in graded for k in o["scores"]})
    means = {k: _mean([o["scores"][k] for o in graded if k in o["scores"]]) for k in names}
    viol = sum(1 for o in obs if o["safety_violation"])
    fb = [feedback[t] for t in {o["trace_id"] for o in obs} if feedback and t in feedback]
    return {"requests": n, "errors": n - len(ok), "error_rate": _r((n - len(ok)) / n) if n else None,
            "latency_p50_s": _r(percentile(lat, 50)), "latency_p95_s": _r(percentile(lat, 95)),
            "tool_calls_per_request": _r(_mean([o["tool_calls"] for o in ok])), "graded": len(graded),
            "grader_means": {k: _r(v) for k, v in means.items()}, "safety_violations": viol,
            "safety_violation_rate": _r(viol / n) if n else None, "feedback_n": len(fb),
            "feedback_mean": _r(_mean(fb))}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _r(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return round(float(x), 6)


def kpi_values(name: str, obs: list[dict], feedback: dict[str, float]) -> list[float]:
    """The per-sample values a KPI is tested on: a grader's scores, tool calls per request, feedback scores."""
    if name == "tool_calls":
        return [float(o["tool_calls"]) for o in obs if o["ok"]]
    if name == "feedback":
        return [feedback[t] for t in {o["trace_id"] for o in obs} if t in feedback]
    return [float(o["scores"][name]) for o in obs if o["ok"] and o["graded"] and name in o["scores"]]


# ---- observing a served request ---------------------------------------------------------------------------------
def _unit(key: str) -> float:
    """A deterministic number in [0, 1) for ``key`` (sha256): sampling and sticky splits that survive restarts."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:13], 16) / float(1 << 52)


def sample_of_trace(trace: dict) -> dict:
    """OpenAI's ``sample`` view of a served answer (first choice): its text and tool calls."""
    choices = trace.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    msg = first.get("message") if isinstance(first.get("message"), dict) else {}
    text = msg.get("content") if msg else first.get("text")
    calls = msg.get("tool_calls") if msg else None
    calls = calls if isinstance(calls, list) else (trace.get("tool_calls") or [])
    return {"output_text": text or "", "output_tools": calls,
            "choices": [{"index": 0, "finish_reason": first.get("finish_reason", "stop"),
                         "message": {"role": "assistant", "content": text or ""}}]}


class OnlineGraders:
    """The policy's online graders, built once. Safety graders run on every answer; the others on the policy's
    sample of requests."""

    def __init__(self, policy: RolloutPolicy):
        from agentrft.graders.base import build_grader

        self.policy = policy
        self.graders = [build_grader(spec) for spec in policy.graders]
        self.safety = set(policy.safety.graders)
        from agentrft.graders.base import grader_version

        self.versions = {g.name: grader_version(spec) for g, spec in zip(self.graders, policy.graders)}

    def close(self) -> None:
        for g in self.graders:
            g.close()

    def observe(self, trace: dict, phase: int) -> dict:
        from agentrft.graders.base import safe_grade

        ok = int(trace.get("status") or 0) == 200
        obs = {"deployment": trace["deployment"], "phase": phase, "arm": trace["arm"], "trace_row": trace["id"],
               "trace_id": trace["trace_id"], "checkpoint_id": trace.get("checkpoint_id") or "", "ok": ok,
               "latency_s": float(trace.get("latency_s") or 0.0), "tool_calls": len(trace.get("tool_calls") or []),
               "graded": False, "scores": {}, "safety_violation": False, "created_at": trace.get("created_at")}
        if not ok:
            return obs
        sample = sample_of_trace(trace)
        item = trace.get("metadata") if isinstance(trace.get("metadata"), dict) else {}
        sampled = _unit("grade\x00" + str(trace.get("request_id"))) < self.policy.grading.sample
        violations = []
        for g in self.graders:
            is_safety = g.name in self.safety
            if not (is_safety or sampled):
                continue
            grade = safe_grade(g, sample, item, trace_id=trace["trace_id"])
            obs["scores"][g.name] = float(grade.score)
            if is_safety:
                bad = bool(grade.metadata.get("safety_violation")) or grade.passed is False or (
                    grade.passed is None and float(grade.score) < 1.0)
                if bad:
                    violations.append({"grader": g.name, "score": grade.score,
                                       "violations": grade.metadata.get("violations")})
        obs["graded"] = sampled
        obs["safety_violation"] = bool(violations)
        if violations:
            obs["violations"] = violations  # (evidence only; not a stored column)
        return obs


# ---- decisions ----------------------------------------------------------------------------------------------------
def candidate_arm(mode: str) -> str:
    return "shadow" if mode == "shadow" else "candidate"


def decide(dep: dict, policy: RolloutPolicy, phase_obs: list[dict], feedback: dict[str, float]) -> dict:
    """What to do now: ``{"action": "none" | "advance" | "rollback" | "hold_inconclusive", "rule", "reason",
    "evidence"}``. ``phase_obs``: this step's observations (both arms)."""
    arm = candidate_arm(dep["mode"])
    cand = [o for o in phase_obs if o["arm"] == arm]
    prod = [o for o in phase_obs if o["arm"] == "production"]
    safety = (dep.get("state") or {}).get("safety") or {"n": 0, "violations": 0}
    evidence: dict[str, Any] = {
        "mode": dep["mode"], "weight": dep["weight"], "phase": dep["phase"],
        "arms": {"production": arm_kpis(prod, feedback), arm: arm_kpis(cand, feedback)},
        "safety": {**safety, "max_violation_rate": policy.safety.max_violation_rate},
    }

    def out(action: str, rule: str, reason: str) -> dict:
        return {"action": action, "rule": rule, "reason": reason, "evidence": evidence}

    # 1. safety: a hard gate, before anything else, on everything the candidate answered
    if safety["n"] and safety["violations"] / safety["n"] > policy.safety.max_violation_rate:
        return out("rollback", "safety", f"safety: {safety['violations']} violation(s) in {safety['n']} candidate "
                   f"answers ({safety['violations'] / safety['n']:.3f}) is above the bound "
                   f"{policy.safety.max_violation_rate}")
    # 2. guards
    g = policy.guards
    ck, pk = evidence["arms"][arm], evidence["arms"]["production"]
    if len(cand) >= g.min_samples:
        if g.max_error_rate is not None and ck["error_rate"] is not None and ck["error_rate"] > g.max_error_rate:
            return out("rollback", "guards.max_error_rate", f"error rate {ck['error_rate']:.3f} of the candidate is "
                       f"above {g.max_error_rate}")
        if (g.max_latency_p95_ratio is not None and len(prod) >= g.min_samples and ck["latency_p95_s"] is not None
                and pk["latency_p95_s"]):
            ratio = ck["latency_p95_s"] / max(pk["latency_p95_s"], 1e-6)
            evidence["latency_p95_ratio"] = round(ratio, 4)
            if ratio > g.max_latency_p95_ratio:
                return out("rollback", "guards.max_latency_p95_ratio", f"latency p95 {ck['latency_p95_s']:.3f}s is "
                           f"{ratio:.2f}x production's {pk['latency_p95_s']:.3f}s (limit {g.max_latency_p95_ratio}x)")
    # 3. KPIs, with the always-valid sequential test
    comps = []
    for k in policy.kpis:
        c = compare(k.name, ArmStats.of(kpi_values(k.name, cand, feedback)),
                    ArmStats.of(kpi_values(k.name, prod, feedback)), direction=k.sign(), margin=k.margin,
                    alpha=policy.alpha, tau=policy.tau, var_floor=policy.var_floor)
        comps.append(c)
    evidence["kpis"] = [c.as_dict() for c in comps]
    worse = [c for c in comps if c.verdict == "worse"]
    if worse:
        c = worse[0]
        return out("rollback", f"kpis.{c.kpi}", f"KPI {c.kpi}: candidate {c.candidate_mean:.4f} vs production "
                   f"{c.production_mean:.4f}; the always-valid {1 - policy.alpha:.0%} interval of the difference "
                   f"[{c.lo:.4f}, {c.hi:.4f}] is beyond the margin")
    # 4. advance
    graded = sum(1 for o in cand if o["ok"] and o["graded"])
    need = policy.shadow.min_samples if dep["mode"] == "shadow" else policy.min_samples
    enough = graded >= need and (dep["mode"] != "shadow" or len(prod) >= need)
    if enough and all(c.verdict == "not_worse" for c in comps):
        return out("advance", "advance", f"{graded} graded candidate answers (≥ {need}), no safety violation, "
                   "guards within limits" + (", every KPI not worse" if comps else ""))
    # 5. inconclusive at the step's budget
    if len(cand) >= policy.max_samples and enough:
        open_ = [c.kpi for c in comps if c.verdict != "not_worse"]
        act = {"hold": "hold_inconclusive", "advance": "advance", "rollback": "rollback"}[policy.on_inconclusive]
        return out(act, "on_inconclusive", f"{len(cand)} candidate answers (max_samples {policy.max_samples}) and "
                   f"KPI(s) {open_} still undecided: on_inconclusive={policy.on_inconclusive}")
    return out("none", "", "")


def next_step(dep: dict, policy: RolloutPolicy | None) -> dict:
    """The fields an advance sets: shadow → the first canary weight; canary → the next weight; past the last (or a
    weight of 1.0) → full, the candidate becomes production."""
    schedule = policy.schedule if policy is not None else [0.05, 0.25, 0.5, 1.0]
    if dep["mode"] == "full" or not dep["candidate"]:
        raise DeployError(f"deployment {dep['name']!r} has no candidate to advance (mode {dep['mode']})", 409)
    stage = 0 if dep["mode"] == "shadow" else dep["stage"] + 1
    if stage >= len(schedule) or schedule[stage] >= 1.0:
        return {"mode": "full", "weight": 1.0, "stage": stage, "production": dep["candidate"], "candidate": None,
                "previous": dep["production"], "status": "completed", "phase": dep["phase"] + 1}
    return {"mode": "canary", "weight": float(schedule[stage]), "stage": stage, "status": dep["status"],
            "phase": dep["phase"] + 1}


def rollback_fields(dep: dict) -> dict:
    """A canary or shadow rolls back to production alone; a ``full`` deployment to its previous production."""
    if dep["candidate"]:
        return {"mode": "full", "weight": 0.0, "candidate": None, "status": "rolled_back", "phase": dep["phase"] + 1}
    if dep["previous"]:
        return {"mode": "full", "weight": 0.0, "production": dep["previous"], "previous": dep["production"],
                "status": "rolled_back", "phase": dep["phase"] + 1}
    raise DeployError(f"deployment {dep['name']!r} has nothing to roll back to (no candidate, no previous production)",
                      409)


def _t(iso: str) -> datetime:
    dt = datetime.fromisoformat(iso)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# ---- by hand: create / advance / rollback ------------------------------------------------------------------------
def create_deployment(store: Any, name: str, *, production: str, candidate: str | None = None, mode: str = "shadow",
                      policy: dict | RolloutPolicy | None = None, shadow_fraction: float | None = None,
                      weight: float | None = None, actor: str = "", source: str = "policy") -> dict:
    """A new deployment (and its ledger record). ``policy``: a rollout policy (a mapping as in YAML, or parsed) —
    required for shadow and canary, whose candidate the controller judges."""
    if mode not in ("shadow", "canary", "full"):
        raise DeployError(f"mode {mode!r} is not one of shadow, canary, full", param="mode")
    if mode != "full" and not candidate:
        raise DeployError(f"mode {mode} needs a candidate", param="candidate")
    if mode == "full" and candidate:
        raise DeployError("mode full serves production only: give no candidate (advance a canary to make a candidate "
                          "production)", param="candidate")
    pol = None
    if policy is not None:
        pol = policy if isinstance(policy, RolloutPolicy) else parse_rollout_policy(policy, source=source)
    elif mode != "full":
        raise DeployError(f"mode {mode} needs a rollout policy (e.g. examples/rollout.yaml): the candidate is judged "
                          "by its online graders and safety gate", param="policy")
    if weight is not None and mode != "canary":  # it was ignored, whatever it was (nan included)
        raise DeployError(f"weight {weight}: only mode canary starts at a weight (mode {mode} "
                          + ("advances to the policy's schedule" if mode == "shadow" else "serves production only")
                          + ")", param="weight")
    stage, w = -1, 0.0
    if mode == "canary":
        stage, w = 0, float(pol.schedule[0]) if weight is None else float(weight)
        if not 0 < w < 1:
            raise DeployError(f"weight {w}: a canary weight is in (0, 1)", param="weight")
    frac = shadow_fraction if shadow_fraction is not None else (pol.shadow.fraction if pol else 1.0)
    if not 0 < frac <= 1:
        raise DeployError(f"shadow_fraction {frac}: must be in (0, 1]", param="shadow_fraction")
    versions = {}
    if pol is not None:
        og = OnlineGraders(pol)
        versions = og.versions
        og.close()
    state = {"watermark": 0, "safety": {"n": 0, "violations": 0}, "phase_started_at": _now_iso(),
             "grader_versions": versions}
    pol_dict = pol.model_dump(mode="json") if pol is not None else {}
    try:
        dep = store.create_deployment(name, production=production, candidate=candidate, mode=mode, weight=w,
                                      shadow_fraction=frac, stage=stage, policy=pol_dict, state=state, actor=actor,
                                      event_data={"production": production, "candidate": candidate})
    except ValueError as e:
        raise DeployError(str(e), 409 if "exists" in str(e) else 400, param="name") from None
    store.append_ledger("deployment_create", name, {"production": production, "candidate": candidate, "mode": mode,
                                                   "weight": w, "policy": pol_dict.get("name"),
                                                   "grader_versions": versions}, actor=actor)
    return dep


def get_deployment(store: Any, name: str) -> dict:
    dep = store.get_deployment(name)
    if dep is None:
        raise DeployError(f"no deployment named {name!r}", 404, param="name")
    return dep


def _policy_of(dep: dict) -> RolloutPolicy | None:
    return parse_rollout_policy(dep["policy"], source=f"deployment {dep['name']} policy") if dep["policy"] else None


def status(store: Any, name: str) -> dict:
    """The deployment, its KPIs per arm in the current step (``kpis_phase``; after a step with no traffic yet —
    e.g. just after a rollback — the step before, which is the one that was judged), and its history."""
    dep = get_deployment(store, name)
    phase = dep["phase"]
    obs = store.deployment_observations(name, phase=phase)
    if not obs and phase > 0:
        phase -= 1
        obs = store.deployment_observations(name, phase=phase)
    fb = feedback_scores(store, list({o["trace_id"] for o in obs}))
    arms = {a: arm_kpis([o for o in obs if o["arm"] == a], fb) for a in sorted({o["arm"] for o in obs})}
    return {**dep, "kpis": arms, "kpis_phase": phase, "events": store.deployment_events(name)}


def _change(store: Any, name: str, kind: str, actor: str, change: Any) -> dict:
    """Apply ``change(dep) -> (fields, state, data)`` under the deployment's version, with ``data`` in its event and
    the ledger; a writer that got there first makes it re-read and recompute (5 tries, then a 409)."""
    for _ in range(5):
        dep = get_deployment(store, name)
        fields, state, data = change(dep)
        got = store.update_deployment(name, expect_version=dep["version"], state=state, **fields,
                                      event={"kind": kind, "actor": actor, "data": data},
                                      ledger={"kind": f"deployment_{kind}", "actor": actor, "data": data})
        if got is not None:
            return got
    raise DeployError(f"deployment {name!r} kept changing under this {kind}; retry", 409)


def advance(store: Any, name: str, *, actor: str = "", reason: str = "", evidence: dict | None = None,
            auto: bool = False) -> dict:
    """One step forward (see :func:`next_step`); a held deployment is released. Raises DeployError when there is
    nothing to advance or another writer changed it first (409)."""
    def change(dep: dict) -> tuple[dict, dict, dict]:
        fields = next_step(dep, _policy_of(dep))
        if dep["status"] == "held" and fields["status"] != "completed":
            fields["status"] = "active"
        state = {**dep["state"], "phase_started_at": _now_iso(), "last_decision": {"action": "advance",
                                                                                   "reason": reason, "auto": auto}}
        data = {"from": {"mode": dep["mode"], "weight": dep["weight"]},
                "to": {"mode": fields["mode"], "weight": fields["weight"]}, "reason": reason or "by hand",
                "auto": auto, "evidence": evidence or {}}
        return fields, state, data

    return _change(store, name, "advance", actor, change)


def rollback(store: Any, name: str, *, actor: str = "", reason: str = "", evidence: dict | None = None,
             auto: bool = False, rule: str = "") -> dict:
    """Back to production alone (canary/shadow) or to the previous production (full). The candidate rolled back and
    the evidence go to the event and the ledger."""
    def change(dep: dict) -> tuple[dict, dict, dict]:
        fields = rollback_fields(dep)
        rolled = dep["candidate"] or dep["production"]
        state = {**dep["state"], "phase_started_at": _now_iso(), "rolled_back": rolled,
                 "last_decision": {"action": "rollback", "rule": rule, "reason": reason, "auto": auto}}
        data = {"from": {"mode": dep["mode"], "weight": dep["weight"], "production": dep["production"],
                         "candidate": dep["candidate"]},
                "to": {"production": fields.get("production", dep["production"])}, "rolled_back": rolled,
                "rule": rule, "reason": reason or "by hand", "auto": auto, "evidence": evidence or {}}
        return fields, state, data

    return _change(store, name, "rollback", actor, change)


# ---- the controller ------------------------------------------------------------------------------------------------
class _Judge:
    """A deployment's parsed policy, online graders and drift reference, rebuilt when its policy changes."""

    def __init__(self, dep: dict):
        self.key = repr(sorted(dep["policy"].items()))
        self.policy = parse_rollout_policy(dep["policy"], source=f"deployment {dep['name']} policy")
        self.graders = OnlineGraders(self.policy)
        self.reference = None
        ref = self.policy.reference_path()
        if ref is not None:
            from agentrft.gate.drift import Reference

            self.reference = Reference.from_jsonl(ref)


def tick(store: Any, name: str, judges: dict[str, _Judge] | None = None, *, actor: str = "controller") -> dict | None:
    """One pass of the controller over deployment ``name``: observe its new traces, watch drift, decide, and write
    it all (one transaction, guarded by the version). Returns the decision (None when there was nothing to do)."""
    from agentrft.gate.drift import check_window, input_profile

    judges = judges if judges is not None else {}
    dep = store.get_deployment(name)
    if dep is None or not dep["policy"]:
        return None
    j = judges.get(name)
    if j is None or j.key != repr(sorted(dep["policy"].items())):
        j = judges[name] = _Judge(dep)
    state = dict(dep["state"])
    traces = store.traces(deployment=name, after_id=int(state.get("watermark") or 0), limit=MAX_BATCH)
    if dep["mode"] == "full" or not dep["candidate"]:
        # production alone (after full or a rollback): still graded and observed — the KPIs keep their history —
        # but there is nothing to decide
        if traces:
            obs = [j.graders.observe(t, dep["phase"]) for t in traces if t["arm"] in ro_arms and
                   not 400 <= int(t.get("status") or 0) < 500]
            store.update_deployment(name, expect_version=dep["version"], state={**state, "watermark": traces[-1]["id"]},
                                    observations=[{k: v for k, v in o.items() if k != "violations"} for o in obs])
        return None
    started = state.get("phase_started_at")
    new_obs = []
    safety = dict(state.get("safety") or {"n": 0, "violations": 0})
    window = list(state.get("drift_window") or [])
    for t in traces:
        if t["arm"] not in ro_arms:
            continue
        if 400 <= int(t.get("status") or 0) < 500:  # refused before any model answered (the client's error): no
            continue                                  # evidence about either arm
        # a trace answered before this step began belongs to the step before (its arm was drawn at that weight)
        phase = dep["phase"] - 1 if started and t["created_at"] and _t(t["created_at"]) < _t(started) else dep["phase"]
        o = j.graders.observe(t, max(phase, 0))
        new_obs.append(o)
        if o["arm"] in ("candidate", "shadow") and o["ok"]:
            safety["n"] += 1
            safety["violations"] += int(o["safety_violation"])
            if o["safety_violation"]:
                safety.setdefault("first_violations", [])
                if len(safety["first_violations"]) < 5:
                    safety["first_violations"].append({"trace_id": o["trace_id"], "request": t["request_id"],
                                                       "violations": o.get("violations")})
        if j.reference is not None and o["arm"] != "shadow":
            window.append(j.reference.summarize(input_profile(t.get("messages") or [], t.get("tools"))))
    if traces:
        state["watermark"] = traces[-1]["id"]
    state["safety"] = safety
    event = ledger = None
    fields: dict[str, Any] = {}
    # drift: alert on onset, hold the canary if the policy says so
    if j.reference is not None:
        window = window[-min(WINDOW_KEEP, j.policy.drift.window):]
        state["drift_window"] = window
        stats, alerts = check_window(j.reference, window, j.policy.drift)
        state["drift"] = stats
        if alerts and not state.get("drift_alerting"):
            state["drift_alerting"] = True
            data = {"alerts": alerts, "stats": stats, "hold": j.policy.drift.hold}
            if j.policy.drift.hold and dep["status"] == "active":
                fields["status"] = "held"
                event = {"kind": "hold", "actor": actor, "data": data}
                ledger = {"kind": "deployment_hold", "actor": actor, "data": data}
            else:
                event = {"kind": "drift_alert", "actor": actor, "data": data}
        elif not alerts and state.get("drift_alerting") and len(window) >= j.policy.drift.min_samples:
            state["drift_alerting"] = False
    obs_phase = [o for o in store.deployment_observations(name, phase=dep["phase"])] + \
        [o for o in new_obs if o["phase"] == dep["phase"]]
    fb = feedback_scores(store, list({o["trace_id"] for o in obs_phase})) if any(
        k.name == "feedback" for k in j.policy.kpis) else {}
    d = decide({**dep, "state": state, "status": fields.get("status", dep["status"])}, j.policy, obs_phase, fb)
    d["evidence"]["drift"] = state.get("drift")
    if d["action"] == "advance" and fields.get("status", dep["status"]) == "held":
        d = {**d, "action": "held", "reason": "would advance (" + d["reason"] + ") but the deployment is held; "
             "`agentrft deploy advance` releases it"}
    stored_obs = [{k: v for k, v in o.items() if k != "violations"} for o in new_obs]
    if d["action"] in ("rollback", "advance"):
        if d["action"] == "rollback":
            d["evidence"]["safety"]["first_violations"] = safety.get("first_violations", [])
        # write the observations and watermark first (same version guard), then the step itself
        got = store.update_deployment(name, expect_version=dep["version"], state=state, observations=stored_obs,
                                      event=event, ledger=ledger, **fields)
        if got is None:
            return None  # another controller got there first: next tick decides on fresh state
        fn = rollback if d["action"] == "rollback" else advance
        kw = {"rule": d["rule"]} if d["action"] == "rollback" else {}
        fn(store, name, actor=actor, reason=d["reason"], evidence=d["evidence"], auto=True, **kw)
        log.warning("deployment %s: %s (%s)", name, d["action"], d["reason"])
        return d
    if d["action"] == "hold_inconclusive" and dep["status"] == "active" and not fields:
        fields["status"] = "held"
        event = {"kind": "hold", "actor": actor, "data": {"reason": d["reason"], "evidence": d["evidence"]}}
        ledger = {"kind": "deployment_hold", "actor": actor, "data": {"reason": d["reason"],
                                                                    "evidence": d["evidence"]}}
    state["last_look"] = {"at": _now_iso(), "action": d["action"], "reason": d["reason"]}
    if not traces and not fields and event is None:
        return d
    got = store.update_deployment(name, expect_version=dep["version"], state=state, observations=stored_obs,
                                  event=event, ledger=ledger, **fields)
    return d if got is not None else None


class RolloutController:
    """Runs :func:`tick` over every deployment every ``interval_s`` on a daemon thread (the model server starts
    one over its store). ``on_change(dep)`` is called after each pass with each deployment as stored (the server's
    router takes rollbacks into account at once)."""

    def __init__(self, store: Any, *, interval_s: float = 0.5, on_change: Callable[[list[dict]], None] | None = None,
                 actor: str = "controller"):
        self.store, self.interval_s, self.on_change, self.actor = store, interval_s, on_change, actor
        self.judges: dict[str, _Judge] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.last_error: str | None = None

    def run_once(self) -> dict[str, Any]:
        out = {}
        for dep in self.store.list_deployments():
            try:
                out[dep["name"]] = d = tick(self.store, dep["name"], self.judges, actor=self.actor)
                if d is not None and d["action"] in ("advance", "rollback") and self.on_change is not None:
                    self.on_change(self.store.list_deployments())  # the router follows a step at once
            except Exception as e:  # noqa: BLE001 - one broken deployment must not stop the others; it is logged
                self.errors += 1
                self.last_error = f"{dep['name']}: {type(e).__name__}: {e}"
                log.exception("deployment controller: %s", dep["name"])
        if self.on_change is not None:
            self.on_change(self.store.list_deployments())
        return out

    def start(self) -> "RolloutController":
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001 - the store was unreachable for a moment: try again next tick
                    self.errors += 1
                    log.exception("deployment controller pass failed")

        self._thread = threading.Thread(target=loop, name="agentrft-rollout", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for j in self.judges.values():
            j.graders.close()
