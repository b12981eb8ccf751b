"""benchmarks/bench_serve.py runs end to end on a tiny size (slow: it builds a model and drives two servers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_serve_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "serve.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--size", "1M", "--requests", "8",
                    "--concurrency", "1", "4", "--max-tokens", "4", "--adapters", "1", "2", "--out", str(out)],
                   env=env, check=True, timeout=900, capture_output=True)
    r = json.loads(out.read_text())
    for c in ("1", "4"):
        lvl = r["levels"][c]
        assert lvl["agentrft"]["completion_tokens"] > 0 and lvl["hf_generate"]["completion_tokens"] > 0
        assert lvl["tokens_per_s_ratio"] == pytest.approx(lvl["agentrft"]["tokens_per_s"] / lvl["hf_generate"]["tokens_per_s"])
    assert set(r["rss_mb_with_adapters"]) == {"none", "1", "2"}
