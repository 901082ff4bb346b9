"""The flight recorder's rows as typed records (:mod:`service.recorder` writes them):
one field per column of its table, in order. Light to import (numpy only): the
request path builds them."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np


class ActRow(NamedTuple):
    """One answered observation: a row of ``acts`` (time as epoch seconds)."""

    time: float
    request_id: str
    episode_id: str | None
    step: int | None
    model: str
    weights_sha256: str
    backend: str
    fallback: bool
    transport: str
    observation: np.ndarray  # float32 [obs]
    q_values: np.ndarray  # float32 [actions]
    action: int
    seed: int | None
    server_us: float
    compute_us: float


@dataclasses.dataclass(slots=True)
class ActBatch:
    """An answered batch, queued whole (cheap on the request path) and counted as its
    rows; the writer splits it into :class:`ActRow` s, request ids ``RID.i``."""

    time: float
    request_id: str
    episode_ids: list[str] | None
    steps: list[int] | None
    model: str
    weights_sha256: str
    backend: str
    fallback: bool
    transport: str
    observations: np.ndarray  # float32 [B, obs]
    q_values: np.ndarray  # float32 [B, actions]
    actions: np.ndarray  # [B]
    seeds: np.ndarray | None  # [B]
    server_us: float
    compute_us: float

    def __len__(self) -> int:
        return len(self.actions)

    def rows(self) -> list[ActRow]:
        ids, steps, seeds = self.episode_ids, self.steps, self.seeds
        return [
            ActRow(self.time, f"{self.request_id}.{i}", ids[i] if ids else None,
                   steps[i] if steps else None, self.model, self.weights_sha256, self.backend,
                   self.fallback, self.transport, self.observations[i], self.q_values[i],
                   int(self.actions[i]), None if seeds is None else int(seeds[i]),
                   self.server_us, self.compute_us)
            for i in range(len(self.actions))
        ]  # fmt: skip


class ErrorRow(NamedTuple):
    """A rejected request: a row of ``errors``."""

    time: float
    request_id: str | None
    transport: str
    status: int
    kind: str
    message: str


class ShadowRow(NamedTuple):
    """A shadow model's answer beside the live one: a row of ``shadow``."""

    time: float
    request_id: str
    model: str
    shadow_weights_sha256: str
    live_action: int
    shadow_action: int
    agree: bool
    q_gap: float
    shadow_q_values: np.ndarray  # float32 [actions]


class TraceRow(NamedTuple):
    """An answer's spike trace (``"trace": true``), as JSON: a row of ``traces``."""

    time: float
    request_id: str
    model: str
    trace: str
