"""``agentrft serve``: the OpenAI-compatible model server for the base model and every checkpoint (docs/serve.md)."""

from agentrft.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(cfg: ServeConfig, **kw):  # noqa: ANN001, ANN201 - lazy: importing the package stays cheap
    from agentrft.serve.app import create_app as _create

    return _create(cfg, **kw)
