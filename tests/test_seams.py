"""The rollout stack's seams: one builder from a run config, a Sampler interface the agent loop depends on, the
weights version stamped on every trajectory, clear errors for bad tools and models."""

from __future__ import annotations

import pytest
import torch

import lookup_task
from agentrft.config import ConfigError, parse_config
from agentrft.data import load_dataset
from agentrft.policy.sampler import ContinuousSampler, Sampler
from agentrft.policy.sampling import Generation, SamplingParams
from agentrft.rollout.agent import RolloutTask
from agentrft.rollout.stack import ModelLoadError, RolloutStack, load_policy


def _cfg(lookup_files, **kw):
    return parse_config({"model": "unused", "training_file": str(lookup_files["train"]), "tools": ["lookup_task:lookup"],
                         "grader": lookup_task.GRADER, **kw})


class AnswerSampler:
    """A sampler of another kind (only ``generate``), as a remote backend would be: answers at once."""

    version = "remote:adapter-v7"

    def __init__(self, renderer):
        self.ids = renderer.tok("ANSWER: red", add_special_tokens=False)["input_ids"] + [renderer.eos_id]

    def generate(self, prompts, params, generators, limits=None):
        return [Generation(list(self.ids), [-0.5] * len(self.ids), "stop") for _ in prompts]


def test_a_sampler_backend_plugs_into_the_stack_and_stamps_its_version(lookup_files, tiny_model):
    stack = RolloutStack(_cfg(lookup_files))
    try:
        policy = load_policy(tiny_model)
        sampler = AnswerSampler(policy.renderer)
        assert isinstance(sampler, Sampler) and not isinstance(sampler, ContinuousSampler)
        stack.attach(policy, sampler=sampler)
        rows = list(load_dataset(lookup_files["valid"]))[:3]
        trajs = stack.loop.run([RolloutTask(row=r, seed=i) for i, r in enumerate(rows)], stack.eval_params)
        assert [t.checkpoint_id for t in trajs] == ["remote:adapter-v7"] * 3
        assert all(t.outcome == "completed" and t.final_text == "ANSWER: red" for t in trajs)
    finally:
        stack.close()


def test_the_in_process_sampler_is_continuous_and_versioned_by_the_caller(lookup_files, tiny_model):
    cfg = _cfg(lookup_files, model=str(tiny_model))
    stack = RolloutStack.for_model(cfg, str(tiny_model))
    try:
        assert isinstance(stack.sampler, ContinuousSampler) and stack.sampler.version == str(tiny_model)
        model = stack.policy.model
        model.train()
        eng = stack.sampler.slot_engine(SamplingParams(max_new_tokens=2), slots=1)
        assert not model.training  # the engine decodes in eval mode for its life …
        eng.feed(0, [1, 2, 3], torch.Generator().manual_seed(0), 2)
        while eng.busy():
            eng.step()
        eng.close()
        assert model.training  # … and hands the model back in the mode it found it
    finally:
        stack.close()


def test_stack_errors_name_the_tool_entry_and_the_model(lookup_files, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"tools\[1\]: 'lookup_task:nope'.*no attribute"):
        RolloutStack(_cfg(lookup_files, tools=["lookup_task:lookup", "lookup_task:nope"]))
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_policy(tmp_path / "missing")
    (tmp_path / "models").mkdir()  # "models/tiny" beside an existing models/ is a path, not a HF id: no hub lookup
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="'models/tiny': no such directory"):
        load_policy("models/tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"not a model directory \(no config.json\)"):
        load_policy(tmp_path / "empty")
