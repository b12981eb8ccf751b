"""repo_locator tools: read-only views of the small repository stored in the dataset row (``item["repo"]``).

The repository is ``{path: content}`` inside the row, so the tools are stateless and can be served over HTTP
(the Agent RFT contract sends the row with every call). Outputs are short, sorted and comma-separated so a
tiny model can copy file names from them into its answer.
"""

from __future__ import annotations

from agentrft.tools.registry import ToolContext, tool


def _repo(ctx: ToolContext) -> dict[str, str]:
    repo = (ctx.item or {}).get("repo")
    if not isinstance(repo, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in repo.items()):
        raise ValueError("repo_locator: the dataset row has no 'repo' object of {path: content}")
    return repo


def _norm_dir(dir: str) -> str:
    d = (dir or "").strip().strip("/")
    return "" if d in ("", ".") else d + "/"


@tool
def list_files(dir: str, ctx: ToolContext) -> str:
    """List the files under a directory.

    Args:
        dir: A directory such as "." or "lib".
    """
    prefix = _norm_dir(dir)
    files = sorted(p for p in _repo(ctx) if p.startswith(prefix))
    return ", ".join(files) if files else f"no files under {dir}"


@tool
def grep(pattern: str, ctx: ToolContext) -> str:
    """Find the files whose text contains a pattern.

    Args:
        pattern: Plain text to find, such as "load_user".
    """
    if not pattern:
        return "pattern is empty"
    files = sorted(p for p, text in _repo(ctx).items() if pattern in text)
    return ", ".join(files) if files else f"no matches for {pattern}"


@tool
def read_file(path: str, ctx: ToolContext) -> str:
    """Read one file.

    Args:
        path: A file path such as "lib/parse.py".
    """
    p = (path or "").strip().removeprefix("./")
    repo = _repo(ctx)
    if p not in repo:
        return f"no file {path}"
    return repo[p].strip()
