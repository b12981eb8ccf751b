"""``agentrft check CONFIG`` — "should we use RFT here?", executable.

Samples the base model on (a seeded subset of) the training and validation sets, several samples per item, with
the run's real tools and grader, and measures what the RFT guidance asks for:

* **Reward distribution and headroom.** Mean, spread, quantiles, a histogram; the share of items *at the floor*
  (every sample scored the grader's minimum) and *at the ceiling* (every sample scored its maximum). RFT needs a
  non-zero baseline — at 0% success there is nothing to reinforce — and room below the ceiling.
* **Gradient.** GRPO learns from reward differences *within* an item's group of samples: the mean within-item
  variance ``mean_i var_k(r_ik)`` and the share of items whose samples all scored the same (zero-variance groups,
  which carry no signal).
* **Grader health.** Error rate (any error flag on the reward grade) per flag; *determinism*: every graded sample
  is graded again by a freshly built grader and the share of scores that differ (|Δ| > 1e-9) is reported;
  *agreement*: Spearman's ρ between the reward grader and each holdout grader over the samples.
* **Dataset problems.** Duplicate rows within each file, validation rows that also appear in training
  (leakage; a row is its messages, tools and reference data), sizes against OpenAI's caps (50,000 train / 1,000 validation rows) and guidance (a few dozen rows+).

It ends with a verdict — ``go`` or ``no-go`` with reasons (each with what to change) — plus warnings, and writes
``report.json`` and ``report.md``. The samples are recorded in the store as a run (``eval:check-train`` /
``eval:check-valid``), so every number traces back to trajectories.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agentrft.evals.compare import views
from agentrft.evals.monitors import spearman


@dataclass
class CheckThresholds:
    """Verdict rules. Shares are of items (dataset rows) unless said otherwise."""

    floor_share: float = 0.9  # no-go when ≥ this share of items never score above the floor
    min_reward: float = 0.02  # … or the mean reward (normalised to [0, 1]) is ≤ this
    ceiling_share: float = 0.9  # no-go when ≥ this share of items always score the max
    max_reward: float = 0.98  # … or the normalised mean is ≥ this
    zero_variance_share: float = 0.9  # no-go when ≥ this share of items get identical rewards on every sample
    grader_error_rate: float = 0.05  # no-go above (warning above 0)
    nondeterminism: float = 0.1  # no-go when more than this share of re-grades differ (warning above 0)
    agreement: float = 0.8  # warning when a holdout's rank correlation with the reward is below
    overlap_share: float = 0.05  # no-go when more than this share of validation prompts appear in training
    dropped_fraction: float = 0.2  # no-go when more rollouts than this are dropped (tools failing)


def prompt_key(row: Any) -> str:
    """A row's task identity: the whole row (messages, tool schemas and the reference data graders and tools
    read) as canonical JSON. The same question over different reference data (another table, another repo) is
    another task, so it is neither a duplicate nor a leak."""
    return json.dumps({"m": row.messages, "t": row.tools, "i": row.item}, sort_keys=True, ensure_ascii=False,
                      default=str)


def dataset_problems(train: list[Any], valid: list[Any] | None) -> dict[str, Any]:
    """Duplicates within each file and train/validation overlap, by prompt (file:line of each duplicate kept)."""
    def dups(rows: list[Any]) -> list[dict[str, Any]]:
        first: dict[str, int] = {}
        out = []
        for r in rows:
            k = prompt_key(r)
            if k in first:
                out.append({"line": r.line, "duplicate_of_line": first[k]})
            else:
                first[k] = r.line
        return out

    train_keys = {prompt_key(r): r.line for r in train}
    out: dict[str, Any] = {"train_rows": len(train), "valid_rows": len(valid or []),
                           "train_duplicates": dups(train), "valid_duplicates": dups(valid or [])}
    overlap = [{"valid_line": r.line, "train_line": train_keys[prompt_key(r)]} for r in valid or []
               if prompt_key(r) in train_keys]
    out["overlap"] = overlap
    out["overlap_share"] = len(overlap) / len(valid) if valid else 0.0
    return out


def reward_range(spec: dict[str, Any]) -> tuple[float, float]:
    """The grader's score range: ``range`` of a score_model grader, else [0, 1]."""
    r = spec.get("range")
    if spec.get("type") == "score_model" and isinstance(r, (list, tuple)) and len(r) == 2:
        return float(r[0]), float(r[1])
    return 0.0, 1.0


def assess_split(trajs: list[Any], *, lo: float, hi: float, regrade: dict[str, float] | None = None) -> dict[str, Any]:
    """Statistics of one split's samples (see the module docstring for each formula)."""
    vs = views(trajs)
    kept = [v for v in vs if not v["dropped"]]
    by_item: dict[int, list[float]] = defaultdict(list)
    for v in kept:
        by_item[v["row_index"]].append(v["reward"])
    rewards = np.asarray([v["reward"] for v in kept], dtype=float)
    eps = 1e-9
    span = max(hi - lo, eps)
    items = list(by_item.values())
    st: dict[str, Any] = {
        "samples": len(vs), "items": len(items),
        "dropped_fraction": (len(vs) - len(kept)) / len(vs) if vs else 0.0,
        "reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
        "reward_std": float(rewards.std()) if len(rewards) else 0.0,
        "reward_quantiles": ({str(q): float(np.quantile(rewards, q)) for q in (0, 0.25, 0.5, 0.75, 1)}
                             if len(rewards) else {}),
        "histogram": (np.histogram(np.clip(rewards, lo, hi), bins=10, range=(lo, hi))[0].tolist()
                      if len(rewards) else []),
        "range": [lo, hi],
        "floor_share": sum(all(x <= lo + eps for x in xs) for xs in items) / len(items) if items else 0.0,
        "ceiling_share": sum(all(x >= hi - eps for x in xs) for xs in items) / len(items) if items else 0.0,
        "within_item_variance": float(np.mean([np.var(xs) for xs in items])) if items else 0.0,
        "zero_variance_share": (sum(max(xs) - min(xs) <= eps for xs in items) / len(items)) if items else 0.0,
        "pass_rate": float(np.mean([v["passed"] for v in kept])) if kept else 0.0,
    }
    st["normalised_mean"] = (st["reward_mean"] - lo) / span
    errs: Counter[str] = Counter()
    n_err = 0
    for v in kept:
        g = v["grades"].get(v["reward_grader"]) if v["reward_grader"] else None
        flags = [k for k, on in (g["errors"] if g else {}).items() if on]
        n_err += bool(flags)
        errs.update(flags)
    st["grader_error_rate"] = n_err / len(kept) if kept else 0.0
    st["grader_errors"] = dict(errs)
    if regrade is not None:
        diffs = [abs(regrade[v["trace_id"]] - v["reward"]) for v in kept if v["trace_id"] in regrade]
        st["regraded"] = len(diffs)
        st["nondeterminism"] = sum(d > eps for d in diffs) / len(diffs) if diffs else 0.0
        st["regrade_max_abs_diff"] = max(diffs) if diffs else 0.0
    agreement = {}
    holdouts = sorted({n for v in kept for n, g in v["grades"].items() if g["holdout"]})
    for name in holdouts:
        pairs = [(v["reward"], v["grades"][name]["score"]) for v in kept if name in v["grades"]]
        agreement[name] = {"rho": spearman([a for a, _ in pairs], [b for _, b in pairs]), "n": len(pairs),
                           "mean": float(np.mean([b for _, b in pairs])) if pairs else 0.0}
    st["agreement"] = agreement
    return st


def verdict(splits: dict[str, dict[str, Any]], data: dict[str, Any], th: CheckThresholds,
            has_valid: bool) -> tuple[list[dict], list[dict]]:
    """(no-go reasons, warnings), each ``{"code", "message", "fix"}``. The headroom rules read the validation
    split when there is one (the set RFT is judged on), else the training split; health rules read both."""
    nogo: list[dict] = []
    warn: list[dict] = []
    main_name = "valid" if "valid" in splits else "train"
    s = splits[main_name]

    def add(lst: list[dict], code: str, message: str, fix: str) -> None:
        lst.append({"code": code, "message": message, "fix": fix})

    if s["floor_share"] >= th.floor_share or s["normalised_mean"] <= th.min_reward:
        add(nogo, "no_baseline", f"{main_name}: the base model never scores — {s['floor_share']:.0%} of items are at "
            f"the floor on every sample (mean reward {s['reward_mean']:.3f}); RFT cannot bootstrap from 0% success",
            "warm-start with SFT on demonstrations, use a stronger base model, simplify the tasks, or give partial "
            "credit in the grader")
    elif s["ceiling_share"] >= th.ceiling_share or s["normalised_mean"] >= th.max_reward:
        add(nogo, "no_headroom", f"{main_name}: no headroom — {s['ceiling_share']:.0%} of items score the maximum "
            f"on every sample (mean reward {s['reward_mean']:.3f}); the grader may be saturated or always pass",
            "check the grader (does it ever fail?), make it stricter, or use harder tasks")
    elif s["zero_variance_share"] >= th.zero_variance_share:
        add(nogo, "no_gradient", f"{main_name}: {s['zero_variance_share']:.0%} of items get the same reward on every "
            "sample — groups without variance carry no learning signal",
            "raise the sampling temperature or group size, or give partial credit")
    for name, st in splits.items():
        if st["grader_error_rate"] > th.grader_error_rate:
            add(nogo, "grader_errors", f"{name}: {st['grader_error_rate']:.0%} of samples have grader errors "
                f"({', '.join(sorted(st['grader_errors']))})", "fix the grader: errored grades score 0 and teach noise")
        elif st["grader_error_rate"] > 0:
            add(warn, "grader_errors", f"{name}: {st['grader_error_rate']:.1%} of samples have grader errors "
                f"({', '.join(sorted(st['grader_errors']))})", "look at the errored grades in the store")
        nd = st.get("nondeterminism", 0.0)
        if nd > th.nondeterminism:
            add(nogo, "grader_nondeterministic", f"{name}: re-grading the same samples changed {nd:.0%} of scores "
                f"(max |Δ| {st['regrade_max_abs_diff']:.3f})", "make the grader deterministic (judge temperature 0 "
                "and a seed, no randomness) or average several judgements")
        elif nd > 0:
            add(warn, "grader_nondeterministic", f"{name}: re-grading changed {nd:.1%} of scores",
                "check the grader's sampling settings")
        for h, a in st["agreement"].items():
            if a["rho"] is not None and a["rho"] < th.agreement:
                add(warn, "grader_disagreement", f"{name}: reward and holdout grader {h!r} disagree (Spearman ρ = "
                    f"{a['rho']:.2f} over {a['n']} samples)", "check which grader is right on the disagreeing samples; "
                    "a reward that disagrees with a trusted check invites reward hacking")
        if st["dropped_fraction"] > th.dropped_fraction:
            add(nogo, "dropped_rollouts", f"{name}: {st['dropped_fraction']:.0%} of rollouts were dropped (tool "
                "server errors)", "fix the tool endpoints before training")
    if data["overlap_share"] > th.overlap_share:
        add(nogo, "train_valid_overlap", f"{len(data['overlap'])} validation prompts ({data['overlap_share']:.0%}) "
            "also appear in the training file", "remove them from one side: validation must be unseen prompts")
    elif data["overlap"]:
        add(warn, "train_valid_overlap", f"{len(data['overlap'])} validation prompts also appear in training",
            "remove them from one side")
    for side in ("train", "valid"):
        d = data[f"{side}_duplicates"]
        if d:
            lines = ", ".join(f"line {x['line']} = line {x['duplicate_of_line']}" for x in d[:5])
            add(warn, f"{side}_duplicates", f"{len(d)} duplicate prompts in the {side} file ({lines}"
                f"{', …' if len(d) > 5 else ''})", "deduplicate (duplicates over-weight some tasks)")
    if not has_valid:
        add(warn, "no_validation", "no validation file: lift and reward hacking cannot be measured",
            "add a validation_file (a few dozen held-out rows)")
    if data["train_rows"] > 50_000:
        add(warn, "train_size", f"{data['train_rows']} training rows (OpenAI's cap: 50,000)", "subsample")
    if data["valid_rows"] > 1_000:
        add(warn, "valid_size", f"{data['valid_rows']} validation rows (OpenAI's cap: 1,000)", "subsample")
    if data["train_rows"] < 24:
        add(warn, "train_size", f"only {data['train_rows']} training rows", "several dozen to a few hundred good rows "
            "are usually needed to see lift")
    return nogo, warn


def run_check(cfg: Any, *, samples: int = 4, max_items: int | None = 32, model: str | None = None,
              regrade: bool = True, out_dir: str | Path | None = None, record: bool = True, progress: bool = False,
              console: Any = None, thresholds: CheckThresholds | None = None,
              pool: Callable[[list[Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Sample the base model (``model`` or the config's) on up to ``max_items`` rows of each split, ``samples``
    each, and return the report (also written to ``out_dir`` as report.json / report.md when given). ``pool``:
    what the curriculum would make of the training samples (``agentrft.rl.curriculum.preview``), reported as
    ``curriculum`` — passed in by the command, as this layer does not import the trainer's."""
    from agentrft.data import load_dataset
    from agentrft.evals.run_eval import EvalSession
    from agentrft.graders.base import build_grader
    from agentrft.graders.batch import grade_trajectory
    from agentrft.store import RunStore

    th = thresholds or CheckThresholds()
    if samples < 2:
        raise ValueError("check: samples must be ≥ 2 (within-item variance needs several samples per item)")
    session = EvalSession(cfg, model or cfg.model_path)
    try:
        known = session.router.names or None
        tpath = cfg.path(cfg.training_file)
        vpath = cfg.path(cfg.validation_file) if cfg.validation_file else None
        train = list(load_dataset(tpath, known_tools=known))
        valid = list(load_dataset(vpath, known_tools=known)) if vpath else None
        data = dataset_problems(train, valid)
        rng = random.Random(cfg.hyperparameters.seed)
        lo, hi = reward_range(cfg.grader)
        splits: dict[str, dict[str, Any]] = {}
        trajs_by: dict[str, list[Any]] = {}
        for name, rows, path in (("train", train, tpath), ("valid", valid, vpath)):
            if not rows:
                continue
            pick = sorted(rng.sample(range(len(rows)), max_items)) if max_items and len(rows) > max_items \
                else list(range(len(rows)))
            subset = [rows[i] for i in pick]
            trajs, _ = session.evaluate(subset, samples=samples, split=f"eval:check-{name}", data_dir=str(path.parent),
                                        progress=progress, console=console)
            again = None
            if regrade:
                fresh = build_grader(cfg.grader)
                items = {r.index: r.item for r in subset}
                again = {t.trace_id: float(grade_trajectory(fresh, t, items[t.row_index], cfg.response_format).score)
                         for t in trajs if not t.dropped}
            splits[name] = assess_split(trajs, lo=lo, hi=hi, regrade=again)
            trajs_by[name] = trajs
    finally:
        session.close()
    nogo, warn = verdict(splits, data, th, has_valid=bool(valid))
    report = {"verdict": "go" if not nogo else "no-go", "reasons": nogo, "warnings": warn, "splits": splits,
              "dataset": data, "model": session.model_ref, "samples_per_item": samples,
              "grader": {"name": session.grader.name, "type": session.grader.type, "version": session.grader.version},
              "thresholds": th.__dict__}
    if pool is not None and "train" in trajs_by:
        report["curriculum"] = pool(trajs_by["train"])
    if record:
        from agentrft.evals.metrics import agent_metrics

        store = RunStore(cfg.store_url)
        run_id = store.create_run(f"check {Path(str(cfg.training_file)).stem}", cfg.model_dump(),
                                  base_model=session.model_ref, output_dir=str(cfg.output_path))
        for name, trajs in trajs_by.items():
            store.record_step(run_id, 0, f"eval:check-{name}", {**agent_metrics(trajs), "check": splits[name]}, trajs)
        store.set_status(run_id, "succeeded")
        report["run_id"] = run_id
    if out_dir is not None:
        write_check_report(report, out_dir)
    return report


def write_check_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = [f"# RFT readiness check: **{report['verdict'].upper()}**", "",
          f"model `{report['model']}`, grader `{report['grader']['name']}` ({report['grader']['type']}, version "
          f"{report['grader']['version']}), {report['samples_per_item']} samples per item", ""]
    if report["reasons"]:
        md += ["## Why not", ""] + [f"- **{r['code']}**: {r['message']}. *Fix:* {r['fix']}" for r in report["reasons"]]
        md.append("")
    if report["warnings"]:
        md += ["## Warnings", ""] + [f"- {r['code']}: {r['message']}. *Fix:* {r['fix']}" for r in report["warnings"]]
        md.append("")
    md += ["## Splits", "", "| split | items | samples | reward mean | std | floor | ceiling | zero-variance | "
           "within-item var | grader errors | nondeterminism |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["splits"].items():
        md.append(f"| {name} | {s['items']} | {s['samples']} | {s['reward_mean']:.3f} | {s['reward_std']:.3f} | "
                  f"{s['floor_share']:.0%} | {s['ceiling_share']:.0%} | {s['zero_variance_share']:.0%} | "
                  f"{s['within_item_variance']:.4f} | {s['grader_error_rate']:.1%} | {s.get('nondeterminism', 0):.1%} |")
    md.append("")
    for name, s in report["splits"].items():
        for h, a in s["agreement"].items():
            rho = "undefined" if a["rho"] is None else f"{a['rho']:.2f}"
            md.append(f"- {name}: agreement with holdout `{h}`: ρ = {rho} over {a['n']} samples")
    d = report["dataset"]
    md += ["", f"Dataset: {d['train_rows']} train / {d['valid_rows']} valid rows, {len(d['train_duplicates'])} + "
           f"{len(d['valid_duplicates'])} duplicate prompts, {len(d['overlap'])} validation prompts seen in training."]
    c = report.get("curriculum")
    if c:
        md += ["", f"Curriculum pool (train samples, one group per item): {c['with_headroom']} of {c['items']} items "
               f"with headroom (mean {c['headroom_mean']:.2f}, {c['weight_share_with_headroom']:.0%} of the sampling "
               f"weight); {c['all_passed']} always solved and {c['all_failed']} never solved, retired after "
               f"{c['retire_after']} such groups."]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out
