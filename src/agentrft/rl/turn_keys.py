"""What a turn did and what came back, as hashable keys: the unit both step-level credit (GiGPO) and segment
preferences compare across the trajectories of one group.

* ``action_key(turn)``: the turn's tool calls as (name, canonical JSON arguments) — argument order and spacing do
  not matter — or, for a turn without calls (a final answer, or text that did not parse), its text.
* ``step_key(turn)``: the action plus every call's observation (output and status). Two trajectories of one task
  that took the same step reached the same state, since the tools saw the same calls and answered the same.
* ``state_keys(traj, mode)``: the state each turn acts from. Turn 0 acts from the task's initial state (the prompt:
  one key for the whole group). Turn k > 0 acts from ``last``: the step of turn k − 1 (GiGPO's anchor state: the
  current observation, which different histories can reach), or ``history``: the steps of turns 0..k − 1.
"""

from __future__ import annotations

import json
from typing import Any

from agentrft.types import Trajectory, Turn

INITIAL = ("<initial>",)


def _canonical_args(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments) if arguments else {}, sort_keys=True, separators=(",", ":"))
    except ValueError:
        return arguments.strip()


def action_key(turn: Turn) -> tuple[Any, ...]:
    if turn.tool_calls:
        return ("calls", tuple((c.name, _canonical_args(c.arguments)) for c in turn.tool_calls))
    return ("text", turn.text.strip())


def step_key(turn: Turn) -> tuple[Any, ...]:
    return (action_key(turn), tuple((c.output, c.status) for c in turn.tool_calls))


def state_keys(traj: Trajectory, mode: str = "last") -> list[tuple[Any, ...]]:
    """The state each of ``traj.turns`` acts from (see the module docstring)."""
    if mode not in ("last", "history"):
        raise ValueError(f"unknown state mode {mode!r} (last, history)")
    keys: list[tuple[Any, ...]] = []
    history: tuple[Any, ...] = INITIAL
    for k, turn in enumerate(traj.turns):
        keys.append(history)
        step = step_key(turn)
        history = (step,) if mode == "last" else history + (step,)
    return keys


def shared_prefix(a: Trajectory, b: Trajectory) -> int:
    """How many leading turns ``a`` and ``b`` took identically (same step: calls, arguments, observations)."""
    n = 0
    for ta, tb in zip(a.turns, b.turns):
        if step_key(ta) != step_key(tb):
            break
        n += 1
    return n
