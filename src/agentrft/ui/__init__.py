"""The dashboard (``agentrft ui``): runs with live curves, trajectories, checkpoints, compare, registry, approvals and
audits, server-rendered over the run store. Mount it in another FastAPI app with
``app.mount("/ui", make_ui_app(store, token=...))``."""

from agentrft.ui.app import make_server_app, make_ui_app

__all__ = ["make_server_app", "make_ui_app"]
