import json

from agentrft.rollout.parse import parse_turn


def test_hermes_parallel_calls_and_content():
    text = 'Let me look. <tool_call>{"name": "lookup", "arguments": {"key": "K1"}}</tool_call>' \
           '<tool_call>{"name": "lookup", "arguments": {"key": "K2"}}</tool_call>'
    p = parse_turn(text)
    assert [c.name for c in p.calls] == ["lookup", "lookup"]
    assert [json.loads(c.arguments) for c in p.calls] == [{"key": "K1"}, {"key": "K2"}]
    assert p.content == "Let me look."
    assert not p.errors and not p.is_final


def test_arguments_as_json_string_are_kept_verbatim():
    p = parse_turn('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert p.calls[0].arguments == '{"a": 1}'


def test_plain_json_forms():
    assert parse_turn('{"name": "f", "arguments": {"x": 1}}').calls[0].name == "f"
    assert parse_turn('{"name": "f", "parameters": {"x": 1}}').calls[0].arguments == '{"x": 1}'
    p = parse_turn('[{"type": "function", "function": {"name": "g", "arguments": "{}"}}, {"name": "h", "arguments": {}}]')
    assert [c.name for c in p.calls] == ["g", "h"]


def test_final_answers_are_not_calls():
    assert parse_turn("ANSWER: red").is_final
    assert parse_turn('{"answer": 3}').is_final  # JSON that is not a call is an answer (response_format)
    assert parse_turn("").is_final


def test_malformed_calls_are_errors_not_crashes():
    p = parse_turn('<tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>')
    assert not p.calls and p.errors and "not valid JSON" in p.errors[0]
    p = parse_turn('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g"')
    assert [c.name for c in p.calls] == ["f"] and "without a closing" in p.errors[0]
    p = parse_turn('<tool_call>{"arguments": {}}</tool_call>')
    assert 'needs a string "name"' in p.errors[0]
    p = parse_turn('<tool_call>{"name": "f", "arguments": [1]}</tool_call>')
    assert "must be a JSON object" in p.errors[0]
    p = parse_turn('{"name": "f", "arguments": {"x": ')
    assert p.errors and not p.calls
