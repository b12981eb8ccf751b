"""The server's tool declarations and approval settings (``tools:`` and ``approvals:`` in the serve config; issue
17). Kept apart from serve/approvals.py so that reading a config imports no web framework."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ServedTool(BaseModel):
    """A tool the served models may call, as far as the server cares: its name and whether a person must approve
    each call before the client gets it. (The client runs tools; the server never calls them.)"""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]{1,64}$", description="the function name models call")
    requires_approval: bool = Field(False, description="hold every call of it in the approval queue until a person "
                                    "approves or denies it")


class ApprovalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait_s: float = Field(30.0, ge=0, le=3600, description="how long a chat request waits for the decision before "
                          "it answers 202 pending (0: answer pending at once)")
    poll_s: float = Field(0.25, gt=0, le=60, description="how often a waiting request reads the decision from the "
                          "store")
    keep_s: float = Field(3600.0, gt=0, description="how long a pending answer stays retrievable with GET "
                          "/v1/chat/completions/{id} (in the server's memory)")


def approval_tool_names(tools: list[ServedTool]) -> set[str]:
    return {t.name for t in tools if t.requires_approval}


def tools_from_run_config(run: Any) -> list[dict]:
    """The ``requires_approval`` tools of a run config's ``tools`` entries (HTTP ``{name, requires_approval}``, MCP
    ``{requires_approval: [names]}``), as serve-config tool declarations; Python ``@tool(requires_approval=True)``
    functions are found by importing their ``module:function`` refs."""
    out: dict[str, dict] = {}
    for entry in run.tools:
        d = entry.model_dump() if hasattr(entry, "model_dump") else dict(entry)
        flag = d.get("requires_approval")
        names: list[str] = []
        if d.get("type") == "python":
            names = _python_tools_needing_approval(d["ref"])
        elif flag is True and isinstance(d.get("name"), str):
            names = [d["name"]]
        elif isinstance(flag, list):
            names = [n for n in flag if isinstance(n, str)]
        for name in names:
            out[name] = {"name": name, "requires_approval": True}
    return list(out.values())


def _python_tools_needing_approval(ref: str) -> list[str]:
    import importlib

    mod_name, _, attr = ref.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - a tool we cannot inspect might need approval: refuse, never guess
        from agentrft.config import ConfigError

        raise ConfigError(f"tools: cannot import {mod_name} to read which of its tools require approval "
                          f"({type(e).__name__}: {e})") from None
    objs = [getattr(mod, attr, None)] if attr != "*" else list(vars(mod).values())
    names = []
    for obj in objs:
        spec = getattr(obj, "__agentrft_tool__", None)
        if spec is not None and getattr(spec, "requires_approval", False):
            names.append(spec.name)
    return names
