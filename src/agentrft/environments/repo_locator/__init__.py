"""repo_locator: a coding agent's planning step — find the files to edit in a generated repository."""

from agentrft.environments.repo_locator.generator import SYSTEM_PROMPT, TOOLS_REF, corpus, generate



def load_environment():
    """This environment as an :class:`agentrft.environments.Environment` (what ``environment: repo_locator`` in a run
    config and ``--env repo_locator`` resolve to)."""
    from agentrft.environments import get_environment

    return get_environment("repo_locator")


__all__ = ["SYSTEM_PROMPT", "TOOLS_REF", "corpus", "generate", "load_environment"]
