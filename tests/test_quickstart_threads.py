"""The quickstart drops to one torch thread on a busy machine and leaves a quiet one (or a user's
OMP_NUM_THREADS) alone. The load average is the machine's, which a test cannot set: it is replaced here."""

from __future__ import annotations

import os

import torch

from agentrft.quickstart import _threads_for_load


def test_one_thread_only_when_busy_and_unset(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert _threads_for_load() is None
        monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1) + 1, 0.0, 0.0))
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert _threads_for_load() is None  # the user's choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert _threads_for_load() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
