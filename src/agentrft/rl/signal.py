"""Runs that cannot learn say so (issue 14, class 2: silent nonsense).

* :func:`prompts_over_budget` — rows whose rendered prompt alone fills ``max_context_tokens``: each of their
  rollouts would end at ``context_limit`` before the model says a word. The trainer warns with the count before
  training and stops with a :class:`TrainingError` when every training row is over.
* :class:`SignalWatch` — a step has *trainable signal* when at least one trajectory got an advantage (a group with
  reward variance among its non-dropped rollouts). After ``max_signal_free_steps`` consecutive steps without it
  (every group zero-variance, or every rollout dropped — e.g. an unreachable tool server) the run stops as failed,
  with why: the dropped fraction, the tool error rate, the first drop reason and the outcomes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from agentrft.types import Trajectory


def prompts_over_budget(rows: Sequence[Any], prompt_len: Callable[[Any], int], max_context_tokens: int
                        ) -> list[tuple[Any, int]]:
    """``(row, prompt tokens)`` for every row whose prompt is at least ``max_context_tokens`` tokens."""
    over = []
    for r in rows:
        n = prompt_len(r)
        if n >= max_context_tokens:
            over.append((r, n))
    return over


def budget_message(path: str, over: list[tuple[Any, int]], n_rows: int, max_context_tokens: int) -> str:
    first, n = over[0]
    return (f"{path}: {len(over)} of {n_rows} rows have a prompt of at least hyperparameters.max_context_tokens "
            f"({max_context_tokens}) tokens (line {getattr(first, 'line', '?')}: {n} tokens); every rollout of "
            "such a row ends at context_limit before the model answers, with reward 0 — raise max_context_tokens "
            "or shorten the prompts")


def step_summary(trajs: Sequence[Trajectory]) -> str:
    """Why a step had no signal, in one line."""
    n = len(trajs)
    dropped = [t for t in trajs if t.dropped]
    calls = sum(t.num_tool_calls for t in trajs)
    failed = sum(1 for t in trajs for c in t.tool_calls if not c.ok)
    rewards = sorted({round(t.reward, 6) for t in trajs if not t.dropped and t.reward is not None})
    outcomes = ", ".join(f"{k} {v}" for k, v in Counter(t.outcome for t in trajs).most_common())
    parts = [f"{len(dropped)}/{n} rollouts dropped",
             f"tool errors {failed}/{calls} calls" + (f" ({failed / calls:.0%})" if calls else ""),
             f"outcomes: {outcomes}"]
    if rewards:
        parts.append("rewards " + ("all " + f"{rewards[0]:g}" if len(rewards) == 1 else
                                    f"vary only across groups ({len(rewards)} values)"))
    first = next((t.drop_reason for t in dropped if t.drop_reason), None)
    if first is None:
        first_err = next((c.error for t in trajs for c in t.tool_calls if not c.ok and c.error), None)
        if first_err:
            parts.append(f"first tool error: {first_err[:300]}")
    else:
        parts.append(f"first drop reason: {first[:300]}")
    return "; ".join(parts)


class SignalWatch:
    """Counts consecutive signal-free train steps; ``observe`` returns a warning line for a signal-free step and
    raises ``error(message)`` once ``limit`` of them in a row were seen (``limit`` 0: never)."""

    def __init__(self, limit: int, error: Callable[[str], Exception]):
        self.limit, self.error, self.run, self.seen = limit, error, 0, 0

    def observe(self, step: int, trajs: Sequence[Trajectory]) -> str | None:
        self.seen += 1
        if any(t.advantage is not None for t in trajs):
            self.run = 0
            return None
        self.run += 1
        why = step_summary(trajs)
        if self.limit and self.run >= self.limit:
            raise self.error(
                f"no trainable signal for {self.run} consecutive steps (hyperparameters.max_signal_free_steps = "
                f"{self.limit}), the run is stopped as failed. Step {step}: {why}. Every group had equal rewards "
                "or every rollout was dropped — check that the tool servers are reachable, that the grader can "
                "tell answers apart, and the prompts fit the context")
        return (f"[signal] step {step}: no trainable signal ({self.run}/{self.limit or '∞'} before the run "
                f"stops): {why}")

    def final_warning(self) -> str | None:
        """At the end of a run that was not stopped: a warning when *every* step it ran had no signal (a run shorter
        than ``limit``, or ``limit`` 0) — the policy never changed, which the run's success must not hide."""
        if self.seen and self.run == self.seen:
            return (f"[signal] none of the {self.seen} train steps of this run had trainable signal: the policy was "
                    "never updated (every group had equal rewards or every rollout was dropped; see the [signal] "
                    "lines above)")
        return None
