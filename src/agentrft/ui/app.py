"""The dashboard: server-rendered pages over the run store, mountable under ``/ui`` by any ASGI server.

``make_ui_app(store, token=None)`` returns a FastAPI application. ``agentrft ui`` serves it at ``/ui``; another
FastAPI server mounts the same pages with ``app.mount("/ui", make_ui_app(store, token=...))`` (links are built from
the request's ``root_path``, so any mount point works).

Reads only, except two actions that belong to people: approving/denying a queued tool call (``approvals`` table)
and entering a random-audit verdict (``audits`` table, through :func:`agentrft.evals.audit.record_verdict`).

Access. Without a token the pages are for whoever can reach the socket (``agentrft ui`` binds loopback unless given a
token). With a token every request must carry it: ``Authorization: Bearer T``, or the ``agentrft_ui`` cookie, which
opening any page once with ``?token=T`` sets (HttpOnly, SameSite=Strict) before redirecting to the same URL without it.

Forms (CSRF). Every POST must carry the app's form key (a random value rendered into each form, compared in constant
time: another site cannot read it, because the same-origin policy hides our pages from it) and, when the browser sends
an ``Origin`` header, that origin must be this server's own. A forged cross-site POST fails both checks.

Errors are pages: an unknown run or trace id is a 404 page that says which; a malformed filter or form a 400 page
naming the parameter; nothing returns a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrft import bounded
from agentrft.store import AmbiguousRunId, RunStore, StoreError
from agentrft.store.run_store import display_status
from agentrft.ui.queries import (
    COUNT_CAP,
    OUTCOMES,
    PAGE_SIZES,
    FilterError,
    TrajFilter,
    alerts_of,
    audit_sample,
    eval_rows,
    item_across_evals,
    latest_verdicts,
    list_trajectories,
)

HERE = Path(__file__).parent
COOKIE = "agentrft_ui"

# the live curves: (title, metric keys); `grader/*` expands to every per-grader reward recorded
CHARTS: list[tuple[str, list[str]]] = [
    ("reward", ["reward_mean"]),
    ("reward per grader", ["grader/*"]),
    ("pass rate", ["pass_rate"]),
    ("tool calls / trajectory", ["tool_calls_per_traj", "tool_errors_per_traj"]),
    ("latency s / trajectory", ["latency_s_mean", "tool_time_s_mean"]),
    ("KL", ["kl"]),
    ("entropy", ["entropy"]),
    ("clip fraction", ["clip_fraction"]),
    ("zero-variance / dropped fraction", ["zero_variance_fraction", "dropped_fraction"]),
]
CHECKPOINT_COLUMNS = [("reward_mean", "reward"), ("pass_rate", "pass rate"), ("tool_calls_per_traj", "calls"),
                      ("tool_errors_per_traj", "tool errors"), ("latency_s_mean", "latency s"),
                      ("completion_tokens_mean", "tokens")]
TIMING_KEYS = ["time/sampling", "time/grading", "time/training", "time/full_iteration", "time/eval"]


class PageError(Exception):
    """A request the dashboard answers with an error page (status, title, message)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}"
    return str(v)


def _pretty(v: Any) -> str:
    if isinstance(v, str):
        try:  # a tool's output nested 5,000 deep would be a RecursionError and a 500 for the whole page
            v = bounded.loads_json(v)
        except ValueError:
            return v
    return json.dumps(v, indent=2, ensure_ascii=False, default=str)


def make_ui_app(store: RunStore, token: str | None = None, *, title: str = "agentrft") -> FastAPI:
    """The dashboard over ``store`` as an ASGI app; ``token``: required on every request when set."""
    app = FastAPI(title=f"{title} dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html", "jinja"]))
    env.filters["fmt"] = _fmt
    env.filters["pretty"] = _pretty
    env.filters["shown_status"] = display_status  # "interrupted" for a running run whose heartbeat went stale
    form_key = secrets.token_urlsafe(24)
    app.state.store, app.state.form_key = store, form_key
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template(template).render(base=base, form_key=form_key, title=title, request=request, **ctx)
        return HTMLResponse(html, status_code=status)

    # ---- errors as pages ----------------------------------------------------------------------------------
    @app.exception_handler(PageError)
    async def _page_error(request: Request, e: PageError) -> Response:
        return render(request, "error.html.jinja", e.status, error_title=e.title, message=e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        msg = "no such page" if e.status_code == 404 else str(e.detail)
        return render(request, "error.html.jinja", e.status_code, error_title=f"{e.status_code}", message=msg)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ())[1:])}: {err.get('msg')}" for err in e.errors()]
        return render(request, "error.html.jinja", 400, error_title="bad request", message="; ".join(parts))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:  # a bug or the store went away: say so
        return render(request, "error.html.jinja", 500, error_title="the dashboard could not answer",
                      message=f"{type(e).__name__}: {e}")

    # ---- access: token, form key, origin ------------------------------------------------------------------
    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if token:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                rest = {k: v for k, v in request.query_params.multi_items() if k != "token"}
                url = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                resp = RedirectResponse(url, status_code=303)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
                return resp
            auth = request.headers.get("authorization", "")
            cand = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if not (cand and hmac.compare_digest(cand.encode(), token.encode())):
                return render(request, "error.html.jinja", 401, error_title="token required",
                              message="this dashboard needs its token: open it once with ?token=… "
                                      "(or send Authorization: Bearer …)")
        return await call_next(request)

    async def form_of(request: Request) -> dict[str, str]:
        """The POSTed form, after the CSRF checks (form key, same origin)."""
        origin = request.headers.get("origin")
        if origin:  # browsers send it with every POST; "null" (a sandboxed or privacy-redirected form) is refused too
            host = request.headers.get("host", "")
            if origin == "null" or origin.split("://", 1)[-1] != host:
                raise PageError(403, "cross-origin form refused", f"a form from {origin} cannot act on this dashboard")
        body = (await request.body()).decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        if not hmac.compare_digest(form.get("form_key", "").encode(), form_key.encode()):
            raise PageError(403, "form refused", "the form's key is missing or stale: reload the page and submit again")
        return form

    def run_or_404(run_id: str) -> dict:
        try:
            run = store.get_run(run_id)
        except AmbiguousRunId as e:
            raise PageError(400, "ambiguous run id", str(e)) from None
        if run is None:
            raise PageError(404, "unknown run", f"there is no run {run_id!r} in this store")
        return run

    def int_param(request: Request, key: str, default: int | None = None) -> int | None:
        v = request.query_params.get(key, "").strip()
        if not v:
            return default
        try:
            return int(v)
        except ValueError:
            raise PageError(400, "malformed parameter", f"{key}: {v!r} is not an integer") from None

    # ---- runs ---------------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def runs_page(request: Request) -> Response:
        return render(request, "runs.html.jinja", runs=store.list_runs())

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, run_id: str) -> Response:
        run = run_or_404(run_id)
        rows = store.step_metrics(run["id"])
        timings = {}
        for k in TIMING_KEYS:
            xs = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            if xs:
                timings[k] = {"mean": sum(xs) / len(xs), "total": sum(xs), "n": len(xs)}
        ckpts = store.checkpoints(run["id"])
        return render(request, "run.html.jinja", run=run, charts=CHARTS, timings=timings, checkpoints=ckpts,
                      ckpt_columns=CHECKPOINT_COLUMNS, alerts=alerts_of(rows),
                      rows=eval_rows(store, run["id"]), n_traj=store.count_trajectories(run["id"]),
                      config_json=json.dumps(run["config"], indent=2, default=str))

    @app.get("/api/runs/{run_id}/metrics")
    async def run_metrics(request: Request, run_id: str) -> Response:
        try:
            run = store.get_run(run_id)
        except AmbiguousRunId as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        if run is None:
            return JSONResponse({"error": f"no run {run_id!r}"}, status_code=404)
        # every record_step and status change moves updated_at: an unchanged run answers 304 without reading its
        # steps (the page polls every 2 s; a long run's series is megabytes)
        version = f"{run['updated_at']}|{display_status(run)}|{run['latest_step']}"
        etag = '"' + hashlib.sha256(version.encode()).hexdigest()[:20] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        rows = store.step_metrics(run["id"])
        keep = {k for _, keys in CHARTS for k in keys if not k.endswith("*")}
        series: dict[str, list[dict]] = {}
        for r in rows:
            pt = {k: v for k, v in r.items() if (k in keep or k.startswith("grader/")) and isinstance(v, (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)}
            series.setdefault(r["split"], []).append({"step": r["step"], **pt})
        return JSONResponse({"run": run["id"], "status": display_status(run), "updated_at": run["updated_at"],
                             "series": series, "alerts": alerts_of(rows)}, headers=headers)

    # ---- trajectories -------------------------------------------------------------------------------------
    @app.get("/trajectories", response_class=HTMLResponse)
    async def trajectories_page(request: Request) -> Response:
        try:
            f = TrajFilter.parse(dict(request.query_params))
        except FilterError as e:
            raise PageError(400, "malformed filter", str(e)) from None
        if f.run is not None:
            f.run = run_or_404(f.run)["id"]
        page = list_trajectories(store, f)
        runs = [r["id"] for r in store.list_runs()]
        next_url = None
        if page["next"]:
            next_url = "?" + urlencode({**f.raw, "after": page["next"]})
        return render(request, "trajectories.html.jinja", page=page, f=f, runs=runs, outcomes=OUTCOMES,
                      page_sizes=PAGE_SIZES, count_cap=COUNT_CAP, next_url=next_url, first_url="?" + urlencode(f.raw))

    @app.get("/t/{trace_id}", response_class=HTMLResponse)
    async def trajectory_page(request: Request, trace_id: str) -> Response:
        t = store.trajectory(trace_id)
        if t is None:
            raise PageError(404, "unknown trajectory", f"there is no trajectory with trace_id {trace_id!r} in this store")
        calls_by_turn: dict[int, list[dict]] = {}
        for c in t["tool_calls"]:
            calls_by_turn.setdefault(c["turn_index"], []).append(c)
        turn_scores = {g["grader_name"]: g["turn_scores"] for g in t["grades"] if g.get("turn_scores")}
        return render(request, "trajectory.html.jinja", t=t, calls_by_turn=calls_by_turn, turn_scores=turn_scores,
                      audits=store.audits(trace_id), approvals=[a for a in store.list_approvals(limit=1000)
                                                                 if a["trace_id"] == trace_id])

    # ---- one validation item across the run's evals -------------------------------------------------------
    @app.get("/runs/{run_id}/item/{row_index}", response_class=HTMLResponse)
    async def item_page(request: Request, run_id: str, row_index: str) -> Response:
        run = run_or_404(run_id)
        try:
            row = int(row_index)
        except ValueError:
            raise PageError(400, "malformed parameter", f"row: {row_index!r} is not an integer") from None
        by_step = item_across_evals(store, run["id"], row)
        if not by_step:
            raise PageError(404, "unknown item", f"run {run['id']} has no validation trajectories of row {row}")
        prompt = next(iter(by_step.values()))[0]["messages"]
        prompt = [m for m in prompt if m.get("role") in ("system", "user")][:2]
        return render(request, "item.html.jinja", run=run, row=row, by_step=by_step, prompt=prompt,
                      rows=eval_rows(store, run["id"]))

    # ---- checkpoint compare and the registry --------------------------------------------------------------
    @app.get("/runs/{run_id}/compare", response_class=HTMLResponse)
    async def compare_page(request: Request, run_id: str) -> Response:
        from agentrft.evals.compare import compare_trajectories

        run = run_or_404(run_id)
        steps = sorted({m["step"] for m in store.step_metrics(run["id"], split="valid")})
        if len(steps) < 1:
            raise PageError(404, "nothing to compare", f"run {run['id']} has no recorded evals yet")
        a = int_param(request, "a", steps[0])
        b = int_param(request, "b", steps[-1])
        for name, s in (("a", a), ("b", b)):
            if s not in steps:
                raise PageError(404, "unknown eval", f"{name}: run {run['id']} has no eval at step {s} "
                                                     f"(evals: {', '.join(map(str, steps))})")
        ta = store.trajectories(run["id"], step=a, split="valid")
        tb = store.trajectories(run["id"], step=b, split="valid")
        cmp = compare_trajectories(ta, tb, n_boot=1000)
        return render(request, "compare.html.jinja", run=run, steps=steps, a=a, b=b, cmp=cmp,
                      items=cmp["items"][:50])

    @app.get("/registry", response_class=HTMLResponse)
    async def registry_page(request: Request) -> Response:
        return render(request, "registry.html.jinja", entries=store.registry())

    # ---- deployments (issue 17: ui/deployments_view.py) ------------------------------------------------------
    from agentrft.ui.deployments_view import add_deployment_pages

    add_deployment_pages(app, store, render, PageError)

    # ---- approvals ----------------------------------------------------------------------------------------
    @app.get("/approvals", response_class=HTMLResponse)
    async def approvals_page(request: Request) -> Response:
        return render(request, "approvals.html.jinja", pending=store.list_approvals("pending"),
                      decided=[a for a in store.list_approvals(limit=100) if a["status"] != "pending"],
                      done=request.query_params.get("done"))

    @app.post("/approvals/{approval_id}")
    async def decide(request: Request, approval_id: str) -> Response:
        form = await form_of(request)
        try:
            aid = int(approval_id)
        except ValueError:
            raise PageError(400, "malformed request", f"approval id {approval_id!r} is not an integer") from None
        decision = {"approve": "approved", "deny": "denied"}.get(form.get("decision", ""))
        if decision is None:
            raise PageError(400, "malformed form", "decision: expected approve or deny")
        who = form.get("decided_by", "").strip()
        if not who or len(who) > 200:
            raise PageError(400, "who decides?", "decided_by: enter your name (at most 200 characters) so the decision "
                                                 "records who made it")
        if store.get_approval(aid) is None:
            raise PageError(404, "unknown approval request", f"there is no approval request {aid}")
        try:
            store.decide_approval(aid, decision, decided_by=who, reason=form.get("reason", ""))
        except StoreError as e:
            raise PageError(409, "already decided", str(e)) from None
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/approvals?done={aid}", status_code=303)

    # ---- the random-audit queue ---------------------------------------------------------------------------
    @app.get("/audit", response_class=HTMLResponse)
    async def audit_page(request: Request) -> Response:
        from agentrft.evals.audit import VERDICTS

        runs = store.list_runs()
        run_id = request.query_params.get("run") or (runs[0]["id"] if runs else None)
        if run_id is None:
            return render(request, "audit.html.jinja", run=None, runs=runs, sample={}, verdicts=VERDICTS, latest={})
        run = run_or_404(run_id)
        n = int_param(request, "n", 5)
        if n is None or not 1 <= n <= 100:
            raise PageError(400, "malformed parameter", "n: between 1 and 100 trajectories per checkpoint")
        step = int_param(request, "step")
        sample = audit_sample(store, run["id"], n=n, steps=[step] if step is not None else None)
        latest = latest_verdicts(store, [t["trace_id"] for ts in sample.values() for t in ts])
        return render(request, "audit.html.jinja", run=run, runs=runs, sample=sample, verdicts=VERDICTS,
                      latest=latest, n=n, step=step, done=request.query_params.get("done"))

    @app.post("/audit")
    async def audit_post(request: Request) -> Response:
        from agentrft.evals.audit import AuditError, record_verdict

        form = await form_of(request)
        who = form.get("reviewer", "").strip()
        if not who or len(who) > 200:
            raise PageError(400, "who reviews?", "reviewer: enter your name (at most 200 characters) so the verdict "
                                                 "records who gave it")
        trace_id = form.get("trace_id", "")
        try:
            record_verdict(store, trace_id, form.get("verdict", ""), reviewer=who, note=form.get("note", ""))
        except AuditError as e:
            raise PageError(404 if "no trajectory" in str(e) else 400, "verdict not recorded", str(e)) from None
        base = request.scope.get("root_path", "").rstrip("/")
        back = {k: form[k] for k in ("run", "step", "n") if form.get(k)}
        return RedirectResponse(f"{base}/audit?{urlencode({**back, 'done': trace_id})}", status_code=303)

    return app


def make_server_app(store: RunStore, token: str | None = None) -> FastAPI:
    """What ``agentrft ui`` serves: the dashboard at ``/ui`` and a redirect from ``/``."""
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @root.get("/")
    @root.get("/ui")
    async def _index(request: Request) -> Response:  # keeps the query (a ?token=… link)
        q = request.url.query
        return RedirectResponse("/ui/" + (f"?{q}" if q else ""), status_code=307)

    root.mount("/ui", make_ui_app(store, token=token))
    return root
