"""The benchmark sections. Each runs in its own subprocess (``python -m benchmarks --section NAME``) so that its
peak RSS is its own and one framework's imports or threads never slow another; each returns a JSON-able dict.

Definitions used throughout (the figures in docs/benchmarks.md follow them):

* **Peak** — the best fp32 matmul GFLOP/s measured here (``torch.mm``, same thread count as the run).
* **Model FLOPs of an update** — per trained token, ``6·N`` for full fine-tuning (forward 2N, backward 4N) and
  ``4·N`` for LoRA (forward 2N, backward through the frozen weights 2N; the adapters' own FLOPs are < 1% here),
  where N counts every weight that is a matmul (all linear layers + the tied LM head; the embedding lookup is a
  gather, not a matmul). Attention score FLOPs ``+ 6·n_layers·T·d`` per token (full) are added (T = mean
  sequence length, causal). **MFU** = model FLOPs ÷ wall time ÷ peak.
* **Rollout throughput** — finished multi-turn trajectories per second and sampled tokens per second, all B
  trajectories in flight at once, tool calls executed for real. The HF baseline runs the same agent logic
  (same parser, same renderer, same tool) with ``model.generate`` as the decoder: at each turn every unfinished
  trajectory's full token prefix is left-padded into one batch and decoded to the end-of-turn token.
* **GRPO step** — wall time of one optimizer step including rollouts, tools, grading, advantages, the update and
  (ours) recording every trajectory in the SQLite store and writing the resume checkpoint when one is due
  (default: every 60 s and at the end; TRL's run saves none). Median over steps after the first (warm-up).
* **Framework overhead** — step wall time minus model compute (every model forward, timed by hooks, plus the
  learner's update), minus tool execution and grading: what the framework's own Python (and its checkpoint
  writes) costs.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import workload as W


def _rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits from its parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- shared fixtures (built once per harness run, in the run's work dir) ---------------------------------------
def prepare(work: Path, sizes: list[str], sft_epochs: int) -> dict[str, Any]:
    """Task files, the three raw models and SFT-warmed copies of the rollout/GRPO models."""
    from agentrft.rl.sft import run_sft

    paths = W.write_task(work / "task")
    out: dict[str, Any] = {"task": {k: str(v) for k, v in paths.items()}, "models": {}, "sft": {}}
    for s in sizes:
        d = work / f"model-{s}"
        if not (d / "config.json").exists():
            W.build_model(paths, d, s)
        out["models"][s] = str(d)
    for s in sizes[:2]:  # the rollout benchmark uses 1M and 10M; GRPO uses 1M
        d = work / f"sft-{s}"
        if not (d / "config.json").exists():
            t0 = time.perf_counter()
            r = run_sft(out["models"][s], paths["demos"], d, epochs=sft_epochs, batch_size=16, learning_rate=3e-3)
            out["sft"][s] = {"path": str(d), "wall_s": time.perf_counter() - t0, "first_loss": r.first_loss,
                             "last_loss": r.last_loss}
        else:
            out["sft"][s] = {"path": str(d)}
    return out


# ---- 1. the physical limit --------------------------------------------------------------------------------------
def bench_matmul(cfg: dict[str, Any]) -> dict[str, Any]:
    """fp32 ``torch.mm`` GFLOP/s (2·m·k·n per product) at square sizes and at the models' own shapes
    (tokens × hidden @ hidden × intermediate, hidden × vocab)."""
    shapes = {f"{n}x{n}x{n}": (n, n, n) for n in (256, 512, 1024, 2048)}
    for s in cfg["sizes"]:
        h, _, _, _, inter = W.MODEL_SIZES[s]
        shapes[f"{s}: 2048x{h}x{inter} (mlp)"] = (2048, h, inter)
        shapes[f"{s}: 2048x{h}x1024 (lm head)"] = (2048, h, 1024)
        shapes[f"{s}: 8x{h}x{inter} (decode b=8)"] = (8, h, inter)
    res = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        flop = 2.0 * m * k * n
        reps = max(3, int(2e9 / flop)) if not cfg["quick"] else 3
        torch.mm(a, b)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - t0) / reps)
        res[name] = flop / best / 1e9
    return {"gflops": res, "peak_gflops": max(res.values()), "rss_mb": _rss_mb()}


# ---- 2. learner update ------------------------------------------------------------------------------------------
def _matmul_params(model: Any) -> int:
    """Weights that are matmuls: every nn.Linear (incl. a tied LM head once) — not the embedding gather."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            n += mod.weight.numel()
    return n


def _synthetic_trajs(n: int, length: int, vocab: int, seed: int):
    from agentrft.types import Trajectory

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = length - (i % 4) * (length // 16)  # a little length variety, as real batches have
        ids = torch.randint(10, vocab, (L,), generator=g).tolist()
        p = L // 4
        t = Trajectory(trace_id=f"t{i}", row_index=i, group_id=f"g{i // 4}", sample_index=i % 4)
        t.token_ids, t.loss_mask = ids, [0] * p + [1] * (L - p)
        t.logprobs = [0.0] * p + [-2.0] * (L - p)
        t.advantage = 1.0 if i % 2 else -1.0
        out.append(t)
    return out


def bench_update(cfg: dict[str, Any]) -> dict[str, Any]:
    """One RL update (``Learner.rl_step``: forward, clipped loss, backward, AdamW) on n_seq × seq_len tokens."""
    from transformers import AutoModelForCausalLM

    from agentrft.config import LoraConfig
    from agentrft.policy.learner import Learner
    from agentrft.rl.loss import ClippedPolicyLoss
    from agentrft.rl.advantages import token_advantages

    peak = cfg["peak_gflops"]
    res: dict[str, Any] = {}
    for s in cfg["sizes"]:
        # "full+compile": hyperparameters.compile_learner (torch.compile of the training forward); the first
        # step's time, compile included, is reported as first_step_s
        for mode in ("full", "lora") + (("full+compile",) if s in cfg.get("compile_sizes", []) else ()):
            model = AutoModelForCausalLM.from_pretrained(cfg["models"][s], dtype=torch.float32)
            n_mm = _matmul_params(model)
            n_all = sum(p.numel() for p in model.parameters())
            c = model.config
            learner = Learner(model, lora=LoraConfig() if mode == "lora" else None, learning_rate=1e-5,
                              micro_batch_size=cfg["micro_batch"], pad_id=c.pad_token_id or 0,
                              compile=mode == "full+compile")
            trajs = _synthetic_trajs(cfg["n_seq"], cfg["seq_len"], c.vocab_size, 0)
            advs = [token_advantages(t) for t in trajs]
            tokens = sum(len(t.token_ids) for t in trajs)
            # the learner runs the output layer only where a log-prob is needed (the positions predicting loss
            # tokens), so its FLOPs count there only; every other linear runs at every token
            n_head = model.get_output_embeddings().weight.numel()
            head_tokens = sum(sum(t.loss_mask[1:]) for t in trajs)
            t0 = time.perf_counter()
            learner.rl_step(trajs[: cfg["micro_batch"]], advs[: cfg["micro_batch"]], ClippedPolicyLoss(0.2, 0.28))
            first = time.perf_counter() - t0
            times = []
            for _ in range(cfg["reps"]):
                t0 = time.perf_counter()
                learner.rl_step(trajs, advs, ClippedPolicyLoss(0.2, 0.28))
                times.append(time.perf_counter() - t0)
            dt = min(times)
            mean_len = tokens / len(trajs)
            attn = 6.0 * c.num_hidden_layers * mean_len * c.hidden_size / 2 * 2  # causal QK^T and AV, fwd+bwd
            mult = 4.0 if mode == "lora" else 6.0  # LoRA: no weight gradients for the frozen base
            flops = (mult * (n_mm - n_head) + (attn * 2 / 3 if mode == "lora" else attn)) * tokens \
                + mult * n_head * head_tokens
            res[f"{s}/{mode}"] = {
                "params": n_all, "matmul_params": n_mm, "head_params": n_head, "head_tokens": head_tokens,
                "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt,
                "model_tflop": flops / 1e12, "achieved_gflops": flops / dt / 1e9, "mfu": flops / dt / 1e9 / peak,
                "micro_batch": cfg["micro_batch"], "all_times_s": times, "first_step_s": first,
            }
            del learner, model
    return {"update": res, "rss_mb": _rss_mb()}


# ---- 3. rollout -------------------------------------------------------------------------------------------------
def _tasks(rows: list[Any], group: int, seed: int):
    from agentrft.rollout.agent import RolloutTask

    return [RolloutTask(row=r, seed=seed * 1000 + 10 * i + k, group_id=f"g{i}", sample_index=k)
            for i, r in enumerate(rows) for k in range(group)]


def _forward_timer(model: Any) -> dict[str, float]:
    """Accumulates wall time inside the outermost model forward (pre/post hooks on the top module)."""
    acc = {"s": 0.0, "n": 0, "_t": 0.0}

    def pre(mod, args, kw):  # noqa: ANN001
        acc["_t"] = time.perf_counter()

    def post(mod, args, kw, out):  # noqa: ANN001
        acc["s"] += time.perf_counter() - acc["_t"]
        acc["n"] += 1

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
    return acc


def run_ours(model: Any, tok: Any, rows: list[Any], group: int, params: Any, limits: Any, seed: int,
             batch: int | None = None, continuous: bool = True) -> dict[str, Any]:
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.agent import AgentLoop
    from agentrft.rollout.render import ChatRenderer
    from agentrft.tools.router import build_router

    renderer = ChatRenderer(tok)
    sampler = TransformersSampler(model, stop_ids=renderer.stop_ids, pad_id=tok.pad_token_id)
    router = build_router(["benchmarks.workload:lookup"], timeout_s=10, max_workers=8)
    tasks = _tasks(rows, group, seed)
    loop = AgentLoop(sampler, renderer, router, limits=limits, max_batch=batch or len(tasks), continuous=continuous)
    t0 = time.perf_counter()
    trajs = loop.run(tasks, params)
    dt = time.perf_counter() - t0
    router.close()
    return _rollout_stats(trajs, dt, sampler.forward_passes)


def _rollout_stats(trajs: list[Any], dt: float, forwards: int) -> dict[str, Any]:
    toks = sum(t.completion_tokens for t in trajs)
    rewards = [W.reward(t.final_text, t_answer) for t, t_answer in ((t, t._answer) for t in trajs)] \
        if all(hasattr(t, "_answer") for t in trajs) else []
    return {"trajectories": len(trajs), "seconds": dt, "traj_per_s": len(trajs) / dt, "gen_tokens": toks,
            "gen_tokens_per_s": toks / dt, "turns_mean": statistics.mean(t.num_turns for t in trajs),
            "tool_calls_mean": statistics.mean(t.num_tool_calls for t in trajs), "forward_passes": forwards,
            "outcomes": {o: sum(t.outcome == o for t in trajs) for o in {t.outcome for t in trajs}},
            **({"reward_mean": statistics.mean(rewards)} if rewards else {})}


def run_hf_generate(model: Any, tok: Any, rows: list[Any], group: int, params: Any, limits: Any,
                    seed: int, batch: int | None = None) -> dict[str, Any]:
    """The same agent loop, decoded with ``model.generate``: each call takes up to ``batch`` unfinished trajectories
    (those mid-rollout first, then new ones — refilled at every turn boundary, a generous baseline), left-pads
    their whole prefixes into one batch (HF re-encodes the prefix every turn), samples with the same
    temperature/top-p and stops each row at the end-of-turn token."""
    from agentrft.rollout.parse import parse_turn
    from agentrft.rollout.render import ChatRenderer
    from agentrft.types import ToolCall, Trajectory, Turn

    renderer = ChatRenderer(tok)
    eos, pad = renderer.eos_id, tok.pad_token_id
    torch.manual_seed(seed)
    states = []
    for i, r in enumerate(rows):
        for k in range(group):
            ids = renderer.prompt_ids(r.messages, r.tools)
            t = Trajectory(trace_id=f"hf{i}-{k}", row_index=r.index, messages=[dict(m) for m in r.messages])
            t.token_ids, t.loss_mask = list(ids), [0] * len(ids)
            states.append({"t": t, "conv": [dict(m) for m in r.messages], "tools": r.tools, "done": False, "calls": 0})
    forwards = 0
    model.eval()
    t0 = time.perf_counter()
    while True:
        active = [s for s in states if not s["done"] and s["t"].turns] + \
            [s for s in states if not s["done"] and not s["t"].turns]
        active = active[: batch or len(active)]
        if not active:
            break
        L = max(len(s["t"].token_ids) for s in active)
        inp = torch.full((len(active), L), pad, dtype=torch.long)
        att = torch.zeros((len(active), L), dtype=torch.long)
        for i, s in enumerate(active):
            ids = s["t"].token_ids
            inp[i, L - len(ids):] = torch.tensor(ids)
            att[i, L - len(ids):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=inp, attention_mask=att, do_sample=True, temperature=params.temperature,
                                 top_p=params.top_p, top_k=0, max_new_tokens=params.max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad)
        forwards += out.shape[1] - L
        for i, s in enumerate(active):
            new = out[i, L:].tolist()
            if eos in new:
                new = new[: new.index(eos) + 1]
            t = s["t"]
            start = len(t.token_ids)
            t.token_ids += new
            t.loss_mask += [1] * len(new)
            ended = bool(new) and new[-1] == eos
            text = renderer.decode(new[:-1] if ended else new)
            parsed = parse_turn(text)
            turn = Turn(index=len(t.turns), start=start, end=len(t.token_ids), text=text)
            t.turns.append(turn)
            msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            for j, pc in enumerate(parsed.calls):
                turn.tool_calls.append(ToolCall(call_id=f"c{len(t.turns)}_{j}", name=pc.name, arguments=pc.arguments,
                                                turn_index=turn.index))
            if turn.tool_calls:
                msg["tool_calls"] = [c.as_openai() for c in turn.tool_calls]
            s["conv"].append(msg)
            if parsed.is_final:
                s["done"], t.outcome = True, "completed"
                continue
            if len(t.turns) >= limits.max_turns:
                s["done"], t.outcome = True, "max_turns"
                continue
            tool_msgs = []
            for c in turn.tool_calls:
                args = c.parsed_arguments() or {}
                c.output = W.lookup(**args) if c.name == "lookup" and set(args) == {"key"} else "Error: bad call"
                tool_msgs.append({"role": "tool", "tool_call_id": c.call_id, "name": c.name, "content": c.output})
            if turn.parse_error or not tool_msgs:
                tool_msgs.append({"role": "tool", "name": "error", "content": "Error: write a tool call."})
            cont = renderer.continuation_ids(s["conv"], tool_msgs, s["tools"], sampled_ended_with_eos=ended)
            s["conv"] += tool_msgs
            t.token_ids += cont
            t.loss_mask += [0] * len(cont)
            if len(t.token_ids) >= limits.max_context_tokens:
                s["done"], t.outcome = True, "context_limit"
    dt = time.perf_counter() - t0
    return _rollout_stats([s["t"] for s in states], dt, forwards)


def bench_rollout(cfg: dict[str, Any]) -> dict[str, Any]:
    from agentrft.data import load_dataset
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.policy.sampling import SamplingParams
    from agentrft.rollout.agent import RolloutLimits

    rows_all = load_dataset(cfg["task"]["train"])
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=cfg["max_new_tokens"])
    limits = RolloutLimits(max_turns=4, max_episode_steps=6, max_context_tokens=1024)
    res: dict[str, Any] = {}
    for s, batches in cfg["rollout_plan"].items():
        model, tok = load_model_and_tokenizer(cfg["sft"][s]["path"])
        model.eval()
        for batch in batches:
            group = 4  # 2·batch trajectories (batch/2 rows × G=4), at most `batch` in flight in both engines
            rows = rows_all[: max(1, 2 * batch // group)]
            key = f"{s}/b{batch}"
            run_ours(model, tok, rows[:1], 2, params, limits, 99)  # warm-up
            ours, batched, hf = [], [], []
            for seed in range(cfg["rollout_reps"]):  # interleaved, so a change in machine load hits all alike
                ours.append(run_ours(model, tok, rows, group, params, limits, seed, batch=batch))
                batched.append(run_ours(model, tok, rows, group, params, limits, seed, batch=batch, continuous=False))
                hf.append(run_hf_generate(model, tok, rows, group, params, limits, seed, batch=batch))
            agg = {name: _agg(runs) for name, runs in (("ours", ours), ("ours_turn_batched", batched),
                                                       ("hf_generate", hf))}
            agg["speedup_traj_per_s"] = agg["ours"]["traj_per_s"] / agg["hf_generate"]["traj_per_s"]
            agg["speedup_tokens_per_s"] = agg["ours"]["gen_tokens_per_s"] / agg["hf_generate"]["gen_tokens_per_s"]
            res[key] = agg
    return {"rollout": res, "rss_mb": _rss_mb()}


def _agg(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over repeated runs (rates = total count ÷ total seconds)."""
    sec = sum(r["seconds"] for r in runs)
    n = sum(r["trajectories"] for r in runs)
    toks = sum(r["gen_tokens"] for r in runs)
    return {"runs": len(runs), "seconds": sec, "trajectories": n, "traj_per_s": n / sec, "gen_tokens": toks,
            "gen_tokens_per_s": toks / sec, "turns_mean": statistics.mean(r["turns_mean"] for r in runs),
            "tool_calls_mean": statistics.mean(r["tool_calls_mean"] for r in runs),
            "forward_passes": sum(r["forward_passes"] for r in runs)}


# ---- 4. end to end: GRPO steps, ours vs TRL ---------------------------------------------------------------------
def bench_grpo_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    """agentrft's Trainer on the task: ``steps`` GRPO steps of ``prompts`` rows × ``group`` rollouts, full FT."""
    from agentrft.config import parse_config
    from agentrft.rl.trainer import Trainer

    g = cfg["grpo"]
    work = Path(tempfile.mkdtemp(prefix="grpo-ours-", dir=cfg["work"]))
    rc = parse_config({
        "name": "bench", "model": cfg["sft"][g["size"]]["path"], "training_file": cfg["task"]["train"],
        "tools": ["benchmarks.workload:lookup"], "grader": W.GRADER, "output_dir": str(work),
        "hyperparameters": {"max_steps": g["steps"], "batch_size": g["prompts"], "group_size": g["group"],
                            "learning_rate": g["lr"], "lora": None, "micro_batch_size": 8, "max_turns": 4,
                            "max_episode_steps": 6, "max_new_tokens": g["max_new_tokens"], "temperature": 1.0,
                            "eval_interval": 10_000, "keep_checkpoints": 1, "seed": 0},
    }, base_dir=work)
    tr = Trainer(rc, progress=False)
    tr._setup()  # noqa: SLF001 — the benchmark times model forwards with hooks on the trainer's own model
    fw = _forward_timer(tr.learner.model)
    from agentrft.policy.engine import SlotEngine

    engine_forward = SlotEngine._forward

    def timed_forward(self: Any, rows: list[int]) -> Any:  # the engine runs the layers itself, not model.forward
        t = time.perf_counter()
        try:
            return engine_forward(self, rows)
        finally:
            fw["s"] += time.perf_counter() - t

    SlotEngine._forward = timed_forward  # type: ignore[method-assign]
    sample_fw: list[float] = []
    orig_run = tr.loop.run

    def timed_run(*a: Any, **kw: Any) -> Any:
        before = fw["s"]
        out = orig_run(*a, **kw)
        sample_fw.append(fw["s"] - before)
        return out

    tr.loop.run = timed_run  # type: ignore[method-assign]
    step_s: dict[int, float] = {}
    orig_step = tr._train_step  # noqa: SLF001

    def timed_step(step: int, prog: Any) -> dict[str, Any]:
        t = time.perf_counter()
        m = orig_step(step, prog)  # rollouts, grading, advantages, update, recording in the store
        step_s[step] = time.perf_counter() - t
        return m

    tr._train_step = timed_step  # type: ignore[method-assign]
    orig_save = tr._save_latest  # noqa: SLF001

    def timed_save(step: int) -> None:  # a resume checkpoint (every save_interval_s, and at the end) is part of a step
        t = time.perf_counter()
        orig_save(step)
        step_s[step] = step_s.get(step, 0.0) + time.perf_counter() - t

    tr._save_latest = timed_save  # type: ignore[method-assign]
    t0 = time.perf_counter()
    try:
        tr._train()  # noqa: SLF001
    finally:
        tr.router.close()
        tr._writer.shutdown(wait=True)  # noqa: SLF001
    wall = time.perf_counter() - t0
    out_steps = []
    for i, m in enumerate(tr.store.step_metrics(tr.run_id, "train")):
        full, train, grade = step_s[m["step"]], m["time/training"], m["time/grading"]
        tool = m.get("tool_time_s_mean", 0.0)  # per-trajectory tool wait; overlaps decoding, so an upper bound
        compute = sample_fw[i] + train
        out_steps.append({"step": m["step"], "seconds": full, "reward": m["reward_mean"],
                          "sampling_s": m["time/sampling"], "sampling_forward_s": sample_fw[i], "training_s": train,
                          "grading_s": grade, "tool_s": tool, "model_compute_s": compute,
                          "overhead_s": max(0.0, full - compute - grade - tool),
                          "tool_calls_per_traj": m.get("tool_calls_per_traj"),
                          "completion_tokens_mean": m.get("completion_tokens_mean")})
    return {"size": g["size"], "steps": out_steps, "wall_s": wall, "rss_mb": _rss_mb()}


def bench_grpo_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """TRL ``GRPOTrainer`` with the same model, rows, group size, tool (``tools=[lookup]``) and reward rule."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen3_template

    g = cfg["grpo"]
    work = Path(tempfile.mkdtemp(prefix="grpo-trl-", dir=cfg["work"]))
    path = cfg["sft"][g["size"]]["path"]
    tok = AutoTokenizer.from_pretrained(path)
    # our ChatML tool template writes calls exactly as Qwen3 does: <tool_call>{json}</tool_call> after
    # "<|im_start|>assistant\n", so TRL's own Qwen3 response parser reads them.
    tok.response_template = qwen3_template
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = [json.loads(line) for line in Path(cfg["task"]["train"]).read_text().splitlines()]
    # TRL renders `tools=` itself; the prompt is the conversation only (the system message carries the task).
    ds = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in rows])

    def answer_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        out = []
        for c, a in zip(completions, answer):
            final = c[-1].get("content", "") if isinstance(c, list) and c else str(c)
            out.append(W.reward(final or "", a))
        return out

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            times.append(time.perf_counter() - self.t0)

    args = GRPOConfig(
        output_dir=str(work), per_device_train_batch_size=g["prompts"] * g["group"], num_generations=g["group"],
        max_completion_length=g["max_new_tokens"] * 4, max_steps=g["steps"], learning_rate=g["lr"],
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, epsilon_high=0.28, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=0, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, max_tool_calling_iterations=3, shuffle_dataset=True,
        dataloader_num_workers=0, disable_tqdm=True, gradient_accumulation_steps=1,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[answer_reward], args=args, train_dataset=ds,
                          processing_class=tok, tools=[W.lookup], callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = []
    for i, t in enumerate(times):
        h = logs[i] if i < len(logs) else {}
        steps.append({"step": i + 1, "seconds": t, "reward": h.get("reward"),
                      "completion_tokens_mean": h.get("completions/mean_length"),
                      "tool_calls_per_traj": h.get("tools/call_frequency")})
    return {"steps": steps, "wall_s": wall, "trl_version": trl.__version__, "rss_mb": _rss_mb()}


SECTIONS = {"matmul": bench_matmul, "update": bench_update, "rollout": bench_rollout,
            "grpo_ours": bench_grpo_ours, "grpo_trl": bench_grpo_trl}


def run_section(name: str, cfg_path: str, out_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    res = SECTIONS[name](cfg)
    res["section_wall_s"] = time.perf_counter() - t0
    Path(out_path).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":  # pragma: no cover
    run_section(sys.argv[1], sys.argv[2], sys.argv[3])
