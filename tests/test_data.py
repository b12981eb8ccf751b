"""Dataset loading and validation: every problem of a file named at file:line, in one error."""

from __future__ import annotations

import json

import pytest

from agentrft.data import (
    MAX_VALID_ROWS,
    Dataset,
    DatasetError,
    Row,
    load_dataset,
    load_datasets,
    normalize_tool,
)

GET_ORDER = {
    "type": "function",
    "function": {
        "name": "get_order",
        "description": "Look up one order.",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
    },
}


def write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                 encoding="utf-8")
    return p


def good_row(q="Where is O-1001?", **extra):
    return {"messages": [{"role": "system", "content": "You are a support agent."}, {"role": "user", "content": q}],
            **extra}


def test_loads_rows_with_item_and_nested_tools(tmp_path):
    flat = {"type": "function", "name": "refund", "description": "Refund.", "parameters": {"type": "object"}}
    p = write(tmp_path, "train.jsonl", [
        good_row(tools=[GET_ORDER], order_id="O-1001", expected={"status": "shipped"}),
        "",  # blank lines are skipped but still count for line numbers
        good_row("second", tools=[flat]),
    ])
    rows = load_dataset(p, known_tools={"get_order", "refund"})
    assert isinstance(rows, Dataset) and rows.warnings == [] and rows.path == str(p)
    assert [(r.index, r.line) for r in rows] == [(0, 1), (1, 3)]
    r0, r1 = rows
    assert isinstance(r0, Row)
    assert r0.tool_names == ["get_order"] and r0.tools[0] == GET_ORDER
    assert r0.item["order_id"] == "O-1001" and r0.item["expected"] == {"status": "shipped"}
    assert r0.item["messages"][1]["content"] == "Where is O-1001?"
    # the flat form is normalized to the nested one; item keeps the row as written
    assert r1.tools == [{"type": "function", "function": {"name": "refund", "description": "Refund.",
                                                          "parameters": {"type": "object"}}}]
    assert r1.item["tools"] == [flat]
    assert r1.tool_names == ["refund"]


def test_list_of_parts_content_is_joined_and_unicode_survives(tmp_path):
    p = write(tmp_path, "t.jsonl", [
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Réponds "},
                                                        {"type": "text", "text": "en français 🇫🇷"}]},
                      {"role": "user", "content": "Où est ma commande ?"}]},
    ])
    (row,) = load_dataset(p)
    assert row.messages[0] == {"role": "developer", "content": "Réponds en français 🇫🇷"}
    assert row.tools is None and row.tool_names == []


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path):
    lines = [
        good_row(),  # 1 ok
        '{"messages": [{"role": "user", "content": "x"}',  # 2 truncated JSON
        '[1, 2]',  # 3 not an object
        {"prompt": "no messages"},  # 4
        {"messages": []},  # 5
        {"messages": "hello"},  # 6
        {"messages": ["hello"]},  # 7 message not an object
        {"messages": [{"content": "no role"}]},  # 8
        {"messages": [{"role": "robot", "content": "x"}]},  # 9
        {"messages": [{"role": "user", "content": 42}]},  # 10
        {"messages": [{"role": "user", "content": "x"}], "tools": {"name": "get_order"}},  # 11
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {}}]},  # 12
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "name": "delete_db"}]},  # 13
        {"messages": [{"role": "tool", "content": "x"}]},  # 14 tool role needs allow_demos
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},  # 15
        {"messages": [{"role": "user"}]},  # 16 no content
    ]
    p = write(tmp_path, "bad.jsonl", lines)
    with pytest.raises(DatasetError) as ei:
        load_dataset(p, known_tools={"get_order"})
    probs = ei.value.problems
    by_line = {int(x.split(":")[1]): x for x in probs}
    assert sorted(by_line) == list(range(2, 17)), probs
    assert all(x.startswith(f"{p}:") for x in probs)
    assert "not valid JSON" in by_line[2] and "column" in by_line[2]
    assert "expected a JSON object" in by_line[3]
    assert "no 'messages'" in by_line[4]
    assert "empty" in by_line[5]
    assert "'messages' is a string" in by_line[6]
    assert "messages[0] is a string" in by_line[7]
    assert "no 'role'" in by_line[8]
    assert "unknown role 'robot'" in by_line[9] and "allowed: system, developer, user, assistant" in by_line[9]
    assert "content a number" in by_line[10]
    assert "'tools' is an object" in by_line[11]
    assert "tools[0] has no name" in by_line[12]
    assert "'delete_db'" in by_line[13] and "known: get_order" in by_line[13]
    assert "demonstration" in by_line[14]
    assert "only text parts" in by_line[15]
    assert "no 'content'" in by_line[16]
    # str() lists them all, one per line, with a count
    text = str(ei.value)
    assert text.startswith("15 problems") and all(x in text for x in probs)


def test_utf8_error_names_the_line_and_other_lines_still_checked(tmp_path):
    p = tmp_path / "enc.jsonl"
    p.write_bytes(json.dumps(good_row()).encode() + b"\n" + b'{"messages": "caf\xe9"}\n' + b"not json\n")
    with pytest.raises(DatasetError) as ei:
        load_dataset(p)
    probs = ei.value.problems
    assert len(probs) == 2
    assert probs[0].startswith(f"{p}:2: not valid UTF-8")
    assert probs[1].startswith(f"{p}:3: not valid JSON")


def test_empty_file_missing_file_and_bom_crlf(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(empty)
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset(tmp_path / "nope.jsonl")
    crlf = tmp_path / "win.jsonl"
    crlf.write_bytes(b"\xef\xbb\xbf" + json.dumps(good_row("a")).encode() + b"\r\n" + json.dumps(good_row("b")).encode() + b"\r\n")
    rows = load_dataset(crlf)
    assert [r.messages[-1]["content"] for r in rows] == ["a", "b"]


def test_last_message_not_user_is_a_warning(tmp_path):
    p = write(tmp_path, "w.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}])
    rows = load_dataset(p)
    assert len(rows) == 1
    assert len(rows.warnings) == 1 and rows.warnings[0].startswith(f"{p}:1:") and "'assistant'" in rows.warnings[0]


def test_load_datasets_collects_problems_of_both_files_and_caps_are_warnings(tmp_path):
    t = write(tmp_path, "train.jsonl", [good_row(), {"messages": []}])
    v = write(tmp_path, "valid.jsonl", ["oops", good_row()])
    with pytest.raises(DatasetError) as ei:
        load_datasets(t, v)
    assert [x.split(":")[0:2] for x in ei.value.problems] == [[str(t), "2"], [str(v), "1"]]

    v2 = write(tmp_path, "valid2.jsonl", [good_row(str(i)) for i in range(MAX_VALID_ROWS + 1)])
    train, valid = load_datasets(write(tmp_path, "t2.jsonl", [good_row()]), v2)
    assert len(train) == 1 and len(valid) == MAX_VALID_ROWS + 1
    assert train.warnings == [] and len(valid.warnings) == 1 and "cap of 1000" in valid.warnings[0]
    _, none = load_datasets(tmp_path / "t2.jsonl", None)
    assert list(none) == []


def test_max_rows_stops_reading(tmp_path):
    p = write(tmp_path, "m.jsonl", [good_row("a"), good_row("b"), "broken line after the cap"])
    rows = load_dataset(p, max_rows=2)
    assert [r.messages[-1]["content"] for r in rows] == ["a", "b"]


def test_demos_accept_tool_calls_and_tool_messages(tmp_path):
    demo = {"messages": [
        {"role": "user", "content": "Where is O-1001?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_order", "arguments": {"order_id": "O-1001"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "assistant", "content": "It has shipped."},
    ], "tools": [GET_ORDER]}
    p = write(tmp_path, "demo.jsonl", [demo])
    with pytest.raises(DatasetError, match="demonstration"):
        load_dataset(p)
    (row,) = load_dataset(p, allow_demos=True, known_tools={"get_order"})
    call = row.messages[1]["tool_calls"][0]
    assert call["function"] == {"name": "get_order", "arguments": '{"order_id": "O-1001"}'}
    assert row.messages[1]["content"] is None and row.messages[2]["role"] == "tool"
    bad = dict(demo, messages=[demo["messages"][0], {"role": "assistant", "tool_calls": [
        {"function": {"name": "rm_rf", "arguments": "{}"}}, {"function": {"name": "get_order", "arguments": "{oops"}}]}])
    p2 = write(tmp_path, "demo2.jsonl", [bad])
    with pytest.raises(DatasetError) as ei:
        load_dataset(p2, allow_demos=True, known_tools={"get_order"})
    unknown, not_json = ei.value.problems  # both calls of the message are checked
    assert "tool_calls[0] calls unknown tool 'rm_rf'" in unknown and "known: get_order" in unknown
    assert "tool_calls[1] (get_order) has arguments that are not JSON" in not_json


def test_normalize_tool_forms():
    assert normalize_tool(GET_ORDER) == (GET_ORDER, None)
    nested, err = normalize_tool({"type": "function", "name": "f"})
    assert err is None and nested["function"]["parameters"] == {"type": "object", "properties": {}}
    assert "only \"function\"" in normalize_tool({"type": "web_search"})[1]
    assert "is a string" in normalize_tool("get_order")[1]
