"""The served models: one :class:`ModelEntry` per name, what failed to load, and the
warm-up state of each model on each backend role (a :class:`WarmUp`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hw.artifact import MODEL_NAME, SUFFIX, ModelArtifact
from hw.mapping import ChipSpec, MappingError, MappingReport, map_network
from service.errors import ApiError


@dataclass
class ModelEntry:
    """A served model: the artifact and what the routes need, fixed at load time."""

    name: str
    artifact: ModelArtifact
    path: Path
    mapping: MappingReport | None
    mapping_error: str | None
    loaded_at: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        art = self.artifact
        self.observation_size = art.observation_size
        self.ticks = art.ticks
        self.stochastic = art.encoder.kind == "poisson"
        self.chip_time_s = self.mapping.chip_time_s if self.mapping else None
        self.energy_j = self.mapping.energy_j if self.mapping else None
        self.info = {
            **art.summary(),
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "mapping": self.mapping.to_dict() if self.mapping else None,
            "mapping_error": self.mapping_error,
            "model_card": _model_card(art.provenance),
        }

    @classmethod
    def make(cls, artifact: ModelArtifact, path: Path, sys_tick_s: float) -> ModelEntry:
        """The entry of ``artifact`` loaded from ``path``, mapped onto a chip at that tick
        (a network the chip cannot hold is served with its mapping error)."""
        try:
            mapping, error = map_network(artifact, ChipSpec(sys_tick_s=sys_tick_s)), None
        except MappingError as exc:
            mapping, error = None, str(exc)
        return cls(artifact.name, artifact, path, mapping, error, time.time())

    def estimate(self, batch: int) -> tuple[float | None, float | None]:
        """Estimated chip time and energy of ``batch`` observations (``hw.mapping``)."""
        return self.mapping.estimate(batch) if self.mapping else (None, None)


def _model_card(provenance: dict[str, Any]) -> dict[str, Any]:
    """The figures a model card quotes: an explicit ``model_card`` block, else the
    evaluation and training recipe the agent records in the provenance."""
    card = provenance.get("model_card")
    if isinstance(card, dict):
        return dict(card)
    keys = ("evaluation", "recipe", "teacher", "dsqn", "finetune")
    return {k: provenance[k] for k in keys if k in provenance}


class WarmUp(Enum):
    """Where a model stands on one backend: loaded and waiting for its first inference,
    answered once (warm), or failed (at load or at warm-up; the detail says why)."""

    PENDING = "pending"
    WARM = "warm"
    FAILED = "failed"


@dataclass(frozen=True)
class WarmState:
    """A :class:`WarmUp` and, when it failed, why: ``"load: ..."`` or ``"warm-up: ..."``."""

    state: WarmUp
    detail: str = ""

    def __str__(self) -> str:  # as /readyz reports it
        return f"failed: {self.detail}" if self.state is WarmUp.FAILED else self.state.value


PENDING = WarmState(WarmUp.PENDING)
WARM = WarmState(WarmUp.WARM)


class ModelRegistry:
    """Models by name, the load errors by file name, and each model's warm-up state per
    backend role (``primary``, ``fallback``)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.entries: dict[str, ModelEntry] = {}
        self.load_errors: dict[str, str] = {}
        self.warm: dict[str, dict[str, WarmState]] = {}

    def add(self, entry: ModelEntry, states: dict[str, WarmState]) -> None:
        """Serve ``entry`` (replacing one of the same name) with these warm-up states."""
        self.warm[entry.name] = states
        self.entries[entry.name] = entry

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ApiError(
                404,
                "unknown_model",
                f"no model named {name!r}; served models: {sorted(self.entries)}",
            )
        return entry

    def path_for(self, name: str) -> Path:
        """The file a model is (re)loaded from: where it came from, else NAME.s2l in the
        models folder if that exists and the name is safe, else a 404."""
        if name in self.entries:
            return self.entries[name].path
        path = self.models_dir / f"{name}{SUFFIX}"
        if not MODEL_NAME.fullmatch(name) or not path.is_file():
            raise ApiError(404, "unknown_model", f"no model named {name!r} to reload")
        return path

    def mark(self, name: str, role: str, state: WarmState) -> None:
        self.warm[name][role] = state

    def state(self, name: str, role: str) -> WarmState | None:
        return self.warm.get(name, {}).get(role)

    def report(self) -> dict[str, dict[str, str]]:
        """Warm-up states as /readyz shows them: model -> role -> text."""
        return {name: {r: str(s) for r, s in roles.items()} for name, roles in self.warm.items()}
