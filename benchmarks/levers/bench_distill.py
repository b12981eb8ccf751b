"""Distillation lever: a teacher served by ``agentrft serve``, a freshly built tiny student, ``agentrft distill``.

    python benchmarks/levers/bench_distill.py --quickstart runs/quickstart [--teacher-dir DIR] [--rows N]

1. the teacher: the quickstart's best checkpoint (``report/summary.json``: run and best step), or ``--teacher-dir``;
   served by a real ``agentrft serve`` subprocess on loopback;
2. the teacher's validation reward: the teacher as the agent (the same chat path ``distill`` uses) on the
   validation rows at the run's eval temperature, graded by the run's grader;
3. a freshly built tiny student (``agentrft model tiny``'s builder: tokenizer trained on the environment's text, the
   quickstart's model shape, another seed, untrained weights);
4. ``agentrft distill`` on ``--rows`` training rows: teacher rollouts, grading, the passing ones as SFT demos for
   the student, then the student's validation eval (in-process, as any checkpoint is evaluated);
5. the result: student / teacher validation reward (the issue's bar: ≥ 0.90), the teacher's billed tokens, wall
   time per phase, and the load average (the machine may be shared: compare ratios within one run).

Writes ``--out``/bench_distill.json and prints one line for the levers table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # distill_helpers.served: the serve subprocess helper


def best_checkpoint(qs: Path) -> Path:
    s = json.loads((qs / "report" / "summary.json").read_text())
    path = qs / "runs" / s["run_id"] / "checkpoints" / f"step-{int(s['best_step']):06d}"
    if not path.exists():  # step 0 is the warm-started model itself
        path = qs / "sft"
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quickstart", type=Path, default=ROOT / "runs" / "quickstart")
    ap.add_argument("--teacher-dir", type=Path, default=None, help="default: the quickstart's best checkpoint")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_distill")
    ap.add_argument("--rows", type=int, default=400, help="training rows the teacher runs on")
    ap.add_argument("--samples-per-row", type=int, default=1)
    ap.add_argument("--valid-rows", type=int, default=None, help="default: all validation rows")
    ap.add_argument("--epochs", type=int, default=6, help="SFT epochs over the kept teacher trajectories")
    ap.add_argument("--seed", type=int, default=1, help="the student's init seed")
    ap.add_argument("--student", type=Path, default=None,
                    help="start from this model instead of a freshly built one (e.g. the quickstart's `base`: a "
                         "fresh tiny model pre-trained on scripted transcripts of other rows, never on this task's "
                         "demos or RL)")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--on-policy-steps", type=int, default=0,
                    help="then this many steps of on-policy distillation from the distilled student (the teacher "
                         "must share its tokenizer), evaluated at the end")
    ap.add_argument("--on-policy-lr", type=float, default=5e-4)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import yaml

    torch.set_num_threads(1)
    from distill_helpers import served

    from agentrft.config import load_config
    from agentrft.data import load_dataset
    from agentrft.environments import get_environment
    from agentrft.evals.metrics import agent_metrics
    from agentrft.graders.batch import grade_trajectories
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model
    from agentrft.quickstart import PRESETS
    from agentrft.rl.distill.offline import run_distill
    from agentrft.rl.distill.teacher import TeacherClient, TeacherTask, run_teacher
    from agentrft.rollout.stack import RolloutStack

    qs = args.quickstart.resolve()
    teacher_dir = (args.teacher_dir or best_checkpoint(qs)).resolve()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((qs / "config.yaml").read_text())
    env_name = str(raw["name"]).removeprefix("quickstart-")
    phases: dict[str, float] = {}
    load = [os.getloadavg()[0]]

    hp = dict(raw["hyperparameters"])
    if args.valid_rows:
        hp["eval_rows"] = args.valid_rows
    cfg_data = {**raw, "hyperparameters": hp, "output_dir": str(out / "runs"), "name": "bench-distill",
                "distill": {"samples_per_row": args.samples_per_row, "temperature": hp.get("temperature", 1.0),
                            "sft_epochs": args.epochs, "sft_batch_size": 16, "sft_learning_rate": 1e-3,
                            "workers": args.slots}}

    t = time.perf_counter()
    if args.student is not None:
        student0 = args.student.resolve()
    else:
        env = get_environment(env_name)
        corpus = [*env.corpus(qs / "data"), *env.corpus(qs / "pretrain_data")]
        student0 = build_tiny_model(corpus, out / "student0",
                                    TinyModelSpec(seed=args.seed, **PRESETS[env_name]["model"]))
    phases["build_student"] = time.perf_counter() - t
    cfg_data["model"] = str(student0)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg_data, sort_keys=False))
    cfg = load_config(out / "config.yaml")

    result: dict = {"teacher_dir": str(teacher_dir), "student_start": str(student0), "environment": env_name,
                    "rows": args.rows,
                    "epochs": args.epochs, "seed": args.seed}
    with served(teacher_dir, out / "teacher-serve.db", slots=args.slots) as base_url:
        # the teacher's validation reward through the same chat path
        t = time.perf_counter()
        stack = RolloutStack(cfg)
        valid = list(load_dataset(cfg.path(cfg.validation_file)))
        if cfg.hyperparameters.eval_rows:
            valid = valid[: cfg.hyperparameters.eval_rows]
        client = TeacherClient(base_url, teacher_dir.name)
        tasks = [TeacherTask(row=r, seed=17 + r.index * 7919 + k, sample_index=k,
                             data_dir=str(cfg.path(cfg.validation_file).parent))
                 for r in valid for k in range(cfg.hyperparameters.eval_samples)]
        vt = run_teacher(client, stack.router, tasks, stack.limits,
                         temperature=cfg.hyperparameters.eval_temperature or cfg.hyperparameters.temperature,
                         max_tokens=cfg.hyperparameters.max_new_tokens, workers=args.slots)
        grade_trajectories(vt, {r.index: r.item for r in valid}, stack.grader)
        tm = agent_metrics(vt)
        client.close()
        stack.close()
        phases["teacher_eval"] = time.perf_counter() - t
        result["teacher_valid"] = {k: tm[k] for k in ("reward_mean", "pass_rate", "tool_calls_per_traj")}
        print(f"teacher validation reward {tm['reward_mean']:.3f} pass {tm['pass_rate']:.2f} "
              f"({phases['teacher_eval']:.0f}s)", flush=True)
        load.append(os.getloadavg()[0])

        t = time.perf_counter()
        res = run_distill(cfg, teacher_url=base_url, teacher_model=teacher_dir.name, max_rows=args.rows,
                          say=lambda s: print(s, flush=True))
        phases["distill_total"] = time.perf_counter() - t
        if args.on_policy_steps and res.student_dir is not None:
            from agentrft.rl.trainer import Trainer
            from agentrft.store import RunStore

            t = time.perf_counter()
            op = dict(cfg_data, model=str(res.student_dir), name="bench-distill-on-policy")
            op["hyperparameters"] = {**hp, "max_steps": args.on_policy_steps, "eval_interval": args.on_policy_steps,
                                     "learning_rate": args.on_policy_lr, "max_signal_free_steps": 0, "lora": None}
            op["distill"] = {**cfg_data["distill"], "on_policy": True,
                             "teacher": {"base_url": base_url, "model": teacher_dir.name}}
            (out / "on_policy.yaml").write_text(yaml.safe_dump(op, sort_keys=False))
            ocfg = load_config(out / "on_policy.yaml")
            rid = Trainer(ocfg, progress=False).run()
            phases["on_policy"] = time.perf_counter() - t
            st = RunStore(ocfg.store_url)
            tr = st.step_metrics(rid, split="train")
            va = st.step_metrics(rid, split="valid")
            result["on_policy"] = {
                "run_id": rid, "steps": args.on_policy_steps, "learning_rate": args.on_policy_lr,
                "reverse_kl_first": tr[0].get("distill/reverse_kl"), "reverse_kl_last": tr[-1].get("distill/reverse_kl"),
                "valid_reward_start": va[0]["reward_mean"], "valid_reward_end": va[-1]["reward_mean"],
                "valid_pass_end": va[-1]["pass_rate"],
                "ratio_end": va[-1]["reward_mean"] / tm["reward_mean"] if tm["reward_mean"] else None}
            print(f"on-policy: {result['on_policy']}", flush=True)
    load.append(os.getloadavg()[0])
    phases["teacher_rollouts"] = res.teacher["time/teacher"]
    phases["student_sft"] = res.sft.get("wall_s", 0.0)
    sv = res.student_eval or {}
    result.update({
        "run_id": res.run_id, "teacher_train": res.teacher, "sft": res.sft,
        "student_valid": {k: sv.get(k) for k in ("reward_mean", "pass_rate", "tool_calls_per_traj")},
        "ratio": (sv.get("reward_mean", 0.0) / tm["reward_mean"]) if tm["reward_mean"] else None,
        "teacher_tokens": res.teacher["teacher_prompt_tokens"] + res.teacher["teacher_completion_tokens"],
        "phases_s": phases, "load_avg_1m": load, "cpu_count": os.cpu_count(),
        "command": " ".join(["python", "benchmarks/levers/bench_distill.py", *sys.argv[1:]]),
    })
    (out / "bench_distill.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result.get(k) for k in ("teacher_valid", "student_valid", "ratio", "teacher_tokens",
                                                 "on_policy", "phases_s", "load_avg_1m")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
