"""support_desk: customer support over a SQLite db — look up, refund under policy, or ask when ambiguous."""

from agentrft.environments.support_desk.generator import SYSTEM_PROMPT, TOOLS_REF, corpus, generate



def load_environment():
    """This environment as an :class:`agentrft.environments.Environment` (what ``environment: support_desk`` in a run
    config and ``--env support_desk`` resolve to)."""
    from agentrft.environments import get_environment

    return get_environment("support_desk")


__all__ = ["SYSTEM_PROMPT", "TOOLS_REF", "corpus", "generate", "load_environment"]
