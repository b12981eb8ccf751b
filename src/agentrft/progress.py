"""rich progress bars for long work: steps with live reward and tool-call figures, rollouts within a step."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from agentrft.types import Trajectory


class TrainProgress:
    def __init__(self, total_steps: int, *, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.total = total_steps
        self._p: Progress | None = None
        self._steps = None
        self._roll = None
        self._roll_stats = [0, 0.0]  # finished, tool calls
        self.last_eval: dict[str, Any] | None = None
        # off a terminal (a log file, CI, `--no-progress`) bars are replaced by one plain line per step
        self.lines = total_steps > 0 and (not enabled or not self.console.is_terminal)
        self._t0 = time.monotonic()
        self._first_step: int | None = None

    def __enter__(self) -> "TrainProgress":
        self._t0 = time.monotonic()
        if self.enabled and not self.lines:
            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._p.__enter__()
            # eval-only sessions (check, compare, eval) pass 0 steps: no empty "train 0/0" bar
            self._steps = self._p.add_task("train", total=self.total, info="", visible=self.total > 0)
            self._roll = self._p.add_task("rollouts", total=1, info="", visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def advance_to(self, step: int) -> None:
        self._first_step = step  # steps before this one ran in an earlier session: not in the rate
        if self._p is not None:
            self._p.update(self._steps, completed=step)

    def start_rollouts(self, n: int, label: str) -> None:
        self._roll_stats = [0, 0.0]
        if self._p is not None:
            self._p.reset(self._roll, total=n, description=label, info="", visible=True)

    def rollout_done(self, traj: Trajectory) -> None:
        self._roll_stats[0] += 1
        self._roll_stats[1] += traj.num_tool_calls
        if self._p is not None:
            n, calls = self._roll_stats
            self._p.update(self._roll, advance=1, info=f"tool calls/traj {calls / n:.2f}")

    def step_done(self, step: int, m: dict[str, Any]) -> None:
        if self.lines:
            self.console.print(step_line(step, self.total, m, time.monotonic() - self._t0,
                                         step - (self._first_step or 0), self.last_eval),
                               highlight=False, markup=False, soft_wrap=True)
        if self._p is None:
            return
        info = (
            f"reward {m['reward_mean']:.3f}  calls/traj {m['tool_calls_per_traj']:.2f}  "
            f"zero-var {m.get('zero_variance_fraction', 0):.2f}"
        )
        if self.last_eval:
            info += f"  valid {self.last_eval['reward_mean']:.3f}"
        self._p.update(self._steps, completed=step, info=info)
        self._p.update(self._roll, visible=False)

    def eval_done(self, step: int, m: dict[str, Any]) -> None:
        self.last_eval = m
        if self._p is not None or self.lines:
            self.console.print(
                f"eval @ step {step}: reward {m['reward_mean']:.3f}  pass {m['pass_rate']:.2f}  "
                f"calls/traj {m['tool_calls_per_traj']:.2f}  latency {m['latency_s_mean']:.2f}s"
            )


def _dur(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def step_line(step: int, total: int, m: dict[str, Any], elapsed: float, done: int,
              last_eval: dict[str, Any] | None = None) -> str:
    """One plain progress line: step, reward, tool calls, timings, elapsed and ETA (from this session's rate)."""
    eta = elapsed / done * (total - step) if done > 0 else None
    parts = [f"step {step}/{total}", f"reward {m.get('reward_mean', 0.0):.3f}",
             f"calls/traj {m.get('tool_calls_per_traj', 0.0):.2f}", f"zero-var {m.get('zero_variance_fraction', 0):.2f}"]
    if last_eval:
        parts.append(f"valid {last_eval['reward_mean']:.3f}")
    parts.append("time " + " ".join(f"{k} {m[f'time/{k}']:.2f}s" for k in ("sampling", "grading", "training")
                                    if f"time/{k}" in m))
    parts.append(f"elapsed {_dur(elapsed)}" + (f" ETA {_dur(eta)}" if eta is not None else ""))
    return "  ".join(parts)


@contextmanager
def sft_progress(label: str, console: Console | None = None) -> Iterator[Any]:
    """A progress bar for :func:`agentrft.rl.sft.run_sft`; yields its ``on_step(step, total, stats)`` callback.
    Off a terminal: a plain line about every 5% of the steps (and the last), with loss, elapsed and ETA."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        t0 = time.monotonic()

        def on_step(i: int, n: int, st: dict[str, Any]) -> None:
            if i == n or i == 1 or i % max(1, n // 20) == 0:
                el = time.monotonic() - t0
                console.print(f"{label} step {i}/{n}  loss {st['loss']:.3f}  elapsed {_dur(el)}  "
                              f"ETA {_dur(el / max(1, i) * (n - i))}", highlight=False, markup=False, soft_wrap=True)

        yield on_step
        return
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console or Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None, info="")
        yield lambda i, n, st: bar.update(task, total=n, completed=i, info=f"loss {st['loss']:.3f}")
