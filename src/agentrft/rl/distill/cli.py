"""``agentrft distill`` (warm-start a student on a teacher endpoint's passing trajectories, agentrft.rl.distill) and
``agentrft reward-model train`` (a reward model from the store's trajectories, agentrft.rl.reward_model).

Exit codes: 0 done, 2 a user error (bad config, data, teacher endpoint, nothing passed), with one clear line.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    from agentrft.cli import exit_with_user_error  # one line, markup-safe, secrets masked, exit 2
    from agentrft.config import ConfigError
    from agentrft.data import DatasetError
    from agentrft.graders.base import GraderSpecError
    from agentrft.rl.distill.offline import DistillError
    from agentrft.rl.distill.teacher import TeacherError
    from agentrft.rl.reward_model import RewardModelError
    from agentrft.rollout.stack import ModelLoadError
    from agentrft.store import StoreError

    try:
        yield
    except (ConfigError, DatasetError, GraderSpecError, DistillError, TeacherError, RewardModelError, ModelLoadError,
            StoreError, FileNotFoundError) as e:
        exit_with_user_error(e)


def distill_config(config: Optional[Path], env: Optional[str], data: Optional[Path], student: Optional[str],
                   out: Optional[Path]) -> Any:
    """The run config: ``--config`` with the command line over it, or one built from ``--env`` and ``--student``."""
    from agentrft.config import ConfigError, load_config, parse_config

    over: dict[str, Any] = {}
    if data is not None:
        over["training_file"] = str(data.resolve())
    if student is not None:
        p = Path(student)
        over["model"] = str(p.resolve()) if p.exists() else student
    if out is not None:
        over["output_dir"] = str(out.resolve())
    if config is not None:
        if env is not None:
            over["environment"] = env
        return load_config(config, over)
    if env is None:
        raise ConfigError("agentrft distill needs the run's tools and grader: --config run.yaml, or --env NAME for a "
                          "bundled environment (repo_locator, support_desk)")
    if "training_file" not in over or "model" not in over:
        raise ConfigError("agentrft distill --env: give --data train.jsonl and --student MODEL (no --config)")
    return parse_config({"environment": env, **over}, base_dir=Path.cwd(), source="<command line>")


rm_app = typer.Typer(add_completion=False, no_args_is_help=True,
                     help="Reward models from the store's trajectories (the `reward_model` grader type).")


@rm_app.command("train")
def rm_train(
    runs: list[str] = typer.Argument(..., help="run ids (or unique prefixes) whose trajectories are the data"),
    base: str = typer.Option(..., "--base", help="base model (HF id or directory) the scoring head sits on"),
    out: Path = typer.Option(..., "--out", help="directory for reward_model.json"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL (default: sqlite:///runs/agentrft.db)"),
    label: str = typer.Option("reward", "--label", help="reward (grader scores) | audit (reviewer verdicts)"),
    split: Optional[str] = typer.Option(None, "--split", help="only this split (train, valid, eval:...)"),
    holdout_fraction: float = typer.Option(0.2, "--holdout-fraction", help="share of rows held out"),
    seed: int = typer.Option(0, "--seed"),
    l2: float = typer.Option(1e-3, "--l2", help="L2 weight on the head"),
    max_tokens: int = typer.Option(512, "--max-tokens", min=16, help="tokens of each trajectory read"),
) -> None:
    """Fit a scoring head on a frozen base to the runs' trajectories; report held-out rank correlation."""
    from agentrft.cli import _quiet_libraries
    from agentrft.rl.reward_model import train_reward_model
    from agentrft.store import RunStore

    _quiet_libraries()
    with user_errors():
        st = RunStore(store or "sqlite:///runs/agentrft.db", mode="existing")
        res = train_reward_model(st, runs, base, out, label=label, split=split,
                                 holdout_fraction=holdout_fraction, seed=seed, l2=l2, max_tokens=max_tokens)
    v = res["validation"]
    rho = v["spearman_holdout"]
    console.print(f"reward model written to {out}: {v['n_train']} training / {v['n_holdout']} held-out trajectories; "
                  f"Spearman rho held-out {'n/a' if rho is None else f'{rho:.3f}'}, train "
                  f"{v['spearman_train'] if v['spearman_train'] is None else round(v['spearman_train'], 3)}")
    console.print(f'use it as a grader: {{"type": "reward_model", "path": "{out}"}}')


def register(app: typer.Typer) -> None:
    app.add_typer(rm_app, name="reward-model")

    @app.command()
    def distill(
        teacher: Optional[str] = typer.Option(None, "--teacher", help="the teacher's OpenAI-compatible base URL "
                                              "(e.g. http://127.0.0.1:8000/v1); default: distill.teacher.base_url"),
        teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="the teacher's model name there"),
        data: Optional[Path] = typer.Option(None, "--data", help="training rows (OpenAI RFT JSONL); default: the "
                                            "config's training_file"),
        config: Optional[Path] = typer.Option(None, "--config", help="run config (YAML): student model, tools, "
                                              "grader, limits, distill section"),
        env: Optional[str] = typer.Option(None, "--env", help="a bundled environment's tools and grader (without "
                                          "--config)"),
        student: Optional[str] = typer.Option(None, "--student", help="the student model (default: the config's "
                                              "model)"),
        out: Optional[Path] = typer.Option(None, "--out", help="output_dir: the run's directory and default store"),
        rows: Optional[int] = typer.Option(None, "--rows", min=1, help="only the first N training rows"),
        no_eval: bool = typer.Option(False, "--no-eval", help="skip the student's validation eval"),
        no_train: bool = typer.Option(False, "--no-train", help="only collect and grade the teacher's trajectories"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Distil a teacher endpoint: it runs as the agent with the real tools, its passing trajectories (graded,
        recorded with token usage and cost) warm-start the student by SFT; then the student is evaluated."""
        from agentrft.cli import _quiet_libraries
        from agentrft.rl.distill.offline import run_distill

        _quiet_libraries()
        with user_errors():
            cfg = distill_config(config, env, data, student, out)
            res = run_distill(cfg, teacher_url=teacher, teacher_model=teacher_model, max_rows=rows,
                              evaluate_student=not no_eval, train=not no_train, say=err.print)
        summary = {"run_id": res.run_id, "teacher": res.teacher, "sft": res.sft,
                   "student_dir": str(res.student_dir) if res.student_dir else None, "demos": str(res.demos_path),
                   "student_eval": {k: res.student_eval[k] for k in ("reward_mean", "pass_rate",
                                                                     "tool_calls_per_traj")}
                   if res.student_eval else None, "wall_s": res.wall_s}
        if as_json:
            console.print_json(json.dumps(summary, default=str))
            return
        t = res.teacher
        console.print(f"run {res.run_id}: teacher reward {t['reward_mean']:.3f} (pass {t['pass_rate']:.2f}), kept "
                      f"{t['kept_trajectories']}/{t['trajectories']}, {t['teacher_prompt_tokens']} prompt + "
                      f"{t['teacher_completion_tokens']} completion tokens"
                      + (f", cost {t['teacher_cost']:.4f}" if "teacher_cost" in t else ""))
        if res.student_dir:
            console.print(f"student written to {res.student_dir}"
                          + (f"; validation reward {res.student_eval['reward_mean']:.3f}, pass rate "
                             f"{res.student_eval['pass_rate']:.2f}" if res.student_eval else ""))
        console.print(f"total {res.wall_s:.1f}s")
