"""Distillation from a teacher endpoint.

* :mod:`.teacher` — the teacher (any OpenAI-compatible chat endpoint) as the agent, with the run's real tools;
* :mod:`.offline` — ``agentrft distill``: its passing trajectories, graded and recorded, warm-start the student by SFT;
* :mod:`.onpolicy` — on-policy distillation in the trainer: the student samples, the teacher's log-probs of the
  student's tokens give a per-token reverse-KL advantage.
"""
