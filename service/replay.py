"""``s2loop replay``: run a flight recording's observations again, on any backend and
with the recorded model or another one, and compare the actions and Q-values.

Rows of one recorded model run in batches; a Poisson-coded model gets each row's
recorded encoder seed, so replaying the same model on the same backend reproduces
the recording exactly. Another model or backend gives the agreement a change would
have had on that traffic: the regression check before a model goes live.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hw.artifact import ModelArtifact, load_artifact
from hw.backend import create_backend

CHUNK = 8192


def read_acts(folder: Path) -> pa.Table:
    """Every ``acts-*.parquet`` of a record folder, in time order."""
    files = sorted(Path(folder).glob("acts-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no acts-*.parquet files in {folder}")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by("time")


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list<float32> column of equal-length rows as float32 [rows, length]."""
    flat = column.combine_chunks()
    values = flat.values.to_numpy(zero_copy_only=False)
    return values.reshape(len(flat), -1).astype(np.float32)


def replay(
    folder: Path,
    *,
    model: str | None = None,
    backend: str = "emulator",
    backend_options: dict[str, Any] | None = None,
    models_dir: Path | None = None,
) -> dict[str, Any]:
    """Replay a record folder; the report: per model and per episode agreement and Q
    differences, rows per second (and, for plots and views, per row: ``_q_diff`` and
    ``_replayed``, not JSON)."""
    table = read_acts(folder)
    names = sorted(set(table.column("model").to_pylist()))
    override: ModelArtifact | None = load_artifact(model) if model else None
    if override is not None and override.name not in names and len(names) > 1:
        raise ValueError(
            f"the record holds models {names}; a replacement named {override.name!r} must "
            "take one of those names (or the record must hold one model)"
        )
    be = create_backend(backend, **(backend_options or {}))
    report: dict[str, Any] = {"folder": str(folder), "backend": backend, "models": {}}
    start = time.perf_counter()
    total = 0
    try:
        for name in names:
            if override is not None and override.name != name and len(names) > 1:
                continue
            art = override or load_artifact(name, models_dir)
            rows = table.filter(pa.compute.equal(table.column("model"), name))
            obs = _matrix(rows.column("observation"))
            recorded_q = _matrix(rows.column("q_values"))
            recorded_a = rows.column("action").to_numpy().astype(np.int64)
            seed_col = rows.column("seed")
            seeds = None
            if art.encoder.kind == "poisson" and seed_col.null_count == 0:
                seeds = seed_col.to_numpy().astype(np.int64)
            be.load(art)
            actions = np.empty(len(obs), np.int64)
            q = np.empty((len(obs), art.action_count), np.float32)
            for lo in range(0, len(obs), CHUNK):
                part = None if seeds is None else seeds[lo : lo + CHUNK]
                res = be.infer(art.name, obs[lo : lo + CHUNK], part)
                actions[lo : lo + CHUNK], q[lo : lo + CHUNK] = res.actions, res.q_values
            total += len(obs)
            same = actions == recorded_a
            diff = np.abs(q - recorded_q).max(axis=1) if q.shape == recorded_q.shape else None
            episodes = rows.column("episode_id").to_pylist()
            per_episode: dict[str, list[int]] = {}
            for ep, ok in zip(episodes, same.tolist(), strict=True):
                per_episode.setdefault(ep or "(none)", []).append(ok)
            report["models"][name] = {
                "replayed_with": {"name": art.name, "sha256": art.sha256},
                "recorded_sha256": sorted(set(rows.column("weights_sha256").to_pylist())),
                "rows": len(obs),
                "agreement": float(same.mean()),
                "q_diff_max": None if diff is None else float(diff.max()),
                "q_diff_mean": None if diff is None else float(diff.mean()),
                "seeded": seeds is not None,
                "episodes": {
                    ep: {"rows": len(v), "agreement": float(np.mean(v))}
                    for ep, v in per_episode.items()
                },
                "_q_diff": diff,
                # per row, for a view of the replay (clients.view.log_recording)
                "_replayed": {
                    "request_ids": rows.column("request_id").to_pylist(),
                    "actions": actions,
                },
            }
    finally:
        be.close()
    seconds = time.perf_counter() - start
    report["rows"] = total
    report["seconds"] = seconds
    report["rows_per_s"] = total / seconds if seconds > 0 else None
    agreements = [m["agreement"] for m in report["models"].values()]
    report["agreement"] = float(np.min(agreements)) if agreements else None
    return report


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.2 * len(models)), squeeze=False)
    for (name, m), (ax_a, ax_q) in zip(models.items(), axes, strict=True):
        eps = list(m["episodes"].items())[:60]
        ax_a.bar(range(len(eps)), [e["agreement"] for _, e in eps], color="#6baed6")
        ax_a.set_ylim(0, 1.02)
        ax_a.set_title(f"{name}: action agreement per episode (first {len(eps)})")
        if m["_q_diff"] is not None:
            ax_q.hist(m["_q_diff"], bins=50, color="#fd8d3c")
            ax_q.set_yscale("log")
        ax_q.set_title(f"{name}: max |Q replayed - Q recorded| per row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
