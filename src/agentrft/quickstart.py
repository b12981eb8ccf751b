"""``agentrft quickstart``: the whole flywheel offline on a laptop CPU, ending with a report that shows lift.

1. generate a bundled environment's data (train/validation/demos, tools over real state, graders);
2. build a tiny tool-calling model (tokenizer trained on the environment's text, small Llama config) and give
   it what a pretrained base model brings: a short pre-training on transcripts of a scripted solver on *other*
   rows (another seed; never the train/validation rows), so it can copy names from its context — without this a
   ~1M-parameter model from scratch does not learn to copy within a quickstart's budget (measured: no copying
   after 500 SFT steps on the imperfect demos alone; see docs/environments.md);
3. warm-start it with SFT on the deliberately imperfect demonstrations (redundant calls, wrong answers) — the
   policy RL starts from;
4. measure the baseline, run RFT with checkpoint evals (all recorded in the run store);
5. write the report: curves, baseline-vs-best with paired intervals, one task before and after, summary.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

# One preset for both environments; the measured runs are in the README and docs/environments.md.
_PRESET: dict[str, Any] = {
    "generate": {"n_train": 1200, "n_valid": 50, "n_demos": 1200, "wrong_frac": 0.5, "redundant_frac": 0.6},
    # scripted optimal transcripts of separate rows (seed + 1000) for the base model's pre-training
    "pretrain_rows": 1000,
    # until copying is learned: clean transcripts' loss drops sharply when it is (a phase change whose step varies
    # between runs; docs/environments.md), capped at 12 epochs
    "pretrain": {"epochs": 12, "batch_size": 16, "learning_rate": 1e-3, "until_loss": 0.04},
    # 8 heads of 16 dims (4 key/value heads), the same weights as 4 × 32: more heads, more copying circuits. With
    # 4 heads the model copied two- and three-file lists from grep's output but not four (0 of 21 exact), and after
    # RL it answered every rename with three files; with 8 it copied 16 of 21 (seed 0; other seeds in docs/levers.md)
    "model": {"vocab_size": 1024, "hidden_size": 128, "num_layers": 4, "num_heads": 8, "num_kv_heads": 4,
              "intermediate_size": 384},
    "sft": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3},
    # RL: 100 steps with an eval every 10 and near-greedy evals (T 0.1): a checkpoint is judged on what it does,
    # not on its sampling noise, and 50 steps stopped short of what 100 reach; lr 3e-4, not 5e-4: from the same
    # warm start its evals held 0.87-0.98 pass from step 10 where 5e-4's swung 0.81-0.96 (runs in docs/levers.md,
    # "The quickstart's pass rate")
    "hyperparameters": {"max_steps": 100, "batch_size": 8, "group_size": 8, "learning_rate": 3e-4,
                        "eval_interval": 10, "eval_samples": 2, "max_new_tokens": 64, "max_turns": 6,
                        "max_episode_steps": 6, "max_context_tokens": 1024, "micro_batch_size": 32,
                        "lora": None, "temperature": 1.0, "eval_temperature": 0.1},
}
PRESETS: dict[str, dict[str, Any]] = {"repo_locator": _PRESET, "support_desk": _PRESET}


def _threads_for_load() -> int | None:
    """One torch thread when the machine is already busy (1-minute load ≥ its cores) and the user set none: a
    tiny model's small ops on 2 threads wait at barriers for a descheduled partner (docs/levers.md has the
    measurement). Returns the count set, or None when left alone."""
    import os

    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return None
    if os.getloadavg()[0] < (os.cpu_count() or 1):
        return None
    import torch

    torch.set_num_threads(1)
    return 1


def run_quickstart(env_name: str = "repo_locator", out: str | Path = "runs/quickstart", *, seed: int = 0,
                   steps: int | None = None, console: Any = None, progress: bool = True) -> dict[str, Any]:
    from rich.console import Console

    from agentrft.config import ConfigError, load_config
    from agentrft.environments import get_environment
    from agentrft.evals.report import build_report
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model
    from agentrft.rl.sft import run_sft
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    console = console or Console(stderr=True)
    if env_name not in PRESETS:
        # a ConfigError, so the CLI answers with this message and exit 2 (a plain ValueError was a traceback)
        raise ConfigError(f"--env {env_name!r}: the quickstart runs a bundled environment ({', '.join(PRESETS)}), "
                          "whose preset it was tuned on; for an environment of your own, build a model with "
                          "`agentrft model tiny --env` and train it with a run config that names it "
                          "(docs/extending.md)")
    preset = PRESETS[env_name]
    env = get_environment(env_name)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}
    threads = _threads_for_load()
    if threads:
        console.print(f"the machine is busy (load ≥ its cores): torch uses {threads} thread")

    t = time.perf_counter()
    console.print(f"[bold]1/5[/] generating the {env_name} environment (seed {seed})")
    files = env.generate(out / "data", seed=seed, **preset["generate"])
    n_pre = preset["pretrain_rows"]
    pre_files = env.generate(out / "pretrain_data", seed=seed + 1000, n_train=n_pre, n_valid=0, n_demos=n_pre,
                             wrong_frac=0.0, redundant_frac=0.0)
    phases["generate"] = time.perf_counter() - t

    from agentrft.progress import sft_progress

    t = time.perf_counter()
    console.print("[bold]2/5[/] building a tiny tool-calling model (tokenizer trained on the environment's text) "
                  f"and pre-training it on {n_pre} scripted transcripts of other rows")
    corpus = [*env.corpus(out / "data"), *env.corpus(out / "pretrain_data")]
    model_dir = build_tiny_model(corpus, out / "model", TinyModelSpec(seed=seed, **preset["model"]))
    phases["build_model"] = time.perf_counter() - t
    t = time.perf_counter()
    with sft_progress("pretrain", console) as on_step:
        base = run_sft(str(model_dir), pre_files["demos"], out / "base", seed=seed, **preset["pretrain"],
                       on_step=on_step)
    phases["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    console.print("[bold]3/5[/] SFT warm-start on imperfect demonstrations")
    with sft_progress("sft", console) as on_step:
        sft = run_sft(str(base.out_dir), files["demos"], out / "sft", seed=seed, **preset["sft"], on_step=on_step)
    phases["sft"] = time.perf_counter() - t

    hp = dict(preset["hyperparameters"], seed=seed)
    if steps:
        hp["max_steps"] = steps
    config = {
        "name": f"quickstart-{env_name}",
        "model": str(sft.out_dir),
        "training_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "tools": list(env.tool_refs),
        "grader": env.grader,
        "holdout_graders": dict(env.holdout_graders or {}),
        "hyperparameters": hp,
        "output_dir": str(out / "runs"),
    }
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = load_config(cfg_path)

    t = time.perf_counter()
    console.print(f"[bold]4/5[/] baseline eval, then RFT for {hp['max_steps']} steps with evals every "
                  f"{hp['eval_interval']} (config: {cfg_path})")
    run_id = Trainer(cfg, progress=progress, console=console).run()
    phases["rft_with_evals"] = time.perf_counter() - t

    t = time.perf_counter()
    console.print("[bold]5/5[/] writing the report")
    store = RunStore(cfg.store_url)
    summary = build_report(store, run_id, out / "report", phases=phases,
                           title=f"agentrft quickstart — {env_name}")
    phases["report"] = time.perf_counter() - t
    summary["phases_s"] = phases
    summary["wall_s"] = sum(phases.values())
    summary["environment"] = env_name
    summary["torch_threads"] = __import__("torch").get_num_threads()
    summary["pretrain"] = {"steps": base.steps, "first_loss": base.first_loss, "last_loss": base.last_loss,
                           "rows": n_pre}
    summary["sft"] = {"steps": sft.steps, "first_loss": sft.first_loss, "last_loss": sft.last_loss}
    (out / "report" / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
