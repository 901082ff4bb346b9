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


class TimedBoard(EmulatorBackend):
    """The board's timing model without the SDK's host-side cost: answers computed by the
    emulator, each call taking ``ceil(B / copies)`` board runs of
    ``S2LOOP_FAKE_BOARD_RUN_S + ticks x S2LOOP_FAKE_BOARD_TICK_S`` (the fake SDK's knobs),
    one call at a time, ``copies`` from ``hw.mapping`` as for the real board. For the
    fleet benchmark: assumptions about a board, not measurements of one."""

    name = "timed-board"
    inline_safe = False
    thread_safe = False

    def _prepare(self, artifact):
        from hw.mapping import map_network

        self._copies = getattr(self, "_copies", {})
        self._copies[artifact.name] = map_network(artifact).copies_per_chip
        return super()._prepare(artifact)

    def copies_per_run(self, model: str) -> int:
        return self._copies[model]

    def infer(self, model, observations, seeds=None):
        import math
        import time

        start = time.perf_counter()
        res = super().infer(model, observations, seeds)
        run_s = float(os.environ.get("S2LOOP_FAKE_BOARD_RUN_S", "0"))
        tick_s = float(os.environ.get("S2LOOP_FAKE_BOARD_TICK_S", "0"))
        runs = math.ceil(len(res) / self._copies[model])
        rest = runs * (run_s + res.ticks * tick_s) - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)
        res.extra["board_runs"] = runs
        return res
