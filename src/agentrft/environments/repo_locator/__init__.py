"""repo_locator: a coding agent's planning step — find the files to edit in a generated repository."""

from agentrft.environments.repo_locator.generator import SYSTEM_PROMPT, TOOLS_REF, corpus, generate

__all__ = ["SYSTEM_PROMPT", "TOOLS_REF", "corpus", "generate"]
