"""One backend behind its worker thread(s) and a bounded queue.

Execution policy, from what the backend declares (``hw.backend.Backend``): small
batches on an *inline-safe* backend (the emulator answers one observation in tens of
microseconds, less than a thread hop costs) run on the event loop; everything else
goes to the backend's worker thread(s), one for a backend that is not thread-safe
(the board runs one network at a time). When ``queue_size`` calls already wait, a
call is refused at once with :class:`QueueFull`, which says how long the queue needs
to drain, from the measured time of a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from hw.backend import Backend, InferenceResult
from service.settings import Settings

#: assumed time of one call before the first is measured (a board run is about this)
DEFAULT_CALL_S = 0.05


class QueueFull(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"backend queue is full; retry after {retry_after_s:.3f} s")
        self.retry_after_s = retry_after_s


class LaneTimeout(Exception):
    pass


class Lane:
    """``pending`` counts calls handed to the worker threads and not finished (running
    or waiting), including calls whose requester gave up at its deadline: the backend
    is still busy with them."""

    def __init__(self, role: str, backend: Backend, settings: Settings) -> None:
        self.role = role
        self.backend = backend
        self.name = backend.name
        self.inline_safe = backend.inline_safe
        self.threads = settings.backend_threads if backend.thread_safe else 1
        self.inline_max_batch = settings.inline_max_batch if self.inline_safe else 0
        self.capacity = self.threads + settings.queue_size
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"s2loop-{role}")
        self._lock = threading.Lock()
        self.pending = 0
        self.call_s: float | None = None  # running mean of a call's time
        self.has = backend.has  # is a model loaded on it

    def wait_s(self) -> float:
        """Estimated time until the queue takes a call again: until one of the calls in
        the worker threads finishes, at most the measured time of a call."""
        return (self.call_s or DEFAULT_CALL_S) / self.threads

    def _call(
        self, model: str, obs: np.ndarray, seeds: np.ndarray | None, trace: bool = False
    ) -> InferenceResult:
        start = time.perf_counter()
        try:
            if trace:
                return self.backend.infer(model, obs, seeds, trace=True)
            return self.backend.infer(model, obs, seeds)
        finally:
            took = time.perf_counter() - start
            last = self.call_s
            self.call_s = took if last is None else 0.8 * last + 0.2 * took

    def _finished(self, _fut: Any) -> None:
        with self._lock:
            self.pending -= 1

    async def run(
        self,
        model: str,
        obs: np.ndarray,
        timeout_s: float,
        seeds: np.ndarray | None = None,
        trace: bool = False,
    ) -> InferenceResult:
        """One backend call; raises QueueFull, LaneTimeout or what the backend raised.
        ``trace``: ask the backend for spike traces (only then is the keyword passed)."""
        if obs.shape[0] <= self.inline_max_batch:
            return self.run_inline(model, obs, seeds, trace)
        with self._lock:
            if self.pending >= self.capacity:
                raise QueueFull(self.wait_s())
            if timeout_s <= 0:
                raise LaneTimeout
            self.pending += 1
        cfut = self._executor.submit(self._call, model, obs, seeds, trace)
        cfut.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(cfut), timeout_s)
        except TimeoutError:
            cfut.cancel()  # not started yet: it never reaches the backend
            raise LaneTimeout from None

    def run_inline(
        self, model: str, obs: np.ndarray, seeds: np.ndarray | None = None, trace: bool = False
    ) -> InferenceResult:
        """One call on the event loop, for a batch of at most ``inline_max_batch`` rows
        (callers that check that first skip :meth:`run`'s coroutine)."""
        if trace:
            return self.backend.infer(model, obs, seeds, trace=True)
        return self.backend.infer(model, obs, seeds)

    async def call(self, fn: Any, *args: Any) -> Any:
        """Run a blocking maintenance call (load, warm-up) on the lane's own thread(s),
        so it is serialized with inferences on single-threaded backends."""
        with self._lock:
            self.pending += 1
        cfut = self._executor.submit(fn, *args)
        cfut.add_done_callback(self._finished)
        return await asyncio.wrap_future(cfut)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.backend.close()
