"""Tool-call dialects: each family's fixture template renders an assistant turn with parallel calls that the dialect
(picked from the template) parses back to the same calls — whole and streamed; malformed calls are errors, not
silence; and a rollout with a non-Hermes template is token-exact."""

from __future__ import annotations

import copy
import json

import pytest

from agentrft.models.chat_templates import CHATML_TOOLS, GEMMA_TOOLS
from agentrft.rollout.dialects import DIALECTS, dialect_for_template
from agentrft.serve.streaming import ToolCallStream
from dialect_templates import FIXTURES

# every dialect's fixture, Hermes included (its family's shape is the ChatML tool template the tiny models carry)
ALL = {**FIXTURES, "hermes": (CHATML_TOOLS, "<|im_end|>")}

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up a key.",
                                           "parameters": {"type": "object", "properties": {"key": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "search", "description": "Search.",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
CALLS = [("lookup", {"key": "K1", "n": 2, "opts": {"deep": [1, "x"], "flag": True}}), ("search", {"q": "two words"})]


def _tok(template: str, eos: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=eos)
    t.chat_template = template
    return t


def _turn_text(template: str, eos: str, calls, content: str | None = None) -> str:
    """The assistant turn's text as the template renders it (up to its end-of-turn token)."""
    tok = _tok(template, eos)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Find K1 and search."}]
    before = tok.apply_chat_template(msgs, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    turn = {"role": "assistant", "content": content or ""}
    if calls:
        turn["tool_calls"] = [{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
                              for i, (n, a) in enumerate(calls)]
    full = tok.apply_chat_template(msgs + [turn], tools=TOOLS, add_generation_prompt=False, tokenize=False)
    assert full.startswith(before), "fixture templates are append-only"
    text = full[len(before):]
    return text[: text.rindex(eos)]


def test_dialect_is_chosen_from_the_template():
    assert {name: dialect_for_template(t).name for name, (t, _) in FIXTURES.items()} == \
        {name: name for name in FIXTURES}
    assert dialect_for_template(CHATML_TOOLS).name == "hermes" and dialect_for_template(GEMMA_TOOLS).name == "hermes"
    assert dialect_for_template(None).name == "hermes"


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("calls", [CALLS, CALLS[:1]], ids=["parallel", "single"])
def test_render_parse_round_trip(name, calls):
    template, eos = ALL[name]
    d = dialect_for_template(template)
    text = _turn_text(template, eos, calls)
    parsed = d.parse(text)
    assert not parsed.errors, (text, parsed.errors)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls, text
    # the other dialects do not read it as their own calls
    for other in DIALECTS.values():
        if other.name != name and other.name != "hermes" and name != "hermes":
            assert not other.parse(text).calls or other.name == name


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("step", [1, 3, 7])
def test_streamed_deltas_reassemble_to_the_same_calls(name, step):
    template, eos = ALL[name]
    d = dialect_for_template(template)
    text = _turn_text(template, eos, CALLS)
    s = ToolCallStream(True, d)
    deltas = []
    for i in range(step, len(text) + step, step):
        deltas += s.feed(text[:i], final=i >= len(text))
    calls: dict[int, dict] = {}
    for dl in deltas:
        for tc in dl.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            c["name"] += tc.get("function", {}).get("name", "")
            c["arguments"] += tc.get("function", {}).get("arguments", "")
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == CALLS
    assert "".join(dl.get("content", "") for dl in deltas).strip() == ""
    assert not s.malformed


@pytest.mark.parametrize("name", sorted(ALL))
def test_plain_answers_and_malformed_calls(name):
    template, eos = ALL[name]
    d = dialect_for_template(template)
    text = _turn_text(template, eos, None, content="The answer is 42.")
    p = d.parse(text)
    assert p.is_final and p.content == "The answer is 42."
    s = ToolCallStream(True, d)
    streamed = s.feed(text[:5], final=False) + s.feed(text, final=True)
    assert "".join(x.get("content", "") for x in streamed) == text and not s.calls
    good = _turn_text(template, eos, CALLS[:1])
    broken = good[: len(good) - 4]  # the call's end cut off
    p = d.parse(broken)
    assert p.errors and not p.calls, (name, broken, p)


def test_qwen_xml_values_and_bare_functions():
    p = DIALECTS["qwen_xml"].parse("<function=f>\n<parameter=a>\nhello world\n</parameter>\n<parameter=b>\n3\n"
                                   "</parameter>\n</function>")
    assert [(c.name, json.loads(c.arguments)) for c in p.calls] == [("f", {"a": "hello world", "b": 3})]
    p = DIALECTS["qwen_xml"].parse("<tool_call>\n<function=f>\njunk\n</function>\n</tool_call>")
    assert p.errors and not p.calls


def test_mistral_v11_and_llama_python_tag():
    p = DIALECTS["mistral"].parse('[TOOL_CALLS]lookup[ARGS]{"key": "K1"}[TOOL_CALLS]search[ARGS]{"q": "x"}')
    assert [(c.name, json.loads(c.arguments)) for c in p.calls] == [("lookup", {"key": "K1"}), ("search", {"q": "x"})]
    p = DIALECTS["llama3_json"].parse('<|python_tag|>{"name": "lookup", "parameters": {"key": "K1"}}')
    assert [c.name for c in p.calls] == ["lookup"]
    assert DIALECTS["llama3_json"].parse('{"answer": 1}').is_final  # JSON content is not a call


def test_rollout_with_the_qwen_xml_template_is_token_exact(tiny_model, tokenizer, lookup_files):
    """tests/test_token_exact.py's checks on a tokenizer with the Qwen-XML fixture template: every assistant span is
    what the sampler returned for exactly the preceding prefix, the mask is 1 only there, and the learner's
    teacher-forced log-probs at those positions reproduce the sampler's. The turns are scripted (parallel XML calls,
    a cut-off call, answers) and their log-probs are the model's own for those tokens, computed on the sampler's
    side from the prefix it was given."""
    import torch
    from transformers import AutoModelForCausalLM

    from agentrft.data import load_dataset
    from agentrft.policy.learner import Learner
    from agentrft.policy.sampling import SamplingParams
    from agentrft.rollout.agent import AgentLoop, RolloutLimits, RolloutTask
    from agentrft.rollout.render import ChatRenderer
    from agentrft.tools.router import build_router
    from test_token_exact import RecordingSampler, ScriptedSampler, _check_spans

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = FIXTURES["qwen_xml"][0]
    renderer = ChatRenderer(tok)
    assert renderer.dialect.name == "qwen_xml"
    rows = list(load_dataset(lookup_files["valid"]))[:2]
    for r in rows:
        r.item["table"] = {"K1": "red", "K2": "blue"}
    rows[0].messages[-1]["content"] = "Q-A: What colors are K1 and K2?"
    rows[1].messages[-1]["content"] = "Q-B: What color is K1?"

    def xml(key: str) -> str:
        return f"<tool_call>\n<function=lookup>\n<parameter=key>\n{key}\n</parameter>\n</function>\n</tool_call>\n"

    scripts = {"Q-A": [xml("K1") + xml("K2"), "ANSWER: red, blue"],
               "Q-B": [xml("K1")[:-25], xml("K1"), "ANSWER: red"]}  # a cut-off call first: an error turn
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

    class ModelScored(ScriptedSampler):
        def generate(self, prompts, params, generators, limits=None):
            outs = super().generate(prompts, params, generators, limits)
            for prompt, g in zip(prompts, outs):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prompt + g.ids])).logits[0, len(prompt) - 1 : -1]
                g.logprobs = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(g.ids)[:, None])[:, 0].tolist()
            return outs

    sampler = RecordingSampler(ModelScored(tok, scripts))
    router = build_router(["lookup_task:lookup"], timeout_s=5, max_workers=4)
    loop = AgentLoop(sampler, renderer, router, limits=RolloutLimits(max_turns=6, max_episode_steps=4))
    a, b = loop.run([RolloutTask(row=r, seed=i) for i, r in enumerate(rows)], SamplingParams())
    assert a.outcome == "completed" and a.final_text == "ANSWER: red, blue"
    assert [c.output for c in a.tool_calls] == ["K1 is red", "K2 is blue"]
    assert b.turns[0].parse_error and b.outcome == "completed" and [c.output for c in b.tool_calls] == ["K1 is red"]
    # the error message shows the dialect's own call format
    assert any("<function=TOOL>" in (m.get("content") or "") for m in b.messages if m.get("role") == "tool")
    _check_spans([a, b], sampler.calls)
    learner = Learner(model, lora=None, learning_rate=1e-4, micro_batch_size=4, pad_id=tok.pad_token_id)
    for t, lp in zip([a, b], learner.score([a.token_ids, b.token_ids])):
        sampled = [i for i, m in enumerate(t.loss_mask) if m]
        assert len(sampled) > 20
        assert max(abs(lp[i] - t.logprobs[i]) for i in sampled) < 1e-4


@pytest.mark.parametrize("name", sorted(ALL))
def test_forced_call_prefix_is_how_the_template_starts_a_call(name):
    template, eos = ALL[name]
    d = dialect_for_template(template)
    text = _turn_text(template, eos, CALLS[:1])
    assert text.startswith(d.forced_prefix(None)) and text.startswith(d.forced_prefix("lookup")), (text, d)


def test_dialect_can_be_named_instead_of_read_from_the_template(tokenizer):
    from agentrft.rollout.render import ChatRenderer
    from agentrft.serve.config import ServeConfig

    assert ChatRenderer(tokenizer).dialect.name == "hermes"
    r = ChatRenderer(tokenizer, dialect="llama3_json")
    assert r.dialect.name == "llama3_json" and r.parse('{"name": "f", "parameters": {}}').calls[0].name == "f"
    with pytest.raises(ValueError, match="known: hermes"):
        ChatRenderer(tokenizer, dialect="klingon")
    with pytest.raises(ValueError, match="unknown tool-call dialect"):
        ServeConfig(model="m", tool_call_dialect="klingon")
