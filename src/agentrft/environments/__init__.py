"""Environments: seeded task generators with their tools, graders and demonstrations — the two bundled ones and
any of yours, named by reference.

>>> env = get_environment("repo_locator")           # or "mypkg.envs:load_environment"
>>> paths = env.generate("data/repo", seed=0)      # {"train", "valid", "demos", "grader", ...} -> Path
>>> texts = list(env.corpus("data/repo"))           # for the tiny model's tokenizer

Each environment is a package: ``generator.py`` (rows, demos, corpus), ``tools.py`` (``@tool`` functions;
``tool_refs`` names them for the tool registry / HTTP tool server) and ``graders.py`` (scoring functions
for ``python_function`` graders and the grader JSON). See docs/environments.md for the reward formulas.

An environment of your own is a module with ``generate(out_dir, seed, n_train, n_valid, **kw)`` and
``corpus(out_dir)`` and a function returning its :class:`Environment` (``module`` = that module); name it as
``module:function`` in a run config's ``environment`` (which then supplies ``tools``, ``grader`` and
``holdout_graders`` the config leaves out), ``agentrft model tiny --env`` and ``agentrft tools serve|list``
(docs/extending.md). ``agentrft quickstart`` runs the bundled ones only: its preset was tuned and measured on them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass
class Environment:
    name: str  # "repo_locator" | "support_desk"
    description: str
    tool_refs: list[str]  # e.g. ["agentrft.environments.support_desk.tools:*"]
    grader: dict[str, Any]  # the training grader JSON (a `multi`)
    holdout_graders: dict[str, dict[str, Any]]  # never used for reward (strict exact match…)
    safety_grader: dict[str, Any] = field(default_factory=dict)  # also inside `grader`; the gate checks its pass rate
    system_prompt: str = ""
    module: str = ""  # the package holding generate() and corpus()

    def _mod(self) -> Any:
        return importlib.import_module(self.module)

    def generate(
        self,
        out_dir: str | Path,
        seed: int = 0,
        n_train: int = 200,
        n_valid: int = 50,
        **kw: Any,
    ) -> dict[str, Path]:
        """Write train.jsonl, valid.jsonl, demos.jsonl, grader.json (+ safety_grader.json,
        holdout_graders.json and state files such as support.db) and return their paths by key.
        Byte-identical output for the same arguments. Extra keywords: ``n_demos`` (default n_train),
        ``wrong_frac`` (0.3), ``redundant_frac`` (0.5)."""
        return self._mod().generate(out_dir, seed=seed, n_train=n_train, n_valid=n_valid, **kw)

    def python_tools(self) -> list[Any]:
        """The environment's tools as :class:`~agentrft.tools.registry.PythonTool` objects."""
        from agentrft.tools.registry import resolve_python_tool

        return [t for ref in self.tool_refs for t in resolve_python_tool(ref)]

    def corpus(self, out_dir: str | Path) -> Iterator[str]:
        """Every text the model will see for the data generated in ``out_dir`` (prompts, tool schemas,
        demo turns, tool outputs)."""
        return self._mod().corpus(out_dir)


def _build() -> dict[str, Environment]:
    from agentrft.environments.repo_locator import SYSTEM_PROMPT as RL_PROMPT, TOOLS_REF as RL_TOOLS
    from agentrft.environments.repo_locator import graders as rlg
    from agentrft.environments.support_desk import SYSTEM_PROMPT as SD_PROMPT, TOOLS_REF as SD_TOOLS
    from agentrft.environments.support_desk import graders as sdg

    return {
        "repo_locator": Environment(
            name="repo_locator",
            description="Find the files to edit in a small generated repository (list_files, grep, read_file); "
            "reward = file F1 (repeats count as wrong) x safety x efficiency/format bonus.",
            tool_refs=[RL_TOOLS],
            grader=rlg.GRADER,
            holdout_graders=rlg.HOLDOUT_GRADERS,
            safety_grader=rlg.SAFETY_GRADER,
            system_prompt=RL_PROMPT,
            module="agentrft.environments.repo_locator",
        ),
        "support_desk": Environment(
            name="support_desk",
            description="Customer support over a SQLite db of customers and orders (find_customer, list_orders, "
            "get_order, refund_order); refunds only under policy; ask when ambiguous.",
            tool_refs=[SD_TOOLS],
            grader=sdg.GRADER,
            holdout_graders=sdg.HOLDOUT_GRADERS,
            safety_grader=sdg.SAFETY_GRADER,
            system_prompt=SD_PROMPT,
            module="agentrft.environments.support_desk",
        ),
    }


ENVIRONMENTS: dict[str, Environment] = _build()


def get_environment(name: str) -> Environment:
    """The bundled environment called ``name``, or the one a ``module:function`` reference returns; a ValueError
    says why otherwise (listing the bundled names)."""
    if isinstance(name, str) and name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"unknown environment {name!r}; known environments: {', '.join(sorted(ENVIRONMENTS))} "
                         "(or 'module:function' returning an Environment)")
    from agentrft.refs import load_callable

    env = load_callable(name)()
    if not isinstance(env, Environment):
        raise ValueError(f"environment {name!r}: returned {type(env).__name__}, not an agentrft Environment")
    return env


__all__ = ["ENVIRONMENTS", "Environment", "get_environment"]
