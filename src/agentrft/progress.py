"""rich progress bars for long work: steps with live reward and tool-call figures, rollouts within a step."""

from __future__ import annotations

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

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
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
        if self._p is not None:
            self._p.console.print(
                f"eval @ step {step}: reward {m['reward_mean']:.3f}  pass {m['pass_rate']:.2f}  "
                f"calls/traj {m['tool_calls_per_traj']:.2f}  latency {m['latency_s_mean']:.2f}s"
            )


@contextmanager
def sft_progress(label: str, console: Console | None = None) -> Iterator[Any]:
    """A progress bar for :func:`agentrft.rl.sft.run_sft`; yields its ``on_step(step, total, stats)`` callback."""
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console or Console(stderr=True)) as bar:
        task = bar.add_task(label, total=None, info="")
        yield lambda i, n, st: bar.update(task, total=n, completed=i, info=f"loss {st['loss']:.3f}")
