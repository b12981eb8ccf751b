"""repo_locator generator: small repositories, file-locating tasks, graders and imperfect demonstrations.

Each row carries its own repository (4–8 Python modules under ``app/`` and ``lib/``, 1–2 functions each, named
``<verb>_<noun>`` from a small vocabulary; some functions call a function of another module, which that module
imports with ``from lib.x import f``). Two task kinds, one sentence each:

* ``rename``  — "Rename X everywhere: which files must change?"  Truth: the file defining X plus every file
  calling it (= exactly the files whose text contains ``X``, since names never contain one another).
  Optimal policy: ``grep("X")`` then copy its output: ``FILES: a.py, b.py``.
* ``handler`` — "The handler for X mis-parses Y: which file must change?"  Truth: the one file defining X.
  Optimal policy: ``grep("def X")`` then copy.

Demonstrations are imperfect on purpose: ``redundant_frac`` of them add calls (list_files, read_file, a
broad grep first), ``wrong_frac`` end in a partial answer (rename → only the defining file or one caller
missing; handler → every file that mentions X). The rest are optimal.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

from agentrft.environments.common import check_sizes, corpus_rows, run_demo, write_json, write_jsonl
from agentrft.tools.registry import resolve_python_tool

TOOLS_REF = "agentrft.environments.repo_locator.tools:*"
GRADERS = "agentrft.environments.repo_locator.graders"

SYSTEM_PROMPT = (
    "You find the files to edit in a small repository. Use the tools, then answer with one line: "
    "FILES: path, path"
)

MODULES = ["api", "auth", "cache", "cli", "core", "db", "jobs", "mail", "net", "parse", "report", "store", "util", "web"]
DIRS = ["app", "lib"]
VERBS = ["parse", "load", "save", "check", "send", "read", "build", "format"]
NOUNS = ["date", "user", "order", "price", "token", "header", "config", "item"]
BUGS = ["empty input", "negative numbers", "long names", "unicode text", "missing fields", "spaces"]

MIN_CALLS = 1  # one grep answers every task
MAX_CALLS = 5  # the efficiency budget: 5 or more calls earn 0 efficiency


def _tools() -> dict[str, Any]:
    return {t.name: t for t in resolve_python_tool(TOOLS_REF)}


def make_repo(rng: random.Random) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """Build one repository.

    Returns ``(repo, defined_in, calls)``: ``repo`` maps path → source, ``defined_in`` maps function →
    path, ``calls`` maps function → the function it calls (or None).
    """
    k = rng.randint(4, 8)
    mods = rng.sample(MODULES, k)
    paths = [f"{rng.choice(DIRS)}/{m}.py" for m in mods]
    names = rng.sample([f"{v}_{n}" for v in VERBS for n in NOUNS], 2 * k)
    funcs: dict[str, list[str]] = {}
    defined_in: dict[str, str] = {}
    i = 0
    for p in paths:
        n = rng.randint(1, 2)
        funcs[p] = names[i : i + n]
        i += n
        for f in funcs[p]:
            defined_in[f] = p
    calls: dict[str, str | None] = {}
    all_funcs = [f for p in paths for f in funcs[p]]
    for f in all_funcs:
        others = [g for g in all_funcs if defined_in[g] != defined_in[f]]
        calls[f] = rng.choice(others) if others and rng.random() < 0.5 else None
    return _render(paths, funcs, defined_in, calls), defined_in, calls


def _render(paths, funcs, defined_in, calls) -> dict[str, str]:
    repo: dict[str, str] = {}
    for p in paths:
        imported: dict[str, list[str]] = {}
        for f in funcs[p]:
            g = calls[f]
            if g is not None:
                imported.setdefault(defined_in[g], [])
                if g not in imported[defined_in[g]]:
                    imported[defined_in[g]].append(g)
        lines = []
        for src in sorted(imported):
            mod = src[:-3].replace("/", ".")
            lines.append(f"from {mod} import {', '.join(sorted(imported[src]))}")
        if lines:
            lines.append("")
        for f in funcs[p]:
            g = calls[f]
            lines.append(f"def {f}(x):")
            lines.append(f"    return {g}(x)" if g else "    return x")
            lines.append("")
        repo[p] = "\n".join(lines).rstrip() + "\n"
    return dict(sorted(repo.items()))


def files_mentioning(symbol: str, defined_in: dict[str, str], calls: dict[str, str | None]) -> list[str]:
    """Ground truth from the call graph (not from text search): the defining file plus every caller's file."""
    files = {defined_in[symbol]}
    files.update(defined_in[f] for f, g in calls.items() if g == symbol)
    return sorted(files)


def make_task(rng: random.Random, kind: str, callers: tuple[int, int] = (1, 2)) -> dict[str, Any]:
    """One task row without messages/tools: repository, target symbol and reference answer. ``callers``: how
    many functions of other files are made to call the target (drawn uniformly in the range)."""
    while True:
        repo, defined_in, calls = make_repo(rng)
        symbol = rng.choice(sorted(defined_in))
        # make some functions of other files call the target, so "every file mentioning X" > 1 file
        other = sorted(f for f in defined_in if defined_in[f] != defined_in[symbol])
        if not other:
            continue
        for f in rng.sample(other, min(len(other), rng.randint(*callers))):
            calls[f] = symbol
        paths = sorted(repo)
        funcs: dict[str, list[str]] = {p: [] for p in paths}
        for f in sorted(defined_in, key=lambda f: (paths.index(defined_in[f]), f)):
            funcs[defined_in[f]].append(f)
        repo = _render(paths, funcs, defined_in, calls)
        break
    mentions = files_mentioning(symbol, defined_in, calls)
    if kind == "rename":
        expected = mentions
        user = f"Rename {symbol} everywhere: which files must change?"
    else:
        expected = [defined_in[symbol]]
        user = f"The handler for {symbol} mis-parses {rng.choice(BUGS)}: which file must change?"
    return {
        "user": user,
        "task": kind,
        "symbol": symbol,
        "repo": repo,
        "mentions": mentions,
        "expected_files": expected,
        "expected_answer": "FILES: " + ", ".join(expected),
    }


def make_row(rng: random.Random, idx: str, schemas: list[dict[str, Any]], rename_frac: float = 0.5,
             callers: tuple[int, int] = (1, 2)) -> dict[str, Any]:
    kind = "rename" if rng.random() < rename_frac else "handler"
    t = make_task(rng, kind, callers)
    return {
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": t["user"]}],
        "tools": schemas,
        "id": idx,
        "task": t["task"],
        "symbol": t["symbol"],
        "repo": t["repo"],
        "expected_files": t["expected_files"],
        "expected_answer": t["expected_answer"],
        "min_tool_calls": MIN_CALLS,
        "max_tool_calls": MAX_CALLS,
    }


def demo_plan(rng: random.Random, row: dict[str, Any], redundant: bool, wrong: bool) -> tuple[list, str]:
    """(plan, answer) for one demonstration."""
    sym, files = row["symbol"], row["expected_files"]
    mentions = sorted(p for p, text in row["repo"].items() if sym in text)
    best = ("grep", {"pattern": sym if row["task"] == "rename" else f"def {sym}"})
    plan: list[tuple[str, dict[str, Any]]] = [best]
    answer_files = list(files)
    if wrong:
        if row["task"] == "rename":
            defining = [p for p in mentions if f"def {sym}(" in row["repo"][p]]
            answer_files = defining if rng.random() < 0.5 else [p for p in files if p != files[-1]] or defining
            if answer_files == files:  # never let a "wrong" demo be right by accident
                answer_files = defining
        else:
            plan = [("grep", {"pattern": sym})]  # the broad search, answered verbatim: every mention
            answer_files = mentions
    if redundant:  # 1, 2 or 3 extra calls (mean 2); at most one read_file to keep demos short
        style = rng.randrange(3)
        look = ("list_files", {"dir": "."})
        if style == 0:
            plan = [look] + plan
        elif style == 1:
            plan = [look] + plan + [("read_file", {"path": files[0]})]
        else:
            second = ("grep", {"pattern": sym}) if row["task"] == "handler" and plan[0][1]["pattern"] != sym else (
                "list_files", {"dir": files[0].split("/")[0]})
            plan = [look, second] + plan + [("read_file", {"path": files[0]})]
    return plan, "FILES: " + ", ".join(answer_files)


def generate(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 200,
    n_valid: int = 50,
    n_demos: int | None = None,
    wrong_frac: float = 0.3,
    redundant_frac: float = 0.5,
    rename_frac: float = 0.5,
    callers: tuple[int, int] = (1, 2),
) -> dict[str, Path]:
    """Write train/valid/demos JSONL and the grader JSON under ``out_dir``; byte-identical for a seed.

    ``rename_frac`` of the rows are ``rename`` tasks, whose target is called from ``callers`` (low, high) functions
    of other files (so a rename answer has 2 to high + 1 files, more when the repository already called it).
    Demos are built from the first ``n_demos`` train rows (default: all of them) by running the real tools.
    Exactly ``round(wrong_frac * n_demos)`` demos are wrong and ``round(redundant_frac * n_demos)`` redundant,
    assigned independently at random.
    """
    from agentrft.environments.repo_locator import graders as g

    check_sizes(n_train, n_valid, n_demos, wrong_frac, redundant_frac)
    if isinstance(rename_frac, bool) or not isinstance(rename_frac, (int, float)) or not 0.0 <= rename_frac <= 1.0:
        raise ValueError(f"rename_frac: expected a fraction in [0, 1], got {rename_frac!r}")
    if (not isinstance(callers, (tuple, list)) or len(callers) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in callers)
            or not 1 <= callers[0] <= callers[1]):
        raise ValueError(f"callers: expected (low, high) integers with 1 <= low <= high, got {callers!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tools = _tools()
    schemas = [t.schema for t in tools.values()]
    train = [make_row(rng, f"repo-train-{i:04d}", schemas, rename_frac, callers) for i in range(n_train)]
    valid = [make_row(rng, f"repo-valid-{i:04d}", schemas, rename_frac, callers) for i in range(n_valid)]
    n_demos = n_train if n_demos is None else min(n_demos, n_train)
    wrong_set = set(rng.sample(range(n_demos), round(wrong_frac * n_demos)))
    red_set = set(rng.sample(range(n_demos), round(redundant_frac * n_demos)))
    demos = []
    for i in range(n_demos):
        row = train[i]
        plan, answer = demo_plan(rng, row, i in red_set, i in wrong_set)
        msgs = run_demo(row, plan, answer, tools, trace_id=f"demo-{i}", data_dir=str(out))
        demos.append({**row, "messages": msgs, "demo": {"redundant": i in red_set, "wrong": i in wrong_set}})
    files = {
        "train": write_jsonl(out / "train.jsonl", train),
        "valid": write_jsonl(out / "valid.jsonl", valid),
        "demos": write_jsonl(out / "demos.jsonl", demos),
        "grader": write_json(out / "grader.json", g.GRADER),
        "safety_grader": write_json(out / "safety_grader.json", g.SAFETY_GRADER),
        "holdout_graders": write_json(out / "holdout_graders.json", g.HOLDOUT_GRADERS),
    }
    return files


def corpus(out_dir: str | Path) -> Iterator[str]:
    """Every text the model will see: prompts, tool schemas, demo turns, and every tool output a rollout on
    the generated rows can produce for the natural arguments (file lists, grep results, file contents)."""
    for name, row, text in corpus_rows(Path(out_dir), SYSTEM_PROMPT, _tools().values()):
        if row is None:
            yield text
        elif name != "demos.jsonl":
            yield row["expected_answer"]
            yield ", ".join(sorted(row["repo"]))
            for body in row["repo"].values():
                yield body.strip()
