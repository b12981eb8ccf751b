"""support_desk: customer support over a SQLite db — look up, refund under policy, or ask when ambiguous."""

from agentrft.environments.support_desk.generator import SYSTEM_PROMPT, TOOLS_REF, corpus, generate

__all__ = ["SYSTEM_PROMPT", "TOOLS_REF", "corpus", "generate"]
