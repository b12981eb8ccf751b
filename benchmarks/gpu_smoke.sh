#!/usr/bin/env bash
# GPU smoke test for the remote sampler against a real vLLM (not CI; meant to finish in under 10 minutes).
#
#   pip install vllm          # on the GPU machine (its torch pin may need its own environment: set VLLM=...)
#   MODEL=Qwen/Qwen2.5-0.5B-Instruct bash benchmarks/gpu_smoke.sh
#
# What it does: writes the lookup task (tests/lookup_task.py) and a run config whose sampler is vLLM, started by the
# trainer itself (sampler.command) with LoRA hot-loading enabled; trains STEPS steps with LoRA, the learner in this
# process (CPU fp32: the learner on the GPU is not implemented yet, docs/gpu.md); then checks from the run store that
# every step recorded a finite sampler-vs-learner KL below the alert and every trajectory a policy version, and
# prints steps per hour and sampled tokens per second of the engine.
#
# Status: written without a GPU, NOT RUN yet. Expect to adjust vLLM flags for your version on its first run.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
PORT=${PORT:-8011}
STEPS=${STEPS:-3}
WORK=${WORK:-/tmp/agentrft-gpu-smoke}
VLLM=${VLLM:-vllm}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
export PYTHONPATH="$HERE/src:$HERE/tests:${PYTHONPATH:-}"
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True   # vLLM's /v1/load_lora_adapter exists only with it

python - "$WORK" "$MODEL" "$PORT" "$STEPS" "$VLLM" <<'EOF'
import sys, shlex
from pathlib import Path
import yaml
import lookup_task as lt

work, model, port, steps, vllm = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
paths = lt.write_task(work / "data", seed=0, n_train=64, n_valid=8, n_demos=8)
cmd = (f"{vllm} serve {shlex.quote(model)} --port {port} --enable-lora --max-lora-rank 16 --max-loras 4 "
       "--gpu-memory-utilization 0.5 --max-model-len 4096")
cfg = {
    "name": "gpu-smoke", "model": model, "training_file": str(paths["train"]), "tools": ["lookup_task:lookup"],
    "grader": lt.GRADER_SHAPED, "output_dir": str(work / "runs"),
    "sampler": {"type": "remote", "base_url": f"http://127.0.0.1:{port}/v1", "model": model, "command": cmd,
                "startup_timeout_s": 400, "seed_mode": "mixed", "mismatch_kl_alert": 0.05},
    "hyperparameters": {"max_steps": steps, "batch_size": 4, "group_size": 4, "learning_rate": 1e-5,
                        "max_new_tokens": 128, "max_turns": 4, "max_episode_steps": 4, "micro_batch_size": 4,
                        "max_context_tokens": 4096, "max_signal_free_steps": 0, "lora": {"r": 16, "alpha": 32}},
}
(work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
EOF

start=$(date +%s)
timeout 540 python -m agentrft.cli train "$WORK/config.yaml" --no-progress
end=$(date +%s)

python - "$WORK" "$((end - start))" "$STEPS" <<'EOF'
import math, sys
from pathlib import Path
from agentrft.store import RunStore

work, wall, steps = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
store = RunStore("sqlite:///" + str(work / "runs" / "agentrft.db"))
run = store.list_runs()[0]
m = store.step_metrics(run["id"], split="train")
trajs = store.trajectories(run["id"], split="train")
assert len(m) == steps, f"{len(m)} of {steps} steps recorded"
for x in m:
    kl = x["sampler_mismatch_kl"]
    assert math.isfinite(kl) and not x.get("alert/sampler_mismatch_kl"), (x["step"], kl)
    print(f"step {x['step']}: reward {x['reward_mean']:.3f}  mismatch KL {kl:.2e}  lag {x['policy_lag_max']:.0f}  "
          f"sampling {x['time/sampling']:.1f}s  training {x['time/training']:.1f}s  sync {x.get('time/weight_sync', 0):.1f}s")
assert all(t["checkpoint_id"] and ":policy-" in t["checkpoint_id"] for t in trajs)
tokens = sum(t["completion_tokens"] for t in trajs)
sampling = sum(x["time/sampling"] for x in m)
print(f"OK: {steps} steps in {wall:.0f}s wall (engine start included): {steps * 3600 / wall:.0f} steps/hour; "
      f"{tokens} sampled tokens, {tokens / max(sampling, 1e-9):.0f} tokens/s while sampling")
EOF
