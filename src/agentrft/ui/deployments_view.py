"""The dashboard's deployments pages (read-only): every deployment with its mode, weight and status; one
deployment's KPIs per arm in the current step, its chart over time (:mod:`agentrft.ui.deploy_chart`: weight,
violation rate, a grader's mean and latency p95 per arm, with steps and rollbacks marked) and its history, each
advance, hold and rollback with its evidence."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response


def add_deployment_pages(app: FastAPI, store: Any, render: Any, page_error: type[Exception]) -> None:
    @app.get("/deployments", response_class=HTMLResponse)
    async def deployments_page(request: Request) -> Response:
        return render(request, "deployments.html.jinja", deployments=store.list_deployments())

    @app.get("/deployments/{name}", response_class=HTMLResponse)
    async def deployment_page(request: Request, name: str) -> Response:
        from markupsafe import Markup

        from agentrft.gate import rollout as ro
        from agentrft.ui.deploy_chart import draw

        try:
            s = ro.status(store, name)
        except ro.DeployError as e:
            raise page_error(e.status, "unknown deployment", str(e)) from None
        obs = store.deployment_observations(name)
        chart = Markup(draw(s, s["events"], obs, window=10)) if obs else None  # (built from escaped parts)
        state = dict(s["state"])
        state.pop("drift_window", None)
        return render(request, "deployment.html.jinja", d=s, chart=chart, state=state,
                      steps=[e for e in s["events"] if e["kind"] in ("advance", "rollback", "hold", "drift_alert")])
