"""Checkpoint comparison: the baseline and any checkpoints on the validation set and extra eval sets, paired.

``agentrft compare CONFIG --model baseline --model RUN:best [--data adversarial.jsonl]`` evaluates every model on
every dataset with the same seeds per (row, sample) (:func:`agentrft.evals.evaluate.eval_seed`), so the values of
model A and model B on row i are *paired*. For each metric it reports, per candidate against the first model
(the baseline):

* ``Δ = mean_i(b_i − a_i)`` where ``a_i``/``b_i`` are the item's means over its samples, with a percentile
  paired-bootstrap interval (:func:`agentrft.evals.stats.paired_bootstrap`, items resampled with replacement);
* per-item deltas of the reward, sorted — which tasks got better and which got worse;
* plots: reward vs latency per item, the tool-call count distribution, first and last tool used.

The same machinery compares two *recorded* evaluations (``compare_recorded``: e.g. a run's step-0 baseline eval
and a checkpoint's eval, read back from the store), which is what promotion uses.

Live :class:`~agentrft.types.Trajectory` objects and the store's records (converted by the store) are read into one
flat dict of what comparisons need by :func:`traj_view`.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from agentrft.evals.stats import paired_bootstrap
from agentrft.store.heartbeat import Heartbeat
from agentrft.store.records import trajectory_from_record

# metric name -> (how to read it from a trajectory view, higher is better?)
METRICS: dict[str, bool] = {
    "reward": True,
    "passed": True,
    "num_tool_calls": False,
    "tool_errors": False,
    "num_turns": False,
    "completion_tokens": False,
    "latency_s": False,
}


# ---- one view of a trajectory -----------------------------------------------------------------------------
def traj_view(t: Any) -> dict[str, Any]:
    """A flat dict of what comparisons and monitors read, from a Trajectory (or a stored trajectory dict, converted
    by the store's :func:`~agentrft.store.records.trajectory_from_record`): ``trace_id, row_index, sample_index,
    dropped, reward, passed, num_tool_calls, tool_errors, num_turns, completion_tokens, latency_s, tool_names`` and
    ``grades`` = {grader name: {score, passed, version, holdout, errors, sub_rewards, type}} (the reward grade
    first). ``passed`` follows :func:`agentrft.evals.metrics.passed`: the reward grade's ``passed`` when set, else
    reward ≥ 0.999."""
    if isinstance(t, dict):
        t = trajectory_from_record(t)
    gl = [{"name": g.grader_name, "type": g.grader_type, "score": float(g.score), "passed": g.passed,
           "version": g.version, "holdout": bool(g.metadata.get("holdout")), "errors": dict(g.errors),
           "sub_rewards": dict(g.sub_rewards)} for g in t.grades]
    v = {"trace_id": t.trace_id, "row_index": int(t.row_index), "sample_index": int(t.sample_index),
         "dropped": t.dropped, "outcome": t.outcome, "reward": float(t.reward or 0.0),
         "num_tool_calls": t.num_tool_calls, "tool_errors": t.tool_errors, "num_turns": t.num_turns,
         "completion_tokens": t.completion_tokens, "latency_s": float(t.latency_s),
         "tool_names": [c.name for c in t.tool_calls], "checkpoint_id": t.checkpoint_id}
    first = gl[0] if gl else None
    if first is not None and first["passed"] is not None:
        v["passed"] = 1.0 if first["passed"] else 0.0
    else:
        v["passed"] = 1.0 if v["reward"] >= 0.999 else 0.0
    v["grades"] = {g["name"]: g for g in gl}
    v["reward_grader"] = first["name"] if first else None
    return v


def views(trajs: Iterable[Any]) -> list[dict[str, Any]]:
    return [t if isinstance(t, dict) and "grades" in t and isinstance(t["grades"], dict) else traj_view(t)
            for t in trajs]


def value_of(v: dict[str, Any], metric: str) -> float | None:
    """``metric`` of one trajectory view: a key of :data:`METRICS`, ``grader/<name>`` (that grade's score),
    ``pass/<name>`` (that grade passed: its ``passed`` flag, else score ≥ 1) or ``grader/<name>.<sub>`` (a multi's
    sub-reward). None when the trajectory has no such grade."""
    if metric.startswith(("grader/", "pass/")):
        kind, _, name = metric.partition("/")
        g = v["grades"].get(name)
        sub = None
        if g is None and "." in name:
            base, _, sub = name.rpartition(".")
            g = v["grades"].get(base)
            if g is None or sub not in g["sub_rewards"]:
                return None
        if g is None:
            return None
        score = float(g["sub_rewards"][sub]) if sub else g["score"]
        if kind == "grader":
            return score
        if sub is None and g["passed"] is not None:
            return 1.0 if g["passed"] else 0.0
        return 1.0 if score >= 0.999 else 0.0
    x = v.get(metric)
    return None if x is None else float(x)


def item_means(vs: Iterable[dict[str, Any]], metric: str) -> dict[int, float]:
    """Per dataset row: the mean of ``metric`` over that row's non-dropped samples that have it."""
    acc: dict[int, list[float]] = defaultdict(list)
    for v in vs:
        if v["dropped"]:
            continue
        x = value_of(v, metric)
        if x is not None:
            acc[v["row_index"]].append(x)
    return {k: float(np.mean(xs)) for k, xs in acc.items()}


def paired(a: Iterable[Any], b: Iterable[Any], metric: str = "reward", **kw: Any) -> dict[str, Any]:
    """Paired bootstrap of ``metric`` between two evaluations of the same items (``b − a``), over the rows both
    sides have; returns the :class:`PairedDiff` as a dict plus ``significant``."""
    ma, mb = item_means(views(a), metric), item_means(views(b), metric)
    common = sorted(set(ma) & set(mb))
    d = paired_bootstrap([ma[i] for i in common], [mb[i] for i in common], **kw)
    return {**d.as_dict(), "significant": d.significant, "metric": metric}


def grader_names(vs: Iterable[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """(reward grader name, holdout grader names) seen in these trajectory views."""
    reward, holdouts = None, []
    for v in vs:
        if reward is None and v["reward_grader"]:
            reward = v["reward_grader"]
        for name, g in v["grades"].items():
            if g["holdout"] and name not in holdouts:
                holdouts.append(name)
    return reward, holdouts


def per_item_deltas(a: Iterable[Any], b: Iterable[Any], metric: str = "reward") -> list[dict[str, Any]]:
    """Per row: ``{"row_index", "a", "b", "delta"}``, most improved first."""
    ma, mb = item_means(views(a), metric), item_means(views(b), metric)
    out = [{"row_index": i, "a": ma[i], "b": mb[i], "delta": mb[i] - ma[i]} for i in sorted(set(ma) & set(mb))]
    out.sort(key=lambda r: (-r["delta"], r["row_index"]))
    return out


def compare_trajectories(a: Iterable[Any], b: Iterable[Any], *, metrics: list[str] | None = None,
                         n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Every metric of :data:`METRICS` plus ``grader/<name>`` and ``pass/<name>`` for every grader seen, as paired
    differences ``b − a``; plus per-item reward deltas and a count of items improved / worsened / unchanged."""
    va, vb = views(a), views(b)
    if metrics is None:
        names: list[str] = []
        for v in va + vb:
            for n in v["grades"]:
                if n not in names:
                    names.append(n)
        metrics = list(METRICS) + [f"grader/{n}" for n in names] + [f"pass/{n}" for n in names]
    diffs = {}
    for m in metrics:
        d = paired(va, vb, m, n_boot=n_boot, confidence=confidence, seed=seed)
        if d["n_items"]:
            d["higher_is_better"] = METRICS.get(m, True)
            diffs[m] = d
    deltas = per_item_deltas(va, vb)
    eps = 1e-9
    return {
        "metrics": diffs,
        "items": deltas,
        "improved": sum(1 for r in deltas if r["delta"] > eps),
        "worsened": sum(1 for r in deltas if r["delta"] < -eps),
        "unchanged": sum(1 for r in deltas if abs(r["delta"]) <= eps),
    }


def tool_stats(vs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Tool-call count distribution and the first / last tool of each trajectory (OpenAI's comparison notebook)."""
    vs = [v for v in vs if not v["dropped"]]
    return {
        "tool_calls_histogram": dict(sorted(Counter(v["num_tool_calls"] for v in vs).items())),
        "first_tool": dict(Counter(v["tool_names"][0] if v["tool_names"] else "(none)" for v in vs).most_common()),
        "last_tool": dict(Counter(v["tool_names"][-1] if v["tool_names"] else "(none)" for v in vs).most_common()),
    }


# ---- evaluating models ------------------------------------------------------------------------------------
def resolve_model(cfg: Any, ref: str, store: Any = None) -> tuple[str, str]:
    """(label, path) for a model reference: ``baseline`` (the config's model), ``RUN:best`` / ``RUN:latest`` /
    ``RUN:step-N`` (a run's checkpoint, from the store), or a model path / HF id as given."""
    if ref == "baseline":
        return "baseline", cfg.model_path
    if ":" in ref and store is not None and not Path(ref).exists():
        run, _, which = ref.partition(":")
        info = store.get_run(run)
        if info is None:
            raise ValueError(f"model {ref!r}: no run {run!r} in {store.url}")
        ck = find_checkpoint(store, info["id"], which)
        return f"{info['id']}:step-{ck['step']}", ck["path"]
    return ref, ref


def find_checkpoint(store: Any, run_id: str, which: str = "best") -> dict[str, Any]:
    """A run's checkpoint: ``best`` (highest validation reward among kept ones, earliest step on ties), ``latest``
    (highest step kept), ``step-N`` / ``N``, or a full checkpoint id. Raises ValueError naming what exists."""
    cks = store.checkpoints(run_id)
    kept = [c for c in cks if c["kept"]]
    if not cks:
        raise ValueError(f"run {run_id} has no checkpoints (did it reach an eval?)")
    if which == "best":
        pool = [c for c in kept if c["step"] > 0] or kept or cks
        return max(pool, key=lambda c: (c["val_reward"] if c["val_reward"] is not None else -math.inf, -c["step"]))
    if which == "latest":
        return max(kept or cks, key=lambda c: c["step"])
    step = which[5:] if which.startswith("step-") else which
    for c in cks:
        if c["id"] == which or (step.isdigit() and c["step"] == int(step)):
            return c
    have = ", ".join(f"step-{c['step']}" for c in cks)
    raise ValueError(f"run {run_id} has no checkpoint {which!r} (it has: {have})")


def compare_models(cfg: Any, models: list[str], *, extra_data: list[str | Path] = (), samples: int | None = None,
                   out_dir: str | Path | None = None, progress: bool = False, console: Any = None,
                   record: bool = True) -> dict[str, Any]:
    """Evaluate each model (the first is the baseline) on the validation set and each extra dataset, with
    ``samples`` per item and paired seeds; compare every later model with the first. Records everything in the
    store as one run (step k = model k, split ``eval:<dataset>``) and writes ``report.json``, ``report.md`` and
    plots to ``out_dir``. Returns the report dict."""
    from agentrft.data import load_dataset
    from agentrft.evals.run_eval import EvalSession
    from agentrft.store import RunStore

    if len(models) < 2:
        raise ValueError("compare needs at least two models (the first is the baseline)")
    store = RunStore(cfg.store_url)
    resolved = [resolve_model(cfg, m, store) for m in models]
    sets: list[tuple[str, Path]] = []
    if cfg.validation_file:
        sets.append(("valid", cfg.path(cfg.validation_file)))
    for p in extra_data:
        sets.append((Path(p).stem, Path(p)))
    if not sets:
        raise ValueError("nothing to evaluate on: the config has no validation_file and no --data was given")
    n = samples or max(cfg.hyperparameters.eval_samples, 2)
    results: dict[str, dict[str, list[Any]]] = {}  # dataset -> label -> trajectories
    summaries: dict[str, dict[str, Any]] = {}
    run_id = None
    if record:
        run_id = store.create_run(f"compare {' vs '.join(lbl for lbl, _ in resolved)}", cfg.model_dump(),
                                  base_model=resolved[0][1], output_dir=str(cfg.output_path))
        store.set_status(run_id, "running")
    beat = Heartbeat(store, run_id).start() if run_id else None  # a killed compare shows as interrupted
    try:
        for k, (label, path) in enumerate(resolved):
            session = EvalSession(cfg, path)
            try:
                for ds, p in sets:
                    rows = list(load_dataset(p, known_tools=session.router.names or None))
                    trajs, m = session.evaluate(rows, samples=n, split=f"eval:{ds}", data_dir=str(p.parent),
                                                progress=progress, console=console)
                    for t in trajs:
                        t.checkpoint_id = label
                    results.setdefault(ds, {})[label] = trajs
                    summaries.setdefault(ds, {})[label] = m
                    if run_id:
                        store.record_step(run_id, k, f"eval:{ds}", {**m, "model": label}, trajs)
            finally:
                session.close()
    except BaseException as e:  # Ctrl-C too: it left the run `running` forever
        if run_id:
            try:
                store.set_status(run_id, "cancelled" if isinstance(e, KeyboardInterrupt) else "failed")
            except Exception:  # noqa: BLE001 — the error that stopped the compare is the one to report
                pass
        raise
    finally:
        if beat:
            beat.stop()
    report = build_comparison(results, summaries, seed=cfg.hyperparameters.seed)
    report["run_id"] = run_id
    report["samples"] = n
    if run_id:
        store.set_status(run_id, "succeeded")
    if out_dir is not None:
        write_report(report, results, out_dir)
    return report


def build_comparison(results: dict[str, dict[str, list[Any]]], summaries: dict[str, dict[str, Any]] | None = None,
                     *, seed: int = 0) -> dict[str, Any]:
    """``results[dataset][label] = trajectories`` (first label = baseline) → the comparison report dict."""
    out: dict[str, Any] = {"datasets": {}}
    for ds, by_label in results.items():
        labels = list(by_label)
        base = labels[0]
        entry: dict[str, Any] = {"baseline": base, "models": labels, "summary": (summaries or {}).get(ds, {}),
                                 "tools": {lbl: tool_stats(views(by_label[lbl])) for lbl in labels},
                                 "comparisons": {}}
        for lbl in labels[1:]:
            entry["comparisons"][lbl] = compare_trajectories(by_label[base], by_label[lbl], seed=seed)
        out["datasets"][ds] = entry
    return out


def write_report(report: dict[str, Any], results: dict[str, dict[str, list[Any]]], out_dir: str | Path) -> Path:
    """report.json, report.md and PNG plots (reward vs latency per item, tool-call distribution, first/last tool)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Checkpoint comparison", ""]
    for ds, entry in report["datasets"].items():
        by_label = results[ds]
        labels = entry["models"]
        vs = {lbl: views(by_label[lbl]) for lbl in labels}
        # reward vs latency per item
        fig, ax = plt.subplots(figsize=(6, 4))
        for lbl in labels:
            r, lat = item_means(vs[lbl], "reward"), item_means(vs[lbl], "latency_s")
            ks = sorted(set(r) & set(lat))
            ax.scatter([lat[k] for k in ks], [r[k] for k in ks], label=lbl, alpha=0.7)
        ax.set_xlabel("latency per item (s)")
        ax.set_ylabel("reward per item")
        ax.set_title(f"{ds}: reward vs latency")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{ds}_reward_vs_latency.png", dpi=90)
        plt.close(fig)
        # tool-call distribution and first/last tool
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        width = 0.8 / max(1, len(labels))
        for j, lbl in enumerate(labels):
            st = entry["tools"][lbl]
            h = st["tool_calls_histogram"]
            axes[0].bar([int(x) + j * width for x in h], list(h.values()), width=width, label=lbl)
            for ax, key in ((axes[1], "first_tool"), (axes[2], "last_tool")):
                names = sorted({n for lb in labels for n in entry["tools"][lb][key]})
                ax.bar([i + j * width for i in range(len(names))], [st[key].get(n, 0) for n in names], width=width,
                       label=lbl)
                ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        axes[0].set_title("tool calls per trajectory")
        axes[1].set_title("first tool")
        axes[2].set_title("last tool")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{ds}_tools.png", dpi=90)
        plt.close(fig)
        md += [f"## {ds} (baseline: {entry['baseline']})", ""]
        for lbl, comp in entry["comparisons"].items():
            md += [f"### {lbl} vs {entry['baseline']}", "",
                   "| metric | baseline | candidate | Δ | 95% CI | significant |", "|---|---|---|---|---|---|"]
            for m, d in comp["metrics"].items():
                md.append(f"| {m} | {d['a']:.3f} | {d['b']:.3f} | {d['diff']:+.3f} | "
                          f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {'yes' if d['significant'] else 'no'} |")
            md += ["", f"items improved {comp['improved']}, worsened {comp['worsened']}, "
                       f"unchanged {comp['unchanged']}", ""]
            worst = [r for r in comp["items"] if r["delta"] < 0][-5:]
            best = [r for r in comp["items"] if r["delta"] > 0][:5]
            if best:
                md.append("most improved rows: " + ", ".join(f"{r['row_index']} ({r['delta']:+.2f})" for r in best))
            if worst:
                md.append("most worsened rows: " + ", ".join(f"{r['row_index']} ({r['delta']:+.2f})" for r in worst))
            md.append("")
        md += [f"![reward vs latency]({ds}_reward_vs_latency.png)", f"![tools]({ds}_tools.png)", ""]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text("\n".join(md))
    return out
