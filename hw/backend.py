"""One interface over everything that executes an artifact (emulator, board,
float reference): load an artifact, infer a batch, describe itself, close.

Backends are looked up by name (``emulator``, ``spinnaker2``) or by an import
spec ``package.module:Class`` (the torch reference lives in ``agent`` and is
named ``agent.reference:ReferenceBackend``, so ``hw`` never imports it).
"""

from __future__ import annotations

import importlib
import inspect
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hw.artifact import ModelArtifact
from hw.trace import SpikeTrace


class BackendError(RuntimeError):
    """The backend could not run an inference (board unreachable, SDK missing, ...)."""


@dataclass
class InferenceResult:
    """What one backend call returns for a batch of B observations."""

    q_values: np.ndarray  # float32 [B, actions]
    actions: np.ndarray  # int64 [B]
    ticks: int  # ticks run per inference
    spikes_per_layer: np.ndarray  # int64 [B, layers] spikes emitted per LIF layer
    synaptic_events: np.ndarray  # int64 [B] spikes x fan-out, input layer included
    backend: str
    compute_us: float = 0.0  # wall time of the backend call, microseconds (Backend.infer)
    seeds: np.ndarray | None = None  # int64 [B]: Poisson encoder seeds used; None if deterministic
    extra: dict[str, Any] = field(default_factory=dict)
    #: one spike trace per observation (``hw.trace``), when the call asked for them
    traces: list[SpikeTrace] | None = None

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def check_observations(artifact: ModelArtifact, observations: Any) -> np.ndarray:
    """Observations as float32 [B, obs]; a single observation becomes B = 1.

    Raises ``ValueError`` naming what is wrong (shape, non-finite values)."""
    obs = np.asarray(observations, dtype=np.float32)
    if obs.ndim == 1:
        obs = obs[None, :]
    if obs.ndim != 2 or obs.shape[1] != artifact.observation_size:
        raise ValueError(
            f"observations must have shape [batch, {artifact.observation_size}] for model "
            f"{artifact.name!r}, got {list(np.shape(observations))}"
        )
    if not np.all(np.isfinite(obs)):
        raise ValueError("observations must be finite (no NaN or inf)")
    return obs


class Backend(ABC):
    """Holds loaded models by name; ``load`` of a known name swaps atomically.

    What a backend is, declared by its class (the server decides how to call it from
    these, never from its name):

    - ``inline_safe``: a small call is fast enough (tens of microseconds) to run on the
      server's event loop rather than pay for a hop to a worker thread;
    - ``thread_safe``: several calls may run at once (else one worker thread);
    - :meth:`copies_per_run`: observations one call runs side by side at no extra time
      (a board run holds one copy of the network per group of free PEs);
    - ``gives_traces``: ``infer(..., trace=True)`` returns a spike trace per observation
      (``InferenceResult.traces``, see :mod:`hw.trace`); the server asks for traces only
      from such a backend.

    A backend implements :meth:`_prepare` and :meth:`_infer`; :meth:`infer` looks the
    model up and times the call for all of them.
    """

    name: ClassVar[str] = "backend"
    inline_safe: ClassVar[bool] = False
    thread_safe: ClassVar[bool] = False
    gives_traces: ClassVar[bool] = False

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self, artifact: ModelArtifact) -> None:
        """Prepare ``artifact`` for inference and serve it under ``artifact.name``.

        Preparation happens before the swap: if it fails the old model stays."""
        prepared = self._prepare(artifact)
        with self._lock:
            self._models[artifact.name] = prepared

    def unload(self, name: str) -> None:
        with self._lock:
            self._models.pop(name, None)

    def models(self) -> list[str]:
        return sorted(self._models)

    def has(self, model: str) -> bool:
        return model in self._models

    def copies_per_run(self, model: str) -> int:
        return 1

    def _get(self, name: str) -> Any:
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"model {name!r} is not loaded on backend {self.name!r}") from None

    @abstractmethod
    def _prepare(self, artifact: ModelArtifact) -> Any:
        """Backend-specific compiled form of an artifact."""

    def infer(
        self,
        model: str,
        observations: np.ndarray,
        seeds: np.ndarray | None = None,
        *,
        trace: bool = False,
    ) -> InferenceResult:
        """Run a batch of observations (float32 [B, obs]) through ``model``.

        ``seeds`` (int [B]) make a Poisson encoder's draws reproducible; without
        them each observation gets fresh draws (:func:`hw.encoding.request_seeds`).
        The result reports the seeds used. Deterministic encoders ignore them.
        ``trace`` (backends with ``gives_traces`` only): a spike trace per observation.
        Every call is timed here (``compute_us``); a backend implements :meth:`_infer`."""
        prepared = self._get(model)
        start = time.perf_counter()
        result = self._infer(prepared, observations, seeds, trace)
        result.compute_us = (time.perf_counter() - start) * 1e6
        return result

    def _infer(self, prepared: Any, observations: Any, seeds: Any, trace: bool) -> InferenceResult:
        """One call on ``prepared`` (what :meth:`_prepare` made of the model), observations
        as given (each backend checks them its own way)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement _infer")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "models": self.models()}

    def close(self) -> None:
        with self._lock:
            self._models.clear()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS = {
    "emulator": "hw.emulator:EmulatorBackend",
    "spinnaker2": "hw.board:SpiNNaker2Backend",
}


def create_backend(name: str, **settings: Any) -> Backend:
    """Instantiate a backend by registered name or ``module:Class`` spec; options the
    backend does not take are refused with a clear ``ValueError``."""
    spec = BACKENDS.get(name, name)
    if ":" not in spec:
        raise ValueError(
            f"unknown backend {name!r}; known: {sorted(BACKENDS)} or a 'module:Class' spec"
        )
    module_name, cls_name = spec.split(":", 1)
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(settings) - set(params))
    if unknown and not takes_any:
        raise ValueError(
            f"backend {name!r} does not take option(s) {', '.join(unknown)}; it takes: "
            + (", ".join(params) or "no options")
        )
    return cls(**settings)
