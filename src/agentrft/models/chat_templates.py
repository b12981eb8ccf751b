"""Tool-calling chat templates (Jinja, as transformers' ``apply_chat_template`` runs them).

Both templates speak the Hermes/Qwen tool-call dialect the parser reads::

    <tool_call>{"name": "grep", "arguments": {"pattern": "parse_header"}}</tool_call>

and render tool results as their own turn. They differ only in turn markers:

* ``CHATML_TOOLS``: ``<|im_start|>role\\n … <|im_end|>\\n`` (Qwen style; used by the tiny models we build).
* ``GEMMA_TOOLS``: ``<start_of_turn>role\\n … <end_of_turn>\\n`` (attached to Gemma 3 GGUF imports, which ship none).

The tools block is compact — one line per tool, ``name(arg, arg): description`` — because small models pay for
every prompt token on every turn. Rendering is append-only: rendering a conversation and then the same
conversation plus more messages gives a string that extends the first (the renderer relies on that).
"""

_BODY = r"""
{%- macro tool_line(t) -%}
{%- set f = t.function if t.function is defined else t -%}
- {{ f.name }}({{ (f.parameters.properties.keys() | list | join(', ')) if f.parameters is defined and f.parameters.properties is defined else '' }}){% if f.description %}: {{ f.description }}{% endif %}
{%- endmacro -%}
{%- set ns = namespace(start=0) -%}
{%- if messages and messages[0].role in ['system', 'developer'] -%}
{{ BOS }}system
{{ messages[0].content }}{% if tools %}{{ '\n' }}Tools:
{% for t in tools %}{{ tool_line(t) }}
{% endfor %}Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
{%- endif %}{{ EOS }}
{% set ns.start = 1 -%}
{%- elif tools -%}
{{ BOS }}system
Tools:
{% for t in tools %}{{ tool_line(t) }}
{% endfor %}Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.{{ EOS }}
{% endif -%}
{%- for m in messages[ns.start:] -%}
{%- if m.role == 'assistant' -%}
{{ BOS }}{{ ASSISTANT }}
{% if m.content %}{{ m.content }}{% endif %}
{%- if m.tool_calls -%}
{%- for tc in m.tool_calls -%}
{%- set f = tc.function if tc.function is defined else tc -%}
<tool_call>{"name": "{{ f.name }}", "arguments": {{ f.arguments if f.arguments is string else (f.arguments | tojson) }}}</tool_call>
{%- endfor -%}
{%- endif -%}
{{ EOS }}
{% elif m.role == 'tool' -%}
{{ BOS }}tool
{{ m.content }}{{ EOS }}
{% else -%}
{{ BOS }}{{ 'system' if m.role == 'developer' else m.role }}
{{ m.content }}{{ EOS }}
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ BOS }}{{ ASSISTANT }}
{% endif -%}
"""


def _make(bos: str, eos: str, assistant: str) -> str:
    return _BODY.replace("{{ BOS }}", bos).replace("{{ EOS }}", eos).replace("{{ ASSISTANT }}", assistant)


CHATML_TOOLS = _make("<|im_start|>", "<|im_end|>", "assistant")
GEMMA_TOOLS = _make("<start_of_turn>", "<end_of_turn>", "model")

# Special tokens each template needs in the vocabulary, and the token that ends an assistant turn.
CHATML_SPECIAL = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
CHATML_EOS = "<|im_end|>"
GEMMA_EOS = "<end_of_turn>"
