"""Graders: OpenAI-compatible grader types and trajectory graders, built from grader JSON.

Importing this package registers every built-in type with :func:`agentrft.graders.base.build_grader`.
"""

from agentrft.graders.base import Grader, GraderSpecError, build_grader, grader_version, sample_from_trajectory

__all__ = ["Grader", "GraderSpecError", "build_grader", "grader_version", "sample_from_trajectory"]
