"""Shadow models: a candidate runs beside the live model on the same observations
(``S2LOOP_SHADOW=cartpole=path/to/candidate.s2l``), off the request path.

The request path only appends to a bounded queue (full: dropped and counted); a
thread runs the candidates on the emulator in batches, with the live answer's
encoder seeds, and exports how often the shadow chose the live action and how far
its Q-values are (``s2loop_shadow_*`` metrics, and the recorder's shadow table).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from hw.artifact import load_artifact
from hw.emulator import EmulatorBackend
from service.records import ShadowRow

logger = logging.getLogger("s2loop.service")
BATCH = 256


class Shadow:
    def __init__(
        self, paths: dict[str, Path], metrics: Any, recorder: Any = None, queue_rows: int = 8192
    ) -> None:
        self.metrics, self.recorder, self.queue_rows = metrics, recorder, queue_rows
        self.backend = EmulatorBackend()
        self.sha: dict[str, str] = {}
        for live, path in paths.items():
            art = load_artifact(path)
            # served under the live model's name on its own emulator
            self.backend.load(dataclasses.replace(art, name=live))
            self.sha[live] = art.sha256
        self.queue: deque[tuple] = deque()
        self.queued = 0  # rows in the queue or being compared
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2loop-shadow", daemon=True)
        self._thread.start()

    def has(self, model: str) -> bool:
        return model in self.sha

    def offer(
        self,
        model: str,
        request_id: str,
        observations: np.ndarray,
        seeds: np.ndarray | None,
        actions: np.ndarray,
        q_values: np.ndarray,
    ) -> None:
        rows = len(actions)
        with self._lock:  # bounded in rows: a batch counts as its rows
            if self.queued + rows > self.queue_rows:
                self.metrics.shadow_dropped.labels(model).inc(rows)
                return
            self.queued += rows
            self.queue.append((model, request_id, observations, seeds, actions, q_values))

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            while self.queue:
                items = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
                self._compare(items)
                with self._lock:
                    self.queued -= sum(len(item[4]) for item in items)

    def _compare(self, items: list[tuple]) -> None:
        by_model: dict[str, list[tuple]] = {}
        for item in items:
            by_model.setdefault(item[0], []).append(item)
        for model, group in by_model.items():
            obs = np.concatenate([g[2] for g in group])
            seeds = None
            if all(g[3] is not None for g in group):
                seeds = np.concatenate([g[3] for g in group])
            live_a = np.concatenate([g[4] for g in group])
            live_q = np.concatenate([g[5] for g in group])
            try:
                res = self.backend.infer(model, obs, seeds)
            except Exception as exc:  # a candidate that cannot run is logged, not fatal
                logger.warning("shadow model failed", extra={"model": model, "error": str(exc)})
                continue
            agree = res.actions == live_a
            gap = np.abs(res.q_values - live_q).max(axis=1)
            self.metrics.shadow_compared.labels(model).inc(len(agree))
            self.metrics.shadow_agreed.labels(model).inc(int(agree.sum()))
            hist = self.metrics.shadow_q_gap.labels(model)
            for g in gap:
                hist.observe(float(g))
            if self.recorder is not None:
                now = time.time()
                i = 0
                for _model, rid, o, _s, _a, _q in group:
                    for k in range(len(o)):
                        suffix = f".{k}" if len(o) > 1 else ""
                        self.recorder.shadow(
                            ShadowRow(now, rid + suffix, model, self.sha[model], int(live_a[i]),
                                      int(res.actions[i]), bool(agree[i]), float(gap[i]),
                                      res.q_values[i])
                        )  # fmt: skip
                        i += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.backend.close()
