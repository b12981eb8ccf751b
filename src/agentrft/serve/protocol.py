"""Request bodies of the OpenAI API as the server accepts them (pydantic; a bad body is a 400 naming the field).

Unknown fields are ignored (clients add new ones all the time); fields that would change the answer and that this
server cannot honour are refused rather than silently ignored (``logit_bias``, non-zero penalties, ``echo``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentrft.serve.response_format import check_schema


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Body):
    name: str
    arguments: str = ""


class ToolCallIn(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "Message":
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class FunctionDef(_Body):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ResponseFormat":
        if self.type == "json_schema":
            js = self.json_schema or {}
            if not isinstance(js.get("name"), str) or not isinstance(js.get("schema", {}), dict):
                raise ValueError("json_schema needs a name and a schema object")
            check_schema(js.get("schema", {}))  # a broken schema is the client's 400, not every answer "invalid"
        return self


class _Sampling(_Body):
    model: str
    n: int = Field(1, ge=1, le=128)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = Field(None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> list[str]:
        if v is None:
            return []
        v = [v] if isinstance(v, str) else list(v)
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in v):
            raise ValueError("stop sequences must be non-empty")
        return v

    @model_validator(mode="after")
    def _unsupported(self) -> "_Sampling":
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty/presence_penalty are not supported by this server (use 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _tools(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs: true")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        tc = self.tool_choice
        if tc is not None and tc != "none" and not names:
            raise ValueError("tool_choice is set but no tools are given")
        if isinstance(tc, NamedToolChoice) and tc.function.name not in names:
            raise ValueError(f"tool_choice names function {tc.function.name!r}, which is not in tools")
        return self


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=0)  # 0 only with echo: the prompt's log-probs, nothing sampled
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False  # the prompt comes back before the completion, with its tokens' log-probs (first: null)
    suffix: str | None = None
    best_of: int | None = None
    return_token_ids: bool = False  # vLLM's extension: prompt_token_ids and token_ids in each choice
    # agentrft's extension: start each choice's random stream ``seed_offset`` draws into the stream of its seed (a
    # trajectory's later turns continue its stream: agentrft.policy.seeding); needs a seed
    seed_offset: int | None = Field(None, ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens=0 samples nothing: it is only allowed with echo=true (the prompt's "
                             "log-probs)")
        if self.echo and self.n != 1:
            raise ValueError("echo is supported with n=1 only by this server")
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported by this server")
        if self.seed_offset and self.seed is None:
            raise ValueError("seed_offset needs a seed")
        p = self.prompt
        if isinstance(p, list) and not p:
            raise ValueError("prompt must not be empty")
        return self

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class LoadLoraRequest(_Body):
    lora_name: str = Field(..., min_length=1, max_length=200)
    lora_path: str = Field(..., min_length=1)


class UnloadLoraRequest(_Body):
    lora_name: str = Field(..., min_length=1)
    lora_int_id: int | None = None
