"""Token-exact rendering: the model's own chat template turned into token ids that are only ever appended.

The trajectory's ids are built in three kinds of pieces:

1. the prompt — ``template(messages, tools, add_generation_prompt=True)`` encoded once;
2. each assistant turn — the ids the sampler produced, kept as sampled (never decoded and re-encoded);
3. between turns — the *delta* text the template adds after the assistant turn: the rest of the turn's closing
   (e.g. the newline after ``<|im_end|>``), the tool messages and the next generation prompt. It is computed as
   ``template(conv + tools_msgs, gen=True)[len(template(conv)):]`` — which requires the template to be
   append-only, checked every time — and encoded on its own.

Only pieces of kind 2 get ``loss_mask = 1``. The same code renders demonstrations for SFT
(:meth:`ChatRenderer.render_demo`), so SFT and RL see identical tokens for identical conversations.
"""

from __future__ import annotations

from typing import Any

from agentrft.rollout.dialects import dialect_for_template, get_dialect


class TemplateError(RuntimeError):
    """The chat template cannot be used token-exactly (e.g. it rewrites earlier turns)."""


class ChatRenderer:
    def __init__(self, tokenizer: Any, *, dialect: str | None = None):
        """``dialect`` names the tool-call dialect (``agentrft.rollout.dialects``) instead of reading it from the
        chat template."""
        self.tok = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "the tokenizer has no chat_template; attach a tool-calling template "
                "(agentrft.models.chat_templates) before training"
            )
        eos = tokenizer.eos_token
        if eos is None:
            raise TemplateError("the tokenizer has no eos_token (the token that ends an assistant turn)")
        self.eos_text: str = eos
        self.eos_id: int = tokenizer.convert_tokens_to_ids(eos)
        self.stop_ids: set[int] = {self.eos_id}
        # how this model writes tool calls, read from its template (rollouts and the server parse with it)
        self.dialect = get_dialect(dialect) if dialect else dialect_for_template(tokenizer.chat_template)

    def parse(self, text: str):  # noqa: ANN201 - agentrft.rollout.parse.ParsedTurn
        """Tool calls and content of a sampled assistant turn, in this model's dialect."""
        return self.dialect.parse(text)

    # ---- text ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, gen: bool) -> str:
        if self.dialect.name != "hermes":  # templates that iterate over a call's arguments need the object
            messages = _arguments_as_objects(messages)
        return self.tok.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=gen, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    # ---- pieces --------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        return self.encode(self.render(messages, tools, gen=True))

    def continuation_ids(
        self,
        conversation: list[dict[str, Any]],
        new_messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        *,
        sampled_ended_with_eos: bool,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Ids to append after an assistant turn (the last message of ``conversation``).

        ``new_messages`` are the tool (or user) messages that follow. If the sampled turn stopped without the
        end-of-turn token (length limit), the token is appended here — as context, not as a sampled token.
        """
        prev = self.render(conversation, tools, gen=False)
        new = self.render(conversation + new_messages, tools, gen=add_generation_prompt)
        if not new.startswith(prev):
            raise TemplateError(
                "the chat template is not append-only: rendering more messages changed the text of earlier ones; "
                "token-exact multi-turn training needs a template that only appends"
            )
        cut = prev.rfind(self.eos_text)
        tail = prev[cut + len(self.eos_text) :] if cut >= 0 else ""
        head = "" if sampled_ended_with_eos else self.eos_text
        return self.encode(head + tail + new[len(prev) :])

    # ---- demonstrations (SFT) ------------------------------------------------------------------
    def render_demo(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], list[int]]:
        """A full demonstrated conversation → (ids, loss_mask) built exactly as a rollout builds them.

        The messages before the first assistant message form the prompt; each assistant message is encoded as
        the sampler would have produced it (its rendered text up to and including the end-of-turn token) with
        mask 1; everything in between is rendered as a delta with mask 0.
        """
        first = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if first is None:
            raise ValueError("a demonstration needs at least one assistant message")
        ids = self.prompt_ids(messages[:first], tools)
        mask = [0] * len(ids)
        i = first
        while i < len(messages):
            m = messages[i]
            if m.get("role") != "assistant":
                raise ValueError(f"message {i}: expected an assistant message, got role {m.get('role')!r}")
            before = self.render(messages[:i], tools, gen=True)
            with_turn = self.render(messages[: i + 1], tools, gen=False)
            if not with_turn.startswith(before):
                raise TemplateError("the chat template is not append-only for assistant turns")
            turn_text = with_turn[len(before) :]
            cut = turn_text.rfind(self.eos_text)
            if cut < 0:
                raise TemplateError("the rendered assistant turn does not contain the end-of-turn token")
            turn_ids = self.encode(turn_text[: cut + len(self.eos_text)])
            ids += turn_ids
            mask += [1] * len(turn_ids)
            j = i + 1
            while j < len(messages) and messages[j].get("role") != "assistant":
                j += 1
            if j > i + 1 or j < len(messages):
                cont = self.continuation_ids(
                    messages[: i + 1], messages[i + 1 : j], tools, sampled_ended_with_eos=True
                )
                ids += cont
                mask += [0] * len(cont)
            i = j
        return ids, mask


def _arguments_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages whose tool calls carry ``arguments`` as parsed JSON objects instead of JSON text (OpenAI's form)."""
    import json

    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if not calls:
            out.append(m)
            continue
        new_calls = []
        for c in calls:
            f = c.get("function", c)
            args = f.get("arguments")
            if isinstance(args, str):
                try:
                    obj = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    obj = None
                if isinstance(obj, dict):
                    f = {**f, "arguments": obj}
                    c = {**c, "function": f} if "function" in c else f
            new_calls.append(c)
        out.append({**m, "tool_calls": new_calls})
    return out
