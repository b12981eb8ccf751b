"""KPIs per arm over time for one deployment, with its steps and rollback marked — an SVG from any store (the
drawing is :mod:`agentrft.ui.deploy_chart`, which the dashboard's deployment page uses too).

    python benchmarks/deploy_figure.py --store sqlite:///runs/agentrft.db --deployment support-agent \
        --out docs/deploy_kpis.svg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from agentrft.ui.deploy_chart import draw, draw_from_store  # noqa: E402,F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--deployment", required=True)
    ap.add_argument("--out", default="docs/deploy_kpis.svg")
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--grader", default=None)
    a = ap.parse_args()
    from agentrft.store import RunStore

    st = RunStore(a.store, mode="read")
    Path(a.out).write_text(draw_from_store(st, a.deployment, window=a.window, grader=a.grader))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
