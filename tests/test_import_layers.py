"""Imports only point down the flywheel, with no cycles.

Every ``agentrft`` module belongs to a layer by its top-level package (a ``cli`` module, wherever it lives, belongs
to the top: it wires commands together). A module may import from its own package, from any lower layer, and from
another package of its own layer as long as the package graph stays acyclic. Imports inside functions count too:
a lazy import is still a dependency. ``python tests/test_import_layers.py`` prints the package graph.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[set[str]] = [
    {"types", "refs", "heap", "progress", "bounded", "redact", "loggers"},  # shared nouns, small utilities, metric sinks
    {"config", "data"},  # the run config, datasets
    {"tools", "graders", "policy", "store"},  # what a rollout is built from, and where it is recorded
    {"rollout"},  # chat rendering, tool-call parsing, the agent loop, the stack builder
    {"rl", "evals", "models", "environments", "traces"},  # training, evaluation, model building, task environments,
    #                                                      production traces back into training data
    {"gate"},  # promotion, registry
    {"serve", "quickstart", "cli", "bench", "config_reference", "ui", "approvals"},  # what users run
]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    """``agentrft.rl.trainer`` → ``rl``; any ``…cli`` module → ``cli``; ``agentrft`` itself → ``agentrft``."""
    parts = module.split(".")
    if parts[-1] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "agentrft"


def import_edges(src: Path) -> list[tuple[str, str, str]]:
    """(importing module, imported module, file:line) for every ``agentrft`` import under ``src/agentrft``."""
    edges = []
    for f in sorted((src / "agentrft").rglob("*.py")):
        rel = f.relative_to(src).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "agentrft" or name.startswith("agentrft."):
                    edges.append((module, name, f"{f.relative_to(src)}:{node.lineno}"))
    return edges


def check(src: Path) -> tuple[list[str], dict[str, set[str]]]:
    """(violations, package graph). A violation names the file:line of an upward import, an import from a package
    outside the layer table, or a cycle between packages."""
    problems: list[str] = []
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b, where in import_edges(src):
        pa, pb = package_of(a), package_of(b)
        if "agentrft" in (pa, pb) or pa == pb:
            continue
        for p in (pa, pb):
            if p not in LAYER_OF:
                problems.append(f"{where}: package {p!r} is not in the layer table (tests/test_import_layers.py)")
        if pa in LAYER_OF and pb in LAYER_OF and LAYER_OF[pb] > LAYER_OF[pa]:
            problems.append(f"{where}: {a} imports {b}: upward ({pa}, layer {LAYER_OF[pa]} → {pb}, layer "
                            f"{LAYER_OF[pb]})")
        graph[pa].add(pb)
    problems += [f"import cycle between packages: {' → '.join(c)}" for c in cycles(graph)]
    return problems, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one package (iterative DFS over the graph)."""
    out, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                out.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return out


def render(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"L{LAYER_OF.get(p, '?')} {p:<13} → {', '.join(sorted(graph[p], key=lambda q: (-LAYER_OF.get(q, 9), q)))}"
                     for p in sorted(graph, key=lambda p: (-LAYER_OF.get(p, 9), p)))


def test_imports_point_down_with_no_cycles():
    problems, graph = check(SRC)
    print("\n" + render(graph))
    assert not problems, "\n".join(problems)
    assert {"rollout", "rl", "policy", "cli"} <= set(graph)  # the walk saw the package (not an empty pass)


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp / "agentrft" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


def test_an_upward_import_is_caught_with_its_place(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "store/__init__.py": "",
        "store/run_store.py": "import json\n\n\ndef f():\n    from agentrft.rl.trainer import Trainer\n",
        "rl/__init__.py": "",
        "rl/trainer.py": "from agentrft.store.run_store import f\n",
    })
    problems, _ = check(src)
    assert any(p.startswith("agentrft/store/run_store.py:5: agentrft.store.run_store imports agentrft.rl.trainer: "
                            "upward (store, layer 2 → rl, layer 4)") for p in problems), problems
    assert any(p.startswith("import cycle between packages: ") and "rl" in p and "store" in p for p in problems)


def test_a_same_layer_cycle_and_an_unknown_package_are_caught(tmp_path):
    src = _tree(tmp_path, {
        "__init__.py": "",
        "tools/a.py": "from agentrft.graders.b import x\n",
        "graders/b.py": "import agentrft.tools.a\n",
        "evals/cli.py": "from agentrft.gate.promote import y\n",  # a cli module sits at the top: allowed
        "newpkg/m.py": "from agentrft.types import T\n",
    })
    problems, graph = check(src)
    assert any("cycle" in p and "graders" in p and "tools" in p for p in problems), problems
    assert any("package 'newpkg' is not in the layer table" in p for p in problems), problems
    assert not any("evals/cli.py" in p for p in problems) and "gate" in graph["cli"]


if __name__ == "__main__":
    probs, g = check(SRC)
    print(render(g))
    print("\n".join(probs) or "no violations")
    sys.exit(1 if probs else 0)
