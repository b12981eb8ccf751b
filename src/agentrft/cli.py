"""The ``agentrft`` command."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.markup import escape  # user text (run names, paths, messages) is never read as markup
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Agentic reinforcement fine-tuning of open-weight models.")
console = Console()
err = Console(stderr=True)


def _unavailable(names: tuple[str, ...], module: str, e: Exception) -> None:
    """Stand-ins for the commands of a module that failed to import: listed in ``--help`` as unavailable, and when
    run they print the import error (a missing dependency, a broken install) and exit 2 — a command never silently
    disappears."""
    reason = f"{type(e).__name__}: {e}"
    for name in names:
        def unavailable(ctx: typer.Context, name: str = name) -> None:
            err.print(f"[bold red]error:[/] `agentrft {name}` is unavailable: {module} failed to import: {reason}",
                      highlight=False)
            raise typer.Exit(2)

        # a plain command that takes any arguments, so whatever the user typed after it gets this answer
        app.command(name, help=f"(unavailable: {reason})", add_help_option=False,
                    context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(unavailable)


def _mount(name: str, module: str, help: str) -> None:
    """Sub-command groups living in other packages (graders, tools, models)."""
    import importlib

    try:
        sub = importlib.import_module(module).app
    except Exception as e:  # noqa: BLE001 — any import-time failure is reported, with its type
        _unavailable((name,), module, e)
        return
    app.add_typer(sub, name=name, help=help)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors users cause (bad config, data, grader, model path) into a clear message and exit 2."""
    from agentrft.config import ConfigError
    from agentrft.data import DatasetError
    from agentrft.graders.base import GraderSpecError
    from agentrft.policy.remote_sampler import RemoteEngineError  # the remote sampler's engine (docs/gpu.md)
    from agentrft.rl.trainer import TrainingError
    from agentrft.rollout.stack import ModelLoadError
    from agentrft.store import StoreError

    try:
        yield
    # OSError: a missing file, a full disk, a read-only or unwritable output directory: the OS's words and the path
    except (ConfigError, DatasetError, GraderSpecError, TrainingError, ModelLoadError, StoreError,
            RemoteEngineError, OSError) as e:
        exit_with_user_error(e)


def exit_with_user_error(e: BaseException) -> None:
    """Print a user error as one line on stderr, never read as markup and with its secrets masked (a URL's password
    or ``?api_key=``), and exit 2. Every command group's error handler ends here."""
    from agentrft.redact import redact_text

    err.print(f"[bold red]error:[/] {escape(redact_text(str(e)))}", highlight=False)
    raise typer.Exit(2) from None


def output_file(path: Path, option: str) -> None:
    """Check, before any work, that ``path`` can be written as an output file: its directory is made if missing;
    a directory at ``path``, a file where a directory should be or an unwritable directory is an error naming
    ``option`` (a file written after an hour of work must not fail at the end with a traceback)."""
    from agentrft.config import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot create its directory {path.parent}: {e.strerror or e}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: not writable")


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


@app.command()
def quickstart(
    env: str = typer.Option("repo_locator", "--env", help="bundled environment: repo_locator | support_desk"),
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="where data, models, runs and the report go"),
    seed: int = typer.Option(0, help="seed for data, model init, sampling"),
    steps: Optional[int] = typer.Option(None, help="RL steps (default: the environment's preset)"),
) -> None:
    """The whole flywheel offline: environment, tiny model, SFT warm-start, baseline, RFT, report."""
    _quiet_libraries()
    from agentrft.quickstart import run_quickstart

    with user_errors():
        s = run_quickstart(env, out, seed=seed, steps=steps, console=err)
    b, k = s["baseline"], s["best"]
    console.print(
        f"validation reward {b['validation_reward']:.3f} → {k['validation_reward']:.3f} (step {s['best_step']}), "
        f"tool calls/traj {b['tool_calls_per_traj']:.2f} → {k['tool_calls_per_traj']:.2f}, "
        f"latency {b['latency_s']:.2f}s → {k['latency_s']:.2f}s; total {s['wall_s'] / 60:.1f} min"
    )
    console.print(f"report: {s['report']}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="resume this run id (or unique prefix)"),
    max_steps: Optional[int] = typer.Option(None, help="override hyperparameters.max_steps"),
    no_progress: bool = typer.Option(False, "--no-progress", help="plain log lines instead of progress bars"),
) -> None:
    """Train with RL: rollouts with the real tools, grading, GRPO updates, evals and checkpoints."""
    _quiet_libraries()
    from agentrft.config import load_config
    from agentrft.rl.trainer import train as run_train

    with user_errors():
        overrides = {"hyperparameters": {"max_steps": max_steps}} if max_steps else None
        cfg = load_config(config, overrides)
        run_id = run_train(cfg, resume=resume, progress=not no_progress, console=err)
    console.print(f"run [bold]{run_id}[/] finished — `agentrft show {run_id} --config {config}` for its metrics")


@app.command()
def validate(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    timeout: float = typer.Option(3.0, "--timeout", help="seconds for each reachability probe"),
) -> None:
    """Check a config without loading a model: datasets, graders, tools (and HTTP reachability), endpoint graders,
    the model path. Prints every problem at once; exit 2 if any."""
    from rich.markup import escape

    from agentrft.evals.validate import validate as run_validate

    with user_errors():
        v = run_validate(config, probe_timeout_s=timeout)
    for w in v.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
    if v.problems:
        err.print(f"[bold red]{len(v.problems)} problem{'s' if len(v.problems) != 1 else ''}[/] in {escape(str(config))}:")
        for p in v.problems:
            err.print(f"  {escape(p)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"{escape(str(config))}: ok — " + "; ".join(escape(x) for x in v.summary), highlight=False, soft_wrap=True)


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., "--model", help="HF id, model or checkpoint directory, 'baseline' (the config's "
                              "model), or a run of the store: RUN (its best checkpoint), RUN:latest, RUN:step-N"),
    data: Path = typer.Option(..., "--data", help="JSONL to evaluate on"),
    config: Path = typer.Option(..., "--config", help="run config (tools, grader, sampling settings)"),
    samples: Optional[int] = typer.Option(None, min=1, help="samples per item (default: eval_samples)"),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1, help="evaluate the first N rows only "
                                           "(default: hyperparameters.eval_rows, else all)"),
    out: Optional[Path] = typer.Option(None, help="also write the metrics as JSON here"),
) -> None:
    """Evaluate a baseline or a checkpoint on a dataset; records the trajectories and prints agent metrics."""
    _quiet_libraries()
    from agentrft.config import load_config
    from agentrft.evals.run_eval import run_eval

    with user_errors():
        if out:
            output_file(out, "--out")  # before the eval: a bad path must not cost the whole evaluation
        cfg = load_config(config)
        run_id, metrics = run_eval(cfg, model=model, data=data, samples=samples, max_rows=max_rows, console=err)
    _print_metrics(metrics, title=f"eval of {model} on {data.name} (run {run_id})")
    if out:
        with user_errors():
            out.write_text(json.dumps(metrics, indent=2))


@app.command()
def sft(
    config: Path = typer.Option(..., "--config", help="SFT config (YAML): model, demos_file, output_dir, hyperparameters"),
) -> None:
    """Supervised warm-start on demonstration trajectories (same renderer and loss mask as RL)."""
    _quiet_libraries()
    from agentrft.data import load_dataset
    from agentrft.progress import sft_progress
    from agentrft.rl.sft import load_sft_config, run_sft

    def resolve(base: Path, p: str) -> str:
        q = Path(p)
        return str(q if q.is_absolute() else base / q)

    with user_errors():
        cfg, base = load_sft_config(config)
        hp = cfg.hyperparameters
        model = resolve(base, cfg.model) if (base / cfg.model).exists() else cfg.model
        with sft_progress("sft", console=err) as on_step:
            res = run_sft(model, resolve(base, cfg.demos_file), resolve(base, cfg.output_dir), epochs=hp.n_epochs,
                          batch_size=hp.batch_size, learning_rate=hp.learning_rate, lora=hp.lora,
                          micro_batch_size=hp.micro_batch_size, seed=hp.seed, max_tokens=hp.max_tokens,
                          until_loss=hp.until_loss, on_step=on_step,
                          check_rows=list(load_dataset(resolve(base, cfg.check_file) if cfg.check_file else
                                                       resolve(base, cfg.demos_file), allow_demos=True))[:8])
    console.print(f"SFT: {res.steps} steps on {res.examples} demos ({res.tokens} supervised tokens), loss "
                  f"{res.first_loss:.3f} → {res.last_loss:.3f} in {res.wall_s:.0f}s; model written to {res.out_dir}")
    c = res.check
    if c:
        console.print(f"sample check on {c['prompts']} prompts: ended {c['stopped']:.0%}, called a tool "
                      f"{c['called_a_tool']:.0%}, answered {c['answered']:.0%}, unparsable calls {c['parse_errors']:.0%}")
        for w in c["warnings"]:
            err.print(f"[bold yellow]warning:[/] {w} — RL from this model may have nothing to learn from",
                      highlight=False)


def _store(config: Optional[Path], store: Optional[str]):
    """The store a read-only command reads: opened read-only, so nothing is created or locked (a mistyped path
    is an error, not a new empty store) and a store in a read-only directory is readable."""
    from agentrft.store.locate import open_store

    try:
        return open_store(config, store, mode="read")
    except ValueError as e:  # no store named and no default: a usage error, as before
        raise typer.BadParameter(str(e)) from None


@app.command()
def runs(
    config: Optional[Path] = typer.Option(None, "--config", help="config whose store to read"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL"),
    as_json: bool = typer.Option(False, "--json", help="print the runs as JSON (one object per run)"),
) -> None:
    """List runs in the store (a `running` run whose process stopped sending heartbeats shows as interrupted)."""
    from agentrft.store.run_store import display_status

    with user_errors():
        st = _store(config, store)
        rows = st.list_runs()
    if as_json:
        typer.echo(json.dumps([{**r, "status": display_status(r)} for r in rows], indent=2, default=str))
        return
    t = Table(title="runs")
    for c in ("id", "name", "status", "model", "latest step", "best valid reward", "created"):
        t.add_column(c, overflow="fold")  # ids and paths wrap onto the next line instead of being cut
    for r in rows:
        best = r.get("best_valid_reward")
        t.add_row(escape(r["id"]), escape(r.get("name") or ""), display_status(r), escape(str(r.get("base_model") or "")),
                  str(r.get("latest_step") if r.get("latest_step") is not None else "-"),
                  f"{best:.3f}" if isinstance(best, (int, float)) else "-", str(r.get("created_at") or "")[:19])
    console.print(t)


SHOW_COLUMNS = [
    ("reward_mean", "reward"), ("pass_rate", "pass"), ("tool_calls_per_traj", "calls"), ("tool_errors_per_traj", "tool err"),
    ("turns_per_traj", "turns"), ("completion_tokens_mean", "tokens"), ("latency_s_mean", "latency s"),
    ("repeated_bigram_fraction", "rep-bigram"), ("dropped_fraction", "dropped"), ("zero_variance_fraction", "zero-var"),
    ("kl", "kl"), ("entropy", "entropy"), ("clip_fraction", "clip"), ("time/full_iteration", "iter s"),
]


@app.command()
def show(
    run: str = typer.Argument(..., help="run id or unique prefix"),
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
) -> None:
    """Metrics per step (train and validation) of one run, from the store."""
    from agentrft.store.run_store import display_status

    with user_errors():
        st = _store(config, store)
        info = st.get_run(run)
        if info is None:
            err.print(f"[bold red]error:[/] no run {escape(repr(run))} in the store", highlight=False)
            raise typer.Exit(2)
        rows = st.step_metrics(info["id"])
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    t = Table(title=escape(f"{info['id']} ({display_status(info)})"))
    t.add_column("step")
    t.add_column("split", overflow="fold")
    for _, label in SHOW_COLUMNS:
        t.add_column(label, justify="right", overflow="fold")  # a narrow terminal wraps figures, never cuts them
    for r in rows:
        t.add_row(str(r["step"]), escape(str(r["split"])), *[_fmt(r.get(k)) for k, _ in SHOW_COLUMNS])
    console.print(t)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _print_metrics(m: dict[str, Any], title: str) -> None:
    t = Table(title=escape(title))
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in m.items():
        t.add_row(escape(str(k)), escape(_fmt(v)))
    console.print(t)


config_app = typer.Typer(help="The config reference and defaults, generated from the schemas.", no_args_is_help=True)


@config_app.command("show-defaults")
def config_show_defaults(sft: bool = typer.Option(False, "--sft", help="an SFT config instead of a run config")) -> None:
    """Print a config with every default filled in (required keys as <placeholders>)."""
    from agentrft.config_reference import defaults_yaml

    typer.echo(defaults_yaml("sft" if sft else "train"), nl=False)


@config_app.command("reference")
def config_reference_cmd() -> None:
    """Print the config reference (markdown; docs/config.md is this output)."""
    from agentrft.config_reference import reference_markdown

    typer.echo(reference_markdown())


app.add_typer(config_app, name="config")


_mount("grade", "agentrft.graders.cli", "Validate and run graders (OpenAI graders/validate and graders/run).")
_mount("tools", "agentrft.tools.cli", "Serve tools over HTTP (Agent RFT contract).")
_mount("model", "agentrft.models.cli", "Build and import models offline.")
_mount("bench", "agentrft.bench", "Benchmarks side by side: vs HF generate, TRL and the machine's fp32 limit.")
_mount("approvals", "agentrft.approvals.cli", "Production approvals: list, approve or deny held tool calls.")
_mount("traces", "agentrft.traces.cli", "Production traces: export them as RFT rows and demonstrations.")
_mount("deploy", "agentrft.gate.deploy_cli", "Deployments: shadow, canary, full rollout and rollback of a candidate checkpoint.")


def _register_top_level(module: str, names: tuple[str, ...]) -> None:
    """Modules that contribute top-level commands (``names``) through ``register(app)``."""
    import importlib

    try:
        importlib.import_module(module).register(app)
    except Exception as e:  # noqa: BLE001 — reported when one of its commands is run
        _unavailable(names, module, e)


_register_top_level("agentrft.evals.cli", ("check", "compare", "monitor", "audit"))
_register_top_level("agentrft.gate.cli", ("promote", "registry", "regress"))
_register_top_level("agentrft.serve.cli", ("serve",))
_register_top_level("agentrft.serve.workers.cli", ("worker",))  # fine-tuning job workers (issue 16)
_register_top_level("agentrft.ui.cli", ("ui",))
_register_top_level("agentrft.rl.distill.cli", ("distill", "reward-model"))  # distillation from a teacher endpoint (issue 20)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
