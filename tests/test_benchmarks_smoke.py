"""The benchmark harness does not rot: its pieces run on tiny sizes, its summary has the required keys, and the
continuous-batching engine it measures records exactly what the learner recomputes.

No timing is asserted (the benchmark is the judge of speed); what is asserted is what would make its figures
wrong: FLOP accounting, engine/baseline token bookkeeping, identical sampled ids across engines, the report's keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import harness, sections  # noqa: E402
from benchmarks import workload as W  # noqa: E402

REQUIRED = ("matmul_gflops", "update_mfu", "rollout_speedup_vs_hf_generate", "grpo_step_speedup_vs_trl",
            "framework_overhead_share")


def test_workload_tool_and_reward_are_shared_and_strict(tmp_path):
    paths = W.write_task(tmp_path, n_train=8, n_valid=2, n_demos=4)
    rows = [json.loads(x) for x in paths["train"].read_text().splitlines()]
    for r in rows:
        assert r["answer"] == "ANSWER: " + ", ".join(W.TABLE[k] for k in r["keys"])
    assert W.lookup("K1") == f"K1 is {W.TABLE['K1']}" and W.lookup("K99") == "no key K99"
    assert W.reward(" ANSWER: red ", "ANSWER: red") == 1.0 and W.reward("ANSWER: Red", "ANSWER: red") == 0.0


def test_matmul_params_counts_linears_once_not_the_embedding(tiny_model):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model)
    c = m.config
    n = sections._matmul_params(m)
    per_layer = (c.hidden_size * c.hidden_size * 2 + c.hidden_size * (c.hidden_size // c.num_attention_heads)
                 * c.num_key_value_heads * 2 + 3 * c.hidden_size * c.intermediate_size)
    assert n == c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size  # + the tied LM head, once


def test_update_section_runs_and_reports_mfu(tiny_model, tmp_path):
    cfg = {"sizes": ["1M"], "models": {"1M": str(tiny_model)}, "n_seq": 2, "seq_len": 32, "micro_batch": 2,
           "reps": 1, "peak_gflops": 50.0}
    res = sections.bench_update(cfg)["update"]
    for mode in ("full", "lora"):
        r = res[f"1M/{mode}"]
        assert r["tokens"] == 32 + 30 and r["seconds"] > 0
        # the output layer's FLOPs count only at the positions the learner scores (the last 3/4 of each sequence)
        assert r["head_tokens"] == (32 - 8) + (30 - 7)
        assert r["mfu"] == pytest.approx(r["achieved_gflops"] / 50.0)
    # LoRA's model FLOPs per token are 4N (no weight gradients), full fine-tuning's 6N
    assert res["1M/lora"]["model_tflop"] < res["1M/full"]["model_tflop"]


def _rows(lookup_files, n):
    from agentrft.data import load_dataset

    return list(load_dataset(lookup_files["train"]))[:n]


def test_continuous_engine_records_what_the_learner_recomputes(tiny_model, lookup_files):
    """Same seeds → the continuous engine (persistent KV slots) samples exactly the batched sampler's ids, and
    its recorded log-probs equal the learner's teacher-forced ones at every sampled position."""
    from agentrft.policy.learner import Learner, load_model_and_tokenizer
    from agentrft.policy.sampling import SamplingParams
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.agent import AgentLoop, RolloutLimits, RolloutTask
    from agentrft.rollout.render import ChatRenderer
    from agentrft.tools.router import build_router

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(str(tiny_model))
    learner = Learner(model, lora=None, learning_rate=1e-4, micro_batch_size=4, pad_id=tok.pad_token_id)
    r = ChatRenderer(tok)
    sampler = TransformersSampler(learner.model, stop_ids=r.stop_ids, pad_id=tok.pad_token_id)
    router = build_router(["lookup_task:lookup"], timeout_s=5, max_workers=4)
    rows = _rows(lookup_files, 5)
    out = {}
    for cont in (True, False):
        # 3 slots for 5 tasks: finished trajectories hand their slot on
        loop = AgentLoop(sampler, r, router, limits=RolloutLimits(max_turns=3), max_batch=3, continuous=cont)
        tasks = [RolloutTask(row=x, seed=11 + i) for i, x in enumerate(rows)]
        out[cont] = loop.run(tasks, SamplingParams(temperature=1.0, max_new_tokens=12))
    router.close()
    assert [t.token_ids for t in out[True]] == [t.token_ids for t in out[False]]
    assert [t.loss_mask for t in out[True]] == [t.loss_mask for t in out[False]]
    scored = learner.score([t.token_ids for t in out[True]])
    n = 0
    for t, lp in zip(out[True], scored):
        for i, m in enumerate(t.loss_mask):
            if m:
                assert abs(lp[i] - t.logprobs[i]) < 1e-4
                n += 1
    assert n == sum(t.completion_tokens for t in out[True]) > 0


def test_engine_keeps_prefix_across_turns_and_feeds_only_new_tokens(tiny_model):
    """Feeding a continuation processes only the new tokens; the logits equal a fresh full-prefix forward."""
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.policy.engine import SlotEngine
    from agentrft.policy.sampling import SamplingParams

    model, tok = load_model_and_tokenizer(str(tiny_model))
    model.eval()
    eng = SlotEngine(model, stop_ids=set(), pad_id=tok.pad_token_id, params=SamplingParams(max_new_tokens=3), slots=2)
    a = list(range(20, 40))
    eng.feed(0, a, torch.Generator().manual_seed(0), 3)
    eng.feed(1, a[:7], torch.Generator().manual_seed(1), 3)
    done = []
    while eng.busy():
        done += eng.step()
    g0 = dict(done)[0]
    assert len(g0.ids) == 3 and eng.cached[0] == len(a) + 2  # the last sampled token waits as pending input
    cont = [50, 51, 52, 53]
    eng.feed(0, cont, torch.Generator().manual_seed(2), 1)
    seq = a + g0.ids + cont
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
        got = torch.log_softmax(eng._forward([0])[0].float(), -1)
    assert eng.cached[0] == len(seq)
    assert torch.allclose(got, ref, atol=1e-4)


def test_hf_generate_baseline_builds_trajectories_the_same_way(tiny_model, lookup_files):
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.policy.sampling import SamplingParams
    from agentrft.rollout.agent import RolloutLimits

    model, tok = load_model_and_tokenizer(str(tiny_model))
    rows = _rows(lookup_files, 2)
    res = sections.run_hf_generate(model, tok, rows, 2, SamplingParams(1.0, 1.0, 8), RolloutLimits(2, 2, 512), 0,
                                   batch=3)
    assert res["trajectories"] == 4 and 0 < res["gen_tokens"] <= 4 * 2 * 8
    assert sum(res["outcomes"].values()) == 4


def test_summary_has_the_required_keys_and_failed_sections_are_reported():
    steps = [{"step": i, "seconds": 2.0, "reward": 0.5, "sampling_forward_s": 1.0, "training_s": 0.5,
              "grading_s": 0.1, "tool_s": 0.1, "overhead_s": 0.3} for i in (1, 2, 3)]
    raw = {"matmul": {"peak_gflops": 50.0, "gflops": {"1024x1024x1024": 50.0}, "rss_mb": 100},
           "update": {"update": {"10M/full": {"mfu": 0.5}}},
           "rollout": {"rollout": {"1M/b8": {"speedup_traj_per_s": 2.0, "speedup_tokens_per_s": 1.5}}},
           "grpo_ours": {"steps": steps}, "grpo_trl": {"steps": [dict(s, seconds=5.0) for s in steps]},
           "graders": {"error": "exit 1: boom"}}
    s = harness.summarize(raw)
    for k in REQUIRED:
        assert k in s
    assert s["grpo_step_speedup_vs_trl"] == pytest.approx(2.5)
    assert s["framework_overhead_share"] == pytest.approx(0.15)
    shown = {k: v for k, v in raw.items() if k not in ("update", "rollout")}  # their tables need every field
    doc = {"summary": s, "raw": shown, "date": "d", "quick": True, "threads": 1, "versions": {"torch": "x"},
           "machine": {"cpu": "c", "cores": 2, "flags": [], "load_start": 1.0, "load_end": 2.0},
           "settings": harness._settings(True), "notes": []}
    md = harness.render_markdown(doc)
    assert "2.50×" in md and "graders: exit 1: boom" in md


def test_rewriting_the_page_keeps_its_hand_written_part(tmp_path):
    page = tmp_path / "benchmarks.md"
    harness.write_markdown(page, "# run 1\n")
    assert page.read_text() == "# run 1\n"  # nothing hand-written yet: the rendered page only
    page.write_text(page.read_text() + f"\n{harness.KEEP_MARKER}\n\n## Why\n\nmeasured 5 ms\n")
    harness.write_markdown(page, "# run 2\n")
    assert page.read_text() == f"# run 2\n\n{harness.KEEP_MARKER}\n\n## Why\n\nmeasured 5 ms\n"


def test_grpo_rounds_pool_their_steps_and_report_each_ratio():
    def steps(sec):
        return [{"step": i, "seconds": sec, "reward": 0.5, "sampling_forward_s": sec / 2, "training_s": sec / 4,
                 "grading_s": 0.0, "tool_s": 0.0, "overhead_s": sec / 4} for i in (1, 2, 3)]

    raw = {"grpo_ours": {"steps": steps(2.0)}, "grpo_trl": {"steps": steps(5.0)},
           "grpo_rounds": [{"ours": steps(1.0), "trl": steps(5.0)}]}
    s = harness.summarize(raw)
    assert s["grpo_step_speedup_by_round"] == [pytest.approx(2.5), pytest.approx(5.0)]
    assert s["grpo_step_seconds"]["ours"] == pytest.approx(1.5)  # median of 2, 2, 1, 1 (each round's first dropped)
    assert s["grpo_step_speedup_vs_trl"] == pytest.approx(5.0 / 1.5)
    assert s["framework_overhead_share"] == pytest.approx(0.25)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    """`python -m benchmarks --quick` writes both files with every required key (TRL needed)."""
    pytest.importorskip("trl")
    md, js = tmp_path / "b.md", tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--threads", "1", "--work", str(tmp_path / "w"),
                        "--out-md", str(md), "--out-json", str(js)], cwd=ROOT, capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(js.read_text())
    for k in REQUIRED:
        assert k in doc
    assert doc["machine"]["load_start"] >= 0 and "Goals" in md.read_text()
    upd = doc["raw"]["update"]["update"]
    assert upd["1M/full+compile"]["mfu"] > 0 and upd["1M/full+compile"]["first_step_s"] > 0  # the compiled learner
    assert doc["summary"]["framework_overhead_share_by_model"]["1M"] is not None  # the by-size GRPO run
    assert 0.0 <= doc["machine"]["steal_share"] <= 1.0 and "CPU steal" in md.read_text()


def test_cpu_steal_share_is_measured_from_proc_stat():
    from benchmarks.harness import _cpu_times, _steal_share

    before = _cpu_times()
    if before is None:
        pytest.skip("no /proc/stat here")
    t = time.perf_counter()
    while time.perf_counter() - t < 0.05:  # some CPU time passes
        pass
    share = _steal_share(before)  # 50 ms of busy CPU is several jiffies: the total moved, so a share exists
    assert share is not None and 0.0 <= share <= 1.0
    assert _steal_share(None) is None
