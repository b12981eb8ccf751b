"""Graders: OpenAI-compatible grader types and trajectory graders, built from grader JSON.

Importing this package registers every built-in type with :func:`agentrft.graders.base.build_grader`.
"""

from agentrft.graders.base import Grader, GraderSpecError, build_grader, grader_version, sample_from_trajectory

# Built-in types register themselves on import (additive to the shared contract).
from agentrft.graders import string_check as _string_check  # noqa: F401,E402
from agentrft.graders import python_trusted as _python_trusted  # noqa: F401,E402
from agentrft.graders import multi as _multi  # noqa: F401,E402
from agentrft.graders import text_similarity as _text_similarity  # noqa: F401,E402
from agentrft.graders import python_sandboxed as _python_sandboxed  # noqa: F401,E402
from agentrft.graders import model_graders as _model_graders  # noqa: F401,E402
from agentrft.graders import endpoint as _endpoint  # noqa: F401,E402
from agentrft.graders import trajectory as _trajectory  # noqa: F401,E402
from agentrft.graders import group_judge as _group_judge  # noqa: F401,E402
from agentrft.graders import reward_model as _reward_model  # noqa: F401,E402

from agentrft.graders.batch import grade_trajectories, grade_trajectory  # noqa: E402
from agentrft.graders.model_graders import register_judge  # noqa: E402

__all__ = ["Grader", "GraderSpecError", "build_grader", "grader_version", "sample_from_trajectory",
           "grade_trajectory", "grade_trajectories", "register_judge"]
