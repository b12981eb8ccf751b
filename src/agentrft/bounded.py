"""Parsing untrusted text with bounds: size, nesting depth and (for YAML) the size after alias expansion.

A YAML "billion laughs" (``a: &a [x, x, …]``, ``b: &b [*a, *a, …]``, …) is a few hundred bytes that PyYAML loads
cheaply — aliases share one object — but that explodes wherever it is copied or written out (pydantic, the run
record's JSON: an 837-byte config once became a 78 MB store and 1.1 GB of memory). :func:`load_yaml` composes the
node graph (linear in the text), counts the nodes the document *expands* to (memoised over shared nodes, so
counting costs no more than the graph) and refuses documents over :data:`MAX_NODES` or deeper than
:data:`MAX_DEPTH` before anything is constructed. :func:`loads_json` bounds JSON's depth (Python's parser raises
RecursionError, not ValueError, on deep nesting). :func:`read_text` bounds a file's size before reading it and names
the file and byte of a UTF-8 error. Every refusal is a :class:`BoundsError` (a ValueError) whose message the caller
prefixes with the file or field it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 16 * 1024 * 1024  # a config, grader or policy file
MAX_NODES = 200_000                # scalars + collections after alias expansion
MAX_DEPTH = 100                    # nesting of collections


class BoundsError(ValueError):
    """Input refused for its size, depth or encoding; the message says which bound and by how much."""


def read_text(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of ``path``; BoundsError if it is larger than ``max_bytes`` or not UTF-8 (OSError passes)."""
    p = Path(path)
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BoundsError(f"larger than {max_bytes // (1024 * 1024)} MB; refusing to read it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BoundsError(f"line {line} (byte {e.start}): not UTF-8 text ({e.reason})") from None


def depth_of(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of dicts and lists in ``obj`` (iterative; stops counting once past ``limit``)."""
    deepest = 0
    stack = [(obj, 1)]
    seen: set[int] = set()
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list, tuple)):
            if d > limit:
                return d
            if id(o) in seen:
                continue
            seen.add(id(o))
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (strict JSON has no NaN or Infinity)")


def loads_json(text: str | bytes, *, max_depth: int = MAX_DEPTH, strict: bool = False) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` with a BoundsError (a ValueError);
    ``strict``: NaN and Infinity, which Python's parser accepts, are a ValueError too."""
    try:
        obj = json.loads(text, parse_constant=_no_constant) if strict else json.loads(text)
    except RecursionError:
        raise BoundsError(f"nested more than {max_depth} levels deep") from None
    if depth_of(obj, max_depth) > max_depth:
        raise BoundsError(f"nested more than {max_depth} levels deep")
    return obj


def _expanded_size(root: Any, max_nodes: int, max_depth: int) -> None:
    """Raise BoundsError if the YAML node graph under ``root`` expands to more than ``max_nodes`` nodes or nests
    deeper than ``max_depth`` (a node that contains itself — a recursive alias — is refused too)."""
    from yaml.nodes import MappingNode, SequenceNode

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > max_nodes:
                raise BoundsError(f"expands to more than {max_nodes:,} values (YAML aliases repeating aliases?); "
                                  "refusing to load it")
            if depth[key] > max_depth:
                raise BoundsError(f"nested more than {max_depth} levels deep")
            continue
        if key in size:
            continue
        if key in on_path:
            raise BoundsError("a YAML alias refers to a collection that contains it (a recursive structure)")
        if not isinstance(node, (MappingNode, SequenceNode)):
            size[key], depth[key] = 1, 0
            continue
        if len(on_path) > max_depth:
            raise BoundsError(f"nested more than {max_depth} levels deep")
        if isinstance(node, MappingNode):
            _no_duplicate_keys(node)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _no_duplicate_keys(node: Any) -> None:
    """A key written twice in one mapping is a YAML error at the second one's line: PyYAML keeps the last silently,
    so ``model: a`` … ``model: b`` trained ``b`` with nobody told (YAML 1.2 says keys must be unique)."""
    import yaml
    from yaml.nodes import ScalarNode

    seen: dict[tuple[str, str], Any] = {}
    for k, _ in node.value:
        if not isinstance(k, ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        first = seen.setdefault((k.tag, k.value), k)
        if first is not k:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {k.value!r} appears twice in one mapping (first on line "
                f"{first.start_mark.line + 1}); remove one", k.start_mark)


def _children(node: Any) -> list[Any]:
    from yaml.nodes import MappingNode, SequenceNode

    if isinstance(node, MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def load_yaml(text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load`` with bounds: BoundsError for documents that expand past ``max_nodes`` or nest past
    ``max_depth``; yaml.YAMLError for invalid YAML (as safe_load)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise BoundsError(f"nested more than {max_depth} levels deep") from None
        if node is None:
            return None
        _expanded_size(node, max_nodes, max_depth)
        return loader.construct_document(node)
    finally:
        loader.dispose()
