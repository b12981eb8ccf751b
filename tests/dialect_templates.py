"""Chat templates in the shape of three model families' tool-calling templates (written for these tests; append-only
like the templates agentrft trains with). Each renders assistant tool calls in its family's dialect."""

QWEN_XML = r"""
{%- macro args_xml(args) -%}
{%- for k, v in args.items() -%}
<parameter={{ k }}>
{{ v if v is string else (v | tojson) }}
</parameter>
{% endfor -%}
{%- endmacro -%}
{%- for m in messages -%}
{%- if m.role == 'system' or (loop.first and tools) -%}
<|im_start|>system
{% if m.role == 'system' %}{{ m.content }}{% endif %}{% if tools %}

# Tools
<tools>
{% for t in tools %}{{ (t.function if t.function is defined else t) | tojson }}
{% endfor %}</tools>
Call a tool with <tool_call>
<function=NAME>
<parameter=ARG>
VALUE
</parameter>
</function>
</tool_call>{% endif %}<|im_end|>
{% endif -%}
{%- if m.role == 'assistant' -%}
<|im_start|>assistant
{% if m.content %}{{ m.content }}{% endif %}
{%- for tc in m.tool_calls or [] -%}
{%- set f = tc.function if tc.function is defined else tc -%}
<tool_call>
<function={{ f.name }}>
{{ args_xml(f.arguments) }}</function>
</tool_call>
{% endfor -%}
<|im_end|>
{% elif m.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.role != 'system' -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

LLAMA3_JSON = r"""
{%- for m in messages -%}
{%- if loop.first -%}
<|start_header_id|>system<|end_header_id|>

{% if m.role == 'system' %}{{ m.content }}{% endif %}{% if tools %}
You have access to the following functions. To call a function, respond with JSON for a function call in the format {"name": function name, "parameters": dictionary of argument name and its value}.
{% for t in tools %}{{ t | tojson }}
{% endfor %}{% endif %}<|eot_id|>
{%- endif -%}
{%- if m.role == 'assistant' -%}
<|start_header_id|>assistant<|end_header_id|>

{% if m.tool_calls %}{% for tc in m.tool_calls %}{%- set f = tc.function if tc.function is defined else tc -%}
{"name": "{{ f.name }}", "parameters": {{ f.arguments | tojson }}}{% if not loop.last %}; {% endif %}{% endfor %}{% else %}{{ m.content }}{% endif %}<|eot_id|>
{%- elif m.role == 'tool' -%}
<|start_header_id|>ipython<|end_header_id|>

{{ m.content }}<|eot_id|>
{%- elif m.role != 'system' -%}
<|start_header_id|>{{ m.role }}<|end_header_id|>

{{ m.content }}<|eot_id|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|start_header_id|>assistant<|end_header_id|>

{% endif -%}
"""

MISTRAL = r"""
{%- if tools -%}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' -%}[SYSTEM_PROMPT]{{ m.content }}[/SYSTEM_PROMPT]
{%- elif m.role == 'user' -%}[INST]{{ m.content }}[/INST]
{%- elif m.role == 'assistant' -%}
{%- if m.content %}{{ m.content }}{% endif -%}
{%- if m.tool_calls -%}[TOOL_CALLS][{% for tc in m.tool_calls %}{%- set f = tc.function if tc.function is defined else tc -%}
{"name": "{{ f.name }}", "arguments": {{ f.arguments | tojson }}}{% if not loop.last %}, {% endif %}{% endfor %}]{%- endif -%}
</s>
{%- elif m.role == 'tool' -%}[TOOL_RESULTS]{{ {"content": m.content} | tojson }}[/TOOL_RESULTS]
{%- endif -%}
{%- endfor -%}
"""

FIXTURES = {"qwen_xml": (QWEN_XML, "<|im_end|>"), "llama3_json": (LLAMA3_JSON, "<|eot_id|>"), "mistral": (MISTRAL, "</s>")}
