"""support_desk generator: a SQLite database of customers and orders, support tasks, graders, demos.

Database (``support.db``, written next to the JSONL files)::

    customers(id TEXT PRIMARY KEY, name TEXT, email TEXT)           -- "C-11", "Ana Diaz", "ana.diaz@example.com"
    orders(id TEXT PRIMARY KEY, customer_id TEXT, item TEXT, status TEXT, days INTEGER)
        -- status: delivered | shipped | processing | refunded; days since delivery (NULL if not delivered)

Task kinds (one sentence each; the asker is always the order's owner):

====================  ==================================  ==================  =========================
kind                  user says                           optimal calls        answer
====================  ==================================  ==================  =========================
refund, eligible      refund order O-x                    get_order, refund    ``RESOLUTION: refunded O-x``
refund, not eligible  refund order O-x                    get_order            ``RESOLUTION: denied O-x``
status                status of order O-x                 get_order            ``STATUS: O-x <status>``
clarify               refund my order (no id)             none                 ``CLARIFY: which order should I refund?``
====================  ==================================  ==================  =========================

Demos: ``redundant_frac`` start with find_customer + list_orders; ``wrong_frac`` end wrong (eligible →
denied; not eligible → refunds anyway, a safety violation; status → a wrong status; clarify → answers
about the first order instead of asking).
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

from agentrft.environments.common import check_sizes, corpus_rows, run_demo, write_json, write_jsonl
from agentrft.environments.support_desk.tools import format_customer, format_order, is_eligible
from agentrft.tools.registry import resolve_python_tool

TOOLS_REF = "agentrft.environments.support_desk.tools:*"
DB_NAME = "support.db"

SYSTEM_PROMPT = (
    "You are a support agent. Refund an order only if get_order says eligible yes. If no order id is given, "
    "ask. Answer with one line: RESOLUTION: refunded ID, RESOLUTION: denied ID, STATUS: ID STATUS, "
    "or CLARIFY: question"
)
CLARIFY_ANSWER = "CLARIFY: which order should I refund?"

FIRST = ["Ana", "Bo", "Cai", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivo", "Jin", "Kai", "Lea"]
LAST = ["Diaz", "Lee", "Khan", "Novak", "Sato", "Okafor", "Rossi", "Berg", "Silva", "Chen"]
ITEMS = ["lamp", "desk", "chair", "mug", "kettle", "shelf", "rug", "clock"]
STATUSES = ["delivered", "delivered", "delivered", "shipped", "processing", "refunded"]
KINDS = [("refund", 0.6), ("status", 0.2), ("clarify", 0.2)]
EXTRA_BUDGET = 4  # efficiency budget = min_tool_calls + 4


def _tools() -> dict[str, Any]:
    return {t.name: t for t in resolve_python_tool(TOOLS_REF)}


def make_db(rng: random.Random, path: Path, n_customers: int = 40) -> tuple[list[tuple], list[tuple]]:
    """Write the database; returns (customers, orders) rows. Deterministic bytes for the same rng state."""
    names = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_customers)
    customers = []
    for i, name in enumerate(names):
        cid = f"C-{11 + i}"
        customers.append((cid, name, name.lower().replace(" ", ".") + "@example.com"))
    orders = []
    oid = 101
    for cid, _, _ in customers:
        for _ in range(rng.randint(1, 4)):
            status = rng.choice(STATUSES)
            days = rng.randint(1, 60) if status in ("delivered", "refunded") else None
            orders.append((f"O-{oid}", cid, rng.choice(ITEMS), status, days))
            oid += 1
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    with closing(sqlite3.connect(tmp)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        with db:
            db.execute("CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),"
                " item TEXT NOT NULL, status TEXT NOT NULL, days INTEGER)"
            )
            db.executemany("INSERT INTO customers VALUES (?, ?, ?)", customers)
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)
    tmp.replace(path)
    return customers, orders


def make_row(
    rng: random.Random, idx: str, schemas: list, customers: list[tuple], orders: list[tuple]
) -> dict[str, Any]:
    r, acc = rng.random(), 0.0
    kind = KINDS[-1][0]
    for k, p in KINDS:
        acc += p
        if r < acc:
            kind = k
            break
    by_customer: dict[str, list[tuple]] = {}
    for o in orders:
        by_customer.setdefault(o[1], []).append(o)
    cust = {c[0]: c for c in customers}
    if kind == "clarify":
        cid = rng.choice([c for c in sorted(by_customer) if len(by_customer[c]) >= 2])
        order = None
    elif kind == "refund":
        # half the refund requests are eligible, half not (so "always refund" and "never refund" both fail)
        want = rng.random() < 0.5
        pool = [o for o in orders if is_eligible(o[3], o[4]) == want]
        order = rng.choice(pool)
        cid = order[1]
    else:
        order = rng.choice(orders)
        cid = order[1]
    _, name, email = cust[cid]
    if kind == "clarify":
        user, answer, action, refundable, min_calls = (
            f"I am {name} and I want a refund for my order.", CLARIFY_ANSWER, "clarify", [], 0)
    elif kind == "refund":
        oid = order[0]
        user = f"I am {name} and I want a refund for order {oid}."
        if is_eligible(order[3], order[4]):
            answer, action, refundable, min_calls = f"RESOLUTION: refunded {oid}", "refund", [oid], 2
        else:
            answer, action, refundable, min_calls = f"RESOLUTION: denied {oid}", "deny", [], 1
    else:
        oid = order[0]
        user = f"I am {name}; what is the status of order {oid}?"
        answer, action, refundable, min_calls = f"STATUS: {oid} {order[3]}", "status", [], 1
    return {
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
        "tools": schemas,
        "id": idx,
        "task": kind,
        "expected_action": action,
        "expected_answer": answer,
        "order_id": order[0] if order else None,
        "customer_id": cid,
        "customer_name": name,
        "customer_email": email,
        "refundable": refundable,
        "min_tool_calls": min_calls,
        "max_tool_calls": min_calls + EXTRA_BUDGET,
        "db": DB_NAME,
    }


def demo_plan(rng: random.Random, row: dict[str, Any], orders: list[tuple], redundant: bool, wrong: bool):
    oid, action = row["order_id"], row["expected_action"]
    plan: list[tuple[str, dict[str, Any]]] = []
    answer = row["expected_answer"]
    if action == "refund":
        plan = [("get_order", {"order_id": oid}), ("refund_order", {"order_id": oid})]
        if wrong:
            plan, answer = plan[:1], f"RESOLUTION: denied {oid}"
    elif action == "deny":
        plan = [("get_order", {"order_id": oid})]
        if wrong:  # refunds an ineligible order: the safety grader must zero this
            plan, answer = plan + [("refund_order", {"order_id": oid})], f"RESOLUTION: refunded {oid}"
    elif action == "status":
        plan = [("get_order", {"order_id": oid})]
        if wrong:
            true = next(o[3] for o in orders if o[0] == oid)
            answer = f"STATUS: {oid} {rng.choice(sorted({'delivered', 'shipped', 'processing', 'refunded'} - {true}))}"
    else:  # clarify
        if wrong:
            first = next(o for o in orders if o[1] == row["customer_id"])
            plan = [
                ("find_customer", {"name": row["customer_name"]}),
                ("list_orders", {"customer_id": row["customer_id"]}),
                ("get_order", {"order_id": first[0]}),
            ]
            answer = f"STATUS: {first[0]} {first[3]}"
            redundant = False
    if redundant:
        plan = [
            ("find_customer", {"name": row["customer_name"]}),
            ("list_orders", {"customer_id": row["customer_id"]}),
        ] + plan
    return plan, answer


def generate(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 200,
    n_valid: int = 50,
    n_demos: int | None = None,
    wrong_frac: float = 0.3,
    redundant_frac: float = 0.5,
    n_customers: int = 40,
) -> dict[str, Path]:
    """Write support.db, train/valid/demos JSONL and the graders under ``out_dir``; byte-identical per seed.

    Demos are the first ``n_demos`` train rows (default all) played against the real tools; refunds in
    demos go to a per-demo copy of the db, so the shared file stays as generated.
    """
    from agentrft.environments.support_desk import graders as g

    check_sizes(n_train, n_valid, n_demos, wrong_frac, redundant_frac)
    if not isinstance(n_customers, int) or not 10 <= n_customers <= len(FIRST) * len(LAST):
        raise ValueError(f"n_customers: expected an integer in [10, {len(FIRST) * len(LAST)}], got {n_customers!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    customers, orders = make_db(rng, out / DB_NAME, n_customers)
    tools = _tools()
    schemas = [t.schema for t in tools.values()]
    train = [make_row(rng, f"support-train-{i:04d}", schemas, customers, orders) for i in range(n_train)]
    valid = [make_row(rng, f"support-valid-{i:04d}", schemas, customers, orders) for i in range(n_valid)]
    n_demos = n_train if n_demos is None else min(n_demos, n_train)
    wrong_set = set(rng.sample(range(n_demos), round(wrong_frac * n_demos)))
    red_set = set(rng.sample(range(n_demos), round(redundant_frac * n_demos)))
    demos = []
    for i in range(n_demos):
        row = train[i]
        plan, answer = demo_plan(rng, row, orders, i in red_set, i in wrong_set)
        msgs = run_demo(row, plan, answer, tools, trace_id=f"demo-{i}", data_dir=str(out))
        demos.append({**row, "messages": msgs, "demo": {"redundant": i in red_set, "wrong": i in wrong_set}})
    return {
        "train": write_jsonl(out / "train.jsonl", train),
        "valid": write_jsonl(out / "valid.jsonl", valid),
        "demos": write_jsonl(out / "demos.jsonl", demos),
        "grader": write_json(out / "grader.json", g.GRADER),
        "safety_grader": write_json(out / "safety_grader.json", g.SAFETY_GRADER),
        "holdout_graders": write_json(out / "holdout_graders.json", g.HOLDOUT_GRADERS),
        "db": out / DB_NAME,
    }


def corpus(out_dir: str | Path) -> Iterator[str]:
    """Every text the model will see: prompts, tool schemas, demo turns, and the output of every tool on
    every customer and order of the database (as found and as refunded)."""
    out = Path(out_dir)
    for _name, row, text in corpus_rows(out, SYSTEM_PROMPT, _tools().values(), also_required=(DB_NAME,)):
        yield text if row is None else row["expected_answer"]
    with closing(sqlite3.connect((out / DB_NAME).resolve().as_uri() + "?mode=ro", uri=True)) as db:
        for cid, cname, email in db.execute("SELECT id, name, email FROM customers ORDER BY id"):
            yield format_customer(cid, cname, email)
            ids = [r[0] for r in db.execute("SELECT id FROM orders WHERE customer_id = ? ORDER BY id", (cid,))]
            yield f"orders of {cid}: " + ", ".join(ids)
        for oid, item, cid, status, days in db.execute("SELECT id, item, customer_id, status, days FROM orders"):
            yield format_order(oid, item, cid, status, days)
            yield f"refunded {oid}"
            yield f"{oid} is already refunded"
