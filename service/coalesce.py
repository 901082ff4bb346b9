"""Request coalescing (what Triton calls dynamic batching), for backends that run
several copies of a network in one call: a SpiNNaker2 board run carries one copy per
group of free PEs, and costs about the same whether it carries one observation or 37.

Single-observation requests for the same model that arrive within ``window_s`` of the
first of them go to the backend as one batch, at most ``backend.copies_per_run(model)``
observations; a full batch goes at once. While the backend is busy with an earlier
batch the window stays open (the batch could not start sooner anyway) until that call
ends. Nobody is held for a batch past the point where its own deadline could still be
met (the batch leaves by the earliest deadline less the measured time of a call).
Each caller gets its own row, its own error, and waits under its own deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hw.backend import InferenceResult
from hw.encoding import SEED_LIMIT
from service.lane import DEFAULT_CALL_S, Lane, LaneTimeout


@dataclass
class _Waiting:
    obs: np.ndarray  # float32 [1, obs]
    seed: int | None
    future: asyncio.Future[InferenceResult]
    deadline: float  # perf_counter
    arrived: float


class Coalescer:
    """Batches for one lane, per model."""

    def __init__(self, lane: Lane, window_s: float, metrics: Any) -> None:
        self.lane, self.window_s, self.metrics = lane, window_s, metrics
        self.waiting: dict[str, list[_Waiting]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.in_flight = 0  # batches handed to the lane and not finished

    async def run(
        self, model: str, obs: np.ndarray, timeout_s: float, seeds: np.ndarray | None
    ) -> InferenceResult:
        """One observation's answer, from a shared backend call when others come along."""
        copies = self.lane.backend.copies_per_run(model)
        if copies <= 1:
            return await self.lane.run(model, obs, timeout_s, seeds)
        if timeout_s <= 0:
            raise LaneTimeout
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        seed = None if seeds is None else int(seeds[0])
        item = _Waiting(obs, seed, loop.create_future(), now + timeout_s, now)
        group = self.waiting.setdefault(model, [])
        group.append(item)
        if len(group) >= copies:
            self._flush(model)
        else:
            self._schedule(model)
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            # the batch may still end, later: its outcome is nobody's now
            item.future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise LaneTimeout from None

    def _schedule(self, model: str) -> None:
        """(Re)arm the model's timer: the window after the first arrival, or sooner when
        someone's deadline needs the batch to leave now."""
        group = self.waiting[model]
        call_s = self.lane.call_s or DEFAULT_CALL_S
        leave = min(group[0].arrived + self.window_s, min(w.deadline for w in group) - call_s)
        delay = leave - time.perf_counter()
        timer = self.timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        if delay <= 0:
            self._flush(model)
        else:
            self.timers[model] = asyncio.get_running_loop().call_later(delay, self._flush, model)

    def _flush(self, model: str) -> None:
        timer = self.timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        group = self.waiting.get(model, [])
        if not group:
            return
        copies = self.lane.backend.copies_per_run(model)
        call_s = self.lane.call_s or DEFAULT_CALL_S
        must_leave = min(w.deadline for w in group) - call_s
        if (
            self.in_flight >= self.lane.threads  # busy: keep gathering until it is free
            and len(group) < copies
            and time.perf_counter() < must_leave
        ):
            delay = must_leave - time.perf_counter()
            self.timers[model] = asyncio.get_running_loop().call_later(delay, self._flush, model)
            return
        batch, rest = group[:copies], group[copies:]
        self.waiting[model] = rest
        if rest:
            self._schedule(model)
        batch = [w for w in batch if not w.future.done()]  # gave up meanwhile
        if batch:
            asyncio.get_running_loop().create_task(self._call(model, batch))

    async def _call(self, model: str, batch: list[_Waiting]) -> None:
        now = time.perf_counter()
        for w in batch:
            self.metrics.coalesce_wait.labels(model).observe(now - w.arrived)
        self.metrics.coalesce_size.labels(model).observe(len(batch))
        obs = np.concatenate([w.obs for w in batch])
        seeds = None
        if any(w.seed is not None for w in batch):  # rows without one draw fresh spikes
            fresh = np.random.default_rng().integers(0, SEED_LIMIT, len(batch))
            seeds = np.array(
                [w.seed if w.seed is not None else f for w, f in zip(batch, fresh, strict=True)],
                np.int64,
            )
        budget = max(w.deadline for w in batch) - now
        self.in_flight += 1
        try:
            res = await self.lane.run(model, obs, budget, seeds)
        except BaseException as exc:  # every caller gets the call's error as its own
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc if isinstance(exc, Exception) else LaneTimeout())
            return
        finally:
            self.in_flight -= 1
            for waiting_model in [m for m, g in self.waiting.items() if g]:
                self._flush(waiting_model)  # the backend is free: the next batch goes
        for i, w in enumerate(batch):
            if not w.future.done():
                w.future.set_result(_row(res, i, len(batch)))


def _row(res: InferenceResult, i: int, n: int) -> InferenceResult:
    return replace(
        res,
        q_values=res.q_values[i : i + 1],
        actions=res.actions[i : i + 1],
        spikes_per_layer=res.spikes_per_layer[i : i + 1],
        synaptic_events=res.synaptic_events[i : i + 1],
        seeds=None if res.seeds is None else res.seeds[i : i + 1],
        extra={**res.extra, "coalesced": n},
    )
