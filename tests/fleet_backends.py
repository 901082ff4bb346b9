"""Backends for the fleet tests, loaded by ``s2loop serve`` replicas as
``tests.fleet_backends:FlakyBoard``."""

from __future__ import annotations

import os
from pathlib import Path

from hw.backend import BackendError
from hw.emulator import EmulatorBackend


class FlakyBoard(EmulatorBackend):
    """A board-like backend (worker thread, not inline) that fails while the file named by
    ``S2LOOP_FLAKY_FLAG`` exists: a board that went away, and came back."""

    name = "flaky-board"
    inline_safe = False
    thread_safe = False

    def infer(self, model, observations, seeds=None):
        flag = os.environ.get("S2LOOP_FLAKY_FLAG")
        if flag and Path(flag).exists():
            raise BackendError("board unreachable (flag file present)")
        return super().infer(model, observations, seeds)
