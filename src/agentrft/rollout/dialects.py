"""Tool-call dialects: how a model family writes tool calls in its assistant text, chosen from its chat template.

The chat template renders calls (for prompts, demonstrations and tool-result turns); the dialect reads them back
out of sampled text. Each dialect's ``parse`` returns the shared :class:`ParsedTurn` (calls, content, errors) —
a turn that tries to call but cannot be parsed yields ``errors``, never a silently empty call list.

* ``hermes`` — ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` per call (Qwen2.5/Qwen3, Hermes, the
  templates agentrft builds); also reads the plain-JSON turn. This is :func:`agentrft.rollout.parse.parse_turn`.
* ``qwen_xml`` — Qwen3-Coder / Qwen3.5 XML: ``<tool_call><function=NAME><parameter=KEY>VALUE</parameter>…
  </function></tool_call>``; a value is JSON when it parses as JSON, else the string.
* ``llama3_json`` — Llama 3.x: the turn is ``{"name": …, "parameters": {…}}`` (optionally after
  ``<|python_tag|>``); several calls separated by ``;`` or newlines.
* ``mistral`` — ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`` (v3) or ``[TOOL_CALLS]NAME[ARGS]{…}`` per call
  (v11+).

:func:`dialect_for_template` picks one from a chat template's text; a config can name one instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

from agentrft.rollout.parse import ParsedCall, ParsedTurn, _call_from_obj, calls_from_objects, parse_turn


@dataclass(frozen=True)
class Dialect:
    name: str
    parse: Callable[[str], ParsedTurn]
    # text that starts a tool call: a streaming parser sends what comes before it as content and holds the rest
    start_markers: tuple[str, ...]
    # how to tell the model to write a call (shown after a malformed one)
    example: str
    # the start of a call, to force one (``tool_choice``): ``{name}`` is filled with the function's name
    call_prefix: str = ""
    named_prefix: str = ""

    def forced_prefix(self, name: str | None) -> str:
        """Text that starts an assistant turn so that it is a call (to ``name``, or to any tool when None)."""
        return self.named_prefix.format(name=name) if name is not None else self.call_prefix


# ---- Qwen XML ---------------------------------------------------------------------------------------------------
_XML_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_XML_FUNC = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_XML_PARAM = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


def _xml_value(raw: str) -> object:
    v = raw.strip("\n")
    try:
        return json.loads(v)
    except (json.JSONDecodeError, ValueError):
        return v


def parse_qwen_xml(text: str) -> ParsedTurn:
    calls: list[ParsedCall] = []
    errors: list[str] = []
    if "<tool_call>" not in text and "<function=" not in text:
        return ParsedTurn(text.strip())
    bodies = _XML_CALL.findall(text)
    rest = _XML_CALL.sub("", text)
    if "<tool_call>" in rest:
        errors.append("malformed tool call: <tool_call> without a closing </tool_call>")
        rest = rest.split("<tool_call>", 1)[0]
    if not bodies and "<function=" in rest:  # bare <function=…> blocks (some checkpoints drop the wrapper)
        bodies = [m.group(0) for m in _XML_FUNC.finditer(rest)]
        rest = _XML_FUNC.sub("", rest)
        if "<function=" in rest:
            errors.append("malformed tool call: <function=…> without a closing </function>")
            rest = rest.split("<function=", 1)[0]
    for body in bodies:
        funcs = list(_XML_FUNC.finditer(body))
        if not funcs:
            errors.append(f"malformed tool call: no <function=NAME>…</function> in {body.strip()[:200]}")
            continue
        for f in funcs:
            name = f.group(1).strip()
            if not name:
                errors.append("malformed tool call: empty function name")
                continue
            args = {p.group(1).strip(): _xml_value(p.group(2)) for p in _XML_PARAM.finditer(f.group(2))}
            leftover = _XML_PARAM.sub("", f.group(2)).strip()
            if leftover:
                errors.append(f"malformed tool call: text outside <parameter> tags in {name!r}: {leftover[:100]}")
                continue
            calls.append(ParsedCall(name, json.dumps(args, ensure_ascii=False)))
    return ParsedTurn(rest.strip(), calls, errors)


# ---- Llama 3 JSON -----------------------------------------------------------------------------------------------
_PYTHON_TAG = "<|python_tag|>"


def _json_objects(s: str) -> list[object] | None:
    """JSON values separated by ``;``/whitespace, or None if ``s`` is not such a sequence."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(s) and (s[i].isspace() or s[i] == ";"):
            i += 1
        if i >= len(s):
            return out
        try:
            obj, i = dec.raw_decode(s, i)
        except json.JSONDecodeError:
            return None
        out.append(obj)


def parse_llama3_json(text: str) -> ParsedTurn:
    s = text.strip()
    tagged = s.startswith(_PYTHON_TAG)
    if tagged:
        s = s[len(_PYTHON_TAG) :].strip()
    if not s.startswith(("{", "[")):
        if tagged:
            return ParsedTurn("", [], [f"malformed tool call: {_PYTHON_TAG} not followed by JSON"])
        return ParsedTurn(text.strip())
    objs = _json_objects(s)
    if objs is None:
        if tagged or re.match(r'^\[?\s*\{\s*"(name|type|function)"', s):
            return ParsedTurn("", [], ["malformed tool call: not valid JSON"])
        return ParsedTurn(text.strip())
    items = [x for o in objs for x in (o if isinstance(o, list) else [o])]
    looks = items and all(isinstance(o, dict) and "name" in o and ("parameters" in o or "arguments" in o)
                          or isinstance(o, dict) and "function" in o for o in items)
    if not looks:
        if tagged:
            return ParsedTurn("", [], ["malformed tool call: JSON without a name and parameters"])
        return ParsedTurn(text.strip())
    return ParsedTurn("", *calls_from_objects(items))


# ---- Mistral ----------------------------------------------------------------------------------------------------
_TC = "[TOOL_CALLS]"
_ARGS = "[ARGS]"


def parse_mistral(text: str) -> ParsedTurn:
    if _TC not in text:
        return ParsedTurn(text.strip())
    head, _, tail = text.partition(_TC)
    calls, errors = [], []
    segments = tail.split(_TC)  # v11+ repeats the marker per call; v3 has one marker and a JSON list
    for seg in segments:
        seg = seg.strip()
        if _ARGS in seg:  # NAME[ARGS]{...}
            name, _, args = seg.partition(_ARGS)
            try:
                obj = json.loads(args)
                calls.append(_call_from_obj({"name": name.strip(), "arguments": obj}))
            except json.JSONDecodeError as e:
                errors.append(f"malformed tool call: arguments of {name.strip()!r} are not valid JSON ({e.msg})")
            except ValueError as e:
                errors.append(f"malformed tool call: {e}")
            continue
        objs = _json_objects(seg)
        if not objs:
            errors.append(f"malformed tool call: {_TC} not followed by a JSON list of calls: {seg[:200]}")
            continue
        for o in (x for ob in objs for x in (ob if isinstance(ob, list) else [ob])):
            try:
                calls.append(_call_from_obj(o))
            except ValueError as e:
                errors.append(f"malformed tool call: {e}")
    return ParsedTurn(head.strip(), calls, errors)


DIALECTS: dict[str, Dialect] = {
    "hermes": Dialect("hermes", parse_turn, ("<tool_call>",),
                      '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>',
                      "<tool_call>", '<tool_call>{{"name": "{name}", "arguments": '),
    "qwen_xml": Dialect("qwen_xml", parse_qwen_xml, ("<tool_call>", "<function="),
                        "<tool_call>\n<function=TOOL>\n<parameter=NAME>\nVALUE\n</parameter>\n</function>\n</tool_call>",
                        "<tool_call>\n<function=", "<tool_call>\n<function={name}>\n"),
    "llama3_json": Dialect("llama3_json", parse_llama3_json, (_PYTHON_TAG,),
                           '{"name": "<tool>", "parameters": {...}}', '{"name": "', '{{"name": "{name}", "parameters": '),
    "mistral": Dialect("mistral", parse_mistral, (_TC,), '[TOOL_CALLS][{"name": "<tool>", "arguments": {...}}]',
                       '[TOOL_CALLS][{"name": "', '[TOOL_CALLS][{{"name": "{name}", "arguments": '),
}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown tool-call dialect {name!r}; known: {', '.join(DIALECTS)}") from None


def dialect_for_template(chat_template: str | None) -> Dialect:
    """The dialect a chat template writes tool calls in (Hermes when it shows none of the others' markers)."""
    t = chat_template or ""
    if "<function=" in t and "<parameter=" in t:
        return DIALECTS["qwen_xml"]
    if _TC in t:
        return DIALECTS["mistral"]
    if "<tool_call>" in t:
        return DIALECTS["hermes"]
    if _PYTHON_TAG in t or ("<|start_header_id|>" in t and "parameters" in t):
        return DIALECTS["llama3_json"]
    return DIALECTS["hermes"]
