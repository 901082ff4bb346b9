"""Hot reload: load a model again from its file and swap it in on every backend, or
leave the old one serving and say why."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from hw.artifact import ArtifactError, load_artifact
from service.errors import ApiError
from service.lane import Lane
from service.metrics import Metrics
from service.registry import PENDING, ModelEntry, ModelRegistry

logger = logging.getLogger("s2loop.service")


class Reloader:
    """One reload at a time; a new entry starts pending and is warmed up."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        sys_tick_s: float,
        lanes: Callable[[], list[Lane]],
        warm_up: Callable[[str], None],
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.sys_tick_s = sys_tick_s
        self.lanes = lanes
        self.warm_up = warm_up
        self._lock = asyncio.Lock()

    async def reload(self, name: str) -> dict[str, Any]:
        """Load ``name`` again from its file and swap it in on every backend, or raise
        ApiError and leave the old model serving."""
        async with self._lock:
            old = self.registry.entries.get(name)
            path = self.registry.path_for(name)
            try:
                art = await asyncio.to_thread(load_artifact, path)
            except ArtifactError as exc:
                self.metrics.reloads.labels("bad_artifact").inc()
                keeps = "the previous model keeps serving" if old else "nothing was loaded"
                raise ApiError(422, "bad_artifact", f"{exc}; {keeps}") from None
            if art.name != name:
                self.metrics.reloads.labels("bad_artifact").inc()
                raise ApiError(
                    422, "bad_artifact", f"{path} holds a model named {art.name!r}, not {name!r}"
                )
            done: list[Lane] = []
            try:
                for lane in self.lanes():
                    await lane.call(lane.backend.load, art)
                    done.append(lane)
            except Exception as exc:
                for lane in done:  # put the old one back where the new one went in
                    with contextlib.suppress(Exception):
                        if old is not None:
                            await lane.call(lane.backend.load, old.artifact)
                        else:
                            lane.backend.unload(name)
                self.metrics.reloads.labels("backend_error").inc()
                raise ApiError(
                    503,
                    "backend_error",
                    f"backend cannot load {path}: {type(exc).__name__}: {exc}; "
                    + ("the previous model keeps serving" if old else "nothing was loaded"),
                ) from None
            entry = ModelEntry.make(art, path, self.sys_tick_s)
            self.registry.add(entry, {lane.role: PENDING for lane in self.lanes()})
            self.warm_up(name)
            self.metrics.reloads.labels("ok").inc()
            logger.info(
                "model reloaded", extra={"model": name, "sha256": art.sha256, "path": str(path)}
            )
            return {
                "model": name,
                "reloaded": True,
                "sha256": art.sha256,
                "previous_sha256": old.artifact.sha256 if old else None,
                "path": str(path),
            }
