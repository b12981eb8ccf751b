"""The data-parallel learner step: 2 torchrun processes over gloo give the loss, the gradients and the updated
weights of one process on the same batch; FSDP2 is refused without CUDA, naming the field."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrft.rl.distributed import DistributedConfig, check_strategy

WORKER = str(Path(__file__).resolve().parent / "distributed_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tiny_model, tmp_path):
    """Tolerance: fp32, the same sums in another order and split over ranks. Loss within 1e-6 relative, every
    gradient within rtol 1e-4 / atol 1e-7 (observed: max |diff| 2e-8). Updated weights within 2e-5 absolute, 0.2% of
    one lr = 1e-2 step: AdamW divides by sqrt(v) + 1e-8, which for gradients of ~1e-8 (LoRA A's at step 2) turns
    their fp32 rounding into visible update differences (observed: max 9e-6)."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, WORKER, str(tiny_model), str(one)], env=_env(), check=True, timeout=600)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_port()), WORKER, str(tiny_model),
                        str(two)], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a, b = torch.load(one), torch.load(two)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert a["grads"].keys() == b["grads"].keys() and len(a["grads"]) > 0
    nonzero = 0
    for name in a["grads"]:
        assert torch.allclose(a["grads"][name], b["grads"][name], rtol=1e-4, atol=1e-7), name
        assert torch.allclose(a["params"][name], b["params"][name], rtol=0, atol=2e-5), name
        nonzero += int(a["grads"][name].abs().max() > 0)
    assert nonzero == len(a["grads"])  # step 2: both LoRA matrices have gradients (B moved at step 1)
    diffs = [float((a["grads"][n] - b["grads"][n]).abs().max()) for n in a["grads"]]
    pdiffs = [float((a["params"][n] - b["params"][n]).abs().max()) for n in a["params"]]
    print(f"max |grad diff| {max(diffs):.3g}, max |weight diff| {max(pdiffs):.3g}, loss {a['loss']} vs {b['loss']}")


def test_fsdp2_is_a_gpu_option_and_refused_on_cpu():
    cfg = DistributedConfig.model_validate({"strategy": "fsdp2"})
    with pytest.raises(ValueError, match=r"distributed.strategy: fsdp2 .* has none"):
        check_strategy(cfg, cuda=False)
    assert check_strategy(cfg, cuda=True) == "nccl"
    assert check_strategy(DistributedConfig(), cuda=False) == "gloo"
    with pytest.raises(ValueError, match="distributed.backend: nccl needs CUDA"):
        check_strategy(DistributedConfig(backend="nccl"), cuda=False)
    with pytest.raises(ValueError, match="strategy"):
        DistributedConfig.model_validate({"strategy": "zero3"})
