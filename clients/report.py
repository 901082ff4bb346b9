"""What a run leaves behind: ``steps.csv``, ``summary.json``, a console table, PNG plots.

Latency figures are in microseconds and cover answered steps only (a step with
no answer has no round trip; it is counted under ``errors``). ``rtt`` is the
client's round trip, ``server`` and ``backend`` are what the service reported
in ``timing``, ``chip`` its estimate of the chip's own time per inference.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from clients.loop import ERROR_KINDS, STEP_FIELDS, LoopResult

PERCENTILES = (50, 90, 99)


def _stats(values: list[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"n": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    pct = np.percentile(arr, PERCENTILES)
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        **{f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        "max": float(arr.max()),
    }


def reward_threshold(env_id: str) -> float | None:
    """Gymnasium's 'solved' threshold for ``env_id`` (CartPole-v1: 475, Acrobot-v1: -100)."""
    try:
        import gymnasium as gym

        return gym.spec(env_id).reward_threshold
    except Exception:  # unknown env id: no threshold to compare with
        return None


def summarize(result: LoopResult) -> dict[str, Any]:
    """The JSON summary of one run."""
    cfg = result.config
    returns = [e.total_reward for e in result.episodes]
    lengths = [e.steps for e in result.episodes]
    steps = len(result.rows)
    errors = Counter(e for e in result.column("error") if e)
    late = sum(result.column("late"))
    answered = steps - sum(errors.values())
    threshold = reward_threshold(cfg.env_id)
    mean_return = float(np.mean(returns)) if returns else None
    energy = [x for x in result.column("energy_uj") if math.isfinite(x)]
    return {
        "env_id": cfg.env_id,
        "model": cfg.model,
        "url": cfg.url,
        "transport": cfg.transport,
        "clients": cfg.clients,
        "episodes_requested": cfg.episodes * cfg.clients,
        "seed": cfg.seed,
        "rate_hz": cfg.rate_hz or None,
        "wall_s": result.wall_s,
        "steps": steps,
        "steps_per_s": steps / result.wall_s if result.wall_s > 0 else None,
        "episodes": len(result.episodes),
        "returns": {
            "mean": mean_return,
            "std": float(np.std(returns)) if returns else None,
            "min": float(np.min(returns)) if returns else None,
            "max": float(np.max(returns)) if returns else None,
            "per_episode": returns,
            "lengths": lengths,
        },
        "reward_threshold": threshold,
        "solved": (
            None if threshold is None or mean_return is None else bool(mean_return >= threshold)
        ),
        "latency_us": {
            "rtt": _stats(result.column("rtt_us")),
            "server": _stats(result.column("server_us")),
            "backend": _stats(result.column("backend_us")),
            "chip_est": _stats(result.column("chip_us")),
        },
        "energy_uj_per_inference_mean": float(np.mean(energy)) if energy else None,
        "deadline": {
            "period_us": 1e6 / cfg.rate_hz if cfg.rate_hz else None,
            "misses": int(late) if cfg.rate_hz else None,
            "miss_rate": (late / steps if steps else 0.0) if cfg.rate_hz else None,
        },
        "answered": answered,
        "errors": {k: errors.get(k, 0) for k in ERROR_KINDS if errors.get(k, 0)},
        "error_steps": int(sum(errors.values())),
        "retried_steps": int(sum(1 for r in result.column("retries") if r)),
        "fallback_steps": int(sum(result.column("fallback"))),
        "backends": sorted({b for b in result.column("backend") if b}),
        "aborted": result.aborted,
    }


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.6g}" if not v.is_integer() else int(v)
    if isinstance(v, bool):
        return int(v)
    return v


def write_steps_csv(result: LoopResult, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(STEP_FIELDS)
        for row in result.rows:
            writer.writerow([_csv_value(v) for v in row])


def write_run(result: LoopResult, summary: dict[str, Any], out_dir: Path, label: str) -> list[Path]:
    """``steps.csv``, ``summary.json`` and the two plots of one run, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out_dir / "steps.csv", out_dir / "summary.json"
    latency_png, returns_png = out_dir / "latency.png", out_dir / "returns.png"
    paths = [csv_path, json_path, latency_png, returns_png]
    summary["files"] = [str(p) for p in paths]
    write_steps_csv(result, csv_path)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    run = (label, result, summary)
    plot_latency([run], latency_png)
    plot_returns([run], returns_png)
    return paths


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def summary_table(summaries: list[dict[str, Any]], title: str = "s2loop closed loop") -> Any:
    """A rich Table with one column per run (env x transport) and one row per figure."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("", style="bold")
    for s in summaries:
        table.add_column(f"{s['model']} {s['transport']}", justify="right")

    def row(name: str, cell: Any) -> None:
        table.add_row(name, *(cell(s) for s in summaries))

    def lat(kind: str, key: str) -> Any:
        return lambda s: _fmt(s["latency_us"][kind][key])

    def returns(s: dict[str, Any]) -> str:
        r = s["returns"]
        return "-" if r["mean"] is None else f"{r['mean']:.1f} ± {r['std']:.1f}"

    def solved(s: dict[str, Any]) -> str:
        mark = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[s["solved"]]
        thr = s["reward_threshold"]
        return mark if thr is None else f"{mark} (≥ {thr:g})"

    def misses(s: dict[str, Any]) -> str:
        dl = s["deadline"]
        if dl["misses"] is None:
            return "- (unpaced)"
        return f"{dl['misses']} ({100 * dl['miss_rate']:.1f}%) @ {s['rate_hz']:g} Hz"

    def errors(s: dict[str, Any]) -> str:
        text = ", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "0"
        return f"[red]{text}, aborted[/]" if s["aborted"] else text

    row("env", lambda s: s["env_id"])
    row("clients", lambda s: str(s["clients"]))
    row("episodes done/asked", lambda s: f"{s['episodes']}/{s['episodes_requested']}")
    row("return mean ± std", returns)
    row("return min", lambda s: _fmt(s["returns"]["min"], 1))
    row("solved", solved)
    row("steps", lambda s: f"{s['steps']:,}")
    row("steps/s", lambda s: _fmt(s["steps_per_s"]))
    for p in ("p50", "p90", "p99", "max"):
        row(f"RTT {p} (µs)", lat("rtt", p))
    row("server p50 (µs)", lat("server", "p50"))
    row("backend p50 (µs)", lat("backend", "p50"))
    row("chip est. p50 (µs)", lat("chip_est", "p50"))
    row("energy est. (µJ/inf.)", lambda s: _fmt(s["energy_uj_per_inference_mean"], 1))
    row("deadline misses", misses)
    row("steps without action", errors)
    row("fallback answers", lambda s: str(s["fallback_steps"]))
    table.caption = "RTT: client round trip, answered steps only; server/backend: reported by it"
    return table


def _finite(values: list[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def plot_latency(runs: list[tuple[str, LoopResult, dict[str, Any]]], path: Path) -> Path:
    """Histogram and CDF of the client RTT per run, with the server's own time dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    all_rtt = np.concatenate([_finite(r.column("rtt_us")) for _, r, _ in runs] + [np.zeros(0)])
    hi = float(np.percentile(all_rtt, 99.5)) * 1.1 if all_rtt.size else 1.0
    bins = np.linspace(0.0, max(hi, 1.0), 60)
    for i, (label, result, _) in enumerate(runs):
        color = f"C{i}"
        rtt = _finite(result.column("rtt_us"))
        if rtt.size == 0:
            continue
        ax_hist.hist(np.clip(rtt, 0, bins[-1]), bins=bins, alpha=0.55, color=color, label=label)
        xs = np.sort(rtt)
        ys = np.arange(1, xs.size + 1) / xs.size
        ax_cdf.plot(xs, ys, color=color, label=f"{label} RTT")
        server = np.sort(_finite(result.column("server_us")))
        if server.size:
            ax_cdf.plot(
                server,
                np.arange(1, server.size + 1) / server.size,
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"{label} server",
            )
    ax_hist.set_xlabel("client round trip (µs), clipped at p99.5")
    ax_hist.set_ylabel("steps")
    ax_hist.set_title("latency histogram")
    if ax_hist.get_legend_handles_labels()[0]:
        ax_hist.legend(fontsize=8)
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (µs, log)")
    ax_cdf.set_ylabel("fraction of steps")
    ax_cdf.set_title("latency CDF (dashed: server's own time)")
    ax_cdf.grid(True, which="both", alpha=0.3)
    if ax_cdf.get_legend_handles_labels()[0]:
        ax_cdf.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_returns(runs: list[tuple[str, LoopResult, dict[str, Any]]], path: Path) -> Path:
    """Return per episode, one panel per environment, with its 'solved' threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    env_ids = list(dict.fromkeys(summary["env_id"] for _, _, summary in runs)) or ["-"]
    fig, axes = plt.subplots(1, len(env_ids), figsize=(6 * len(env_ids), 4), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids, strict=True):
        threshold = None
        for i, (label, result, summary) in enumerate(runs):
            if summary["env_id"] != env_id:
                continue
            eps = sorted(result.episodes, key=lambda e: e.episode)
            ax.plot(
                [e.episode for e in eps],
                [e.total_reward for e in eps],
                marker="o",
                color=f"C{i}",
                label=label,
            )
            threshold = summary.get("reward_threshold")
        if threshold is not None:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1, label="solved")
        ax.set_title(f"{env_id}: return per episode")
        ax.set_xlabel("episode (seed = base seed + episode)")
        ax.set_ylabel("return")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
