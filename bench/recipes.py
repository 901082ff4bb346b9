"""``s2loop bench recipes``: the reproduction page, ``bench/RECIPES.md`` and a plot, from
the ``results.parquet`` of an ``s2loop sweep`` (:mod:`agent.sweep`: the recipe grid,
recipe x encoder x neuron x input ticks, one factor at a time from the paper's setting,
plus our distill recipe, several training seeds each, trained on Ray Tune).

Per model of the sweep, on the 8-bit emulator: greedy return over unseen episodes (from
the finetune's evaluation), float-vs-8-bit agreement, spikes and synaptic events per
inference, ticks, the mapping's chip time and energy estimates per inference and per
episode (and per CartPole-v0 episode, the 200-step task the paper's quoted energy figure
is for), training wall time. Last, a sweep of input ticks on the shipped models: the
fewest that keep their return.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.sweep import ENVS, SETTINGS, SPEC_NAME, read_results, trial_commands
from bench import BENCH_DIR
from bench.suite import PAPER

MD_NAME = "RECIPES.md"
JSON_NAME = "recipes.json"
PLOT_NAME = "recipes.png"
SHIPPED = ("cartpole", "acrobot", "cartpole-dsqn", "acrobot-dsqn")
#: first seed of the extra-metric episodes (far from training and from the final evaluation)
METRIC_SEED = 3_000_000

Log = Callable[[str], None]


@dataclass
class RecipesConfig:
    """The reproduction page RECIPES.md from the models of a sweep (``s2loop sweep --out
    DIR``, then ``s2loop bench recipes --results DIR/results.parquet``)."""

    results: Path = Path("runs/sweep/results.parquet")  # an `s2loop sweep`'s results.parquet
    metric_episodes: int = 10  # episodes whose states give spikes per inference
    v0_episodes: int = 100  # CartPole-v0 episodes per CartPole model
    tick_sweep: bool = True  # also sweep input ticks of the shipped models
    models_dir: Path | None = None  # shipped models for the tick sweep (default models/)
    quick: bool = False  # fewer extra-metric episodes (a test)
    out: Path = BENCH_DIR  # folder for RECIPES.md, recipes.json and recipes.png

    @classmethod
    def make(cls, quick: bool = False, **kw: Any) -> RecipesConfig:
        if quick:
            kw = {"metric_episodes": 2, "v0_episodes": 3, **kw}
        return cls(quick=quick, **kw)


# ------------------------------------------------------------------ metrics of one model


def model_metrics(path: Path, cfg: RecipesConfig) -> dict[str, Any]:
    """What the page reports of one trained model (see the module docstring)."""
    from agent.rollout import run_episodes
    from hw.artifact import load_artifact
    from hw.emulator import EmulatorBackend
    from hw.mapping import map_network

    art = load_artifact(path)
    p = art.provenance
    ev = p["evaluation"]
    emu_ev = ev["emulator"]
    rep = map_network(art)
    rng = np.random.default_rng(0)
    with EmulatorBackend() as emu:
        emu.load(art)

        def act(obs: np.ndarray) -> np.ndarray:
            return emu.infer(art.name, obs, rng.integers(0, 2**53, len(obs))).actions

        seeds = list(range(METRIC_SEED, METRIC_SEED + cfg.metric_episodes))
        states = run_episodes(art.env_id, act, seeds, keep_states=True).all_states()
        res = emu.infer(art.name, states, rng.integers(0, 2**53, len(states)))
        v0 = None
        if art.env_id == "CartPole-v1":
            seeds = list(range(METRIC_SEED, METRIC_SEED + cfg.v0_episodes))
            v0 = run_episodes("CartPole-v0", act, seeds).summary()
    length = emu_ev["mean_length"]
    out = {
        "return_mean": emu_ev["mean"],
        "return_std": emu_ev["std"],
        "return_min": emu_ev["min"],
        "repeat_std": emu_ev.get("repeat_std"),
        "episodes": ev["episodes"],
        "agreement": ev.get("agreement_float_vs_8bit"),
        "margin": (ev.get("decision_margin") or {}).get("median_margin"),
        "float_return_mean": ev["float"]["mean"],
        "spikes_per_inference": float(res.spikes_per_layer[:, :-1].sum(axis=1).mean()),
        "synaptic_events_per_inference": float(res.synaptic_events.mean()),
        "ticks": art.ticks,
        "pes_used": rep.pes_used,
        "chip_time_s": rep.chip_time_s,
        "energy_j": rep.energy_j,
        "energy_batched_j": rep.energy_batched_j,
        "episode_length": length,
        "episode_energy_j": rep.energy_j * length,
        "train_seconds": p.get("train_seconds"),
        "finetune_seconds": p.get("finetune_seconds"),
        "pipeline": p.get("finetune", {}).get("chosen"),
        "alpha_decay": [lay.alpha_decay for lay in art.layers[:-1]],
    }
    if v0 is not None:
        out["v0_return_mean"] = v0["mean"]
        out["v0_episode_length"] = v0["mean_length"]
        out["v0_episode_energy_j"] = rep.energy_j * v0["mean_length"]
    return out


def _shipped(models_dir: Path | None) -> Iterator[tuple[str, Any]]:
    """The shipped models there are in ``models_dir`` (default models/): (name, artifact)."""
    from hw.artifact import ArtifactError, load_artifact

    for name in SHIPPED:
        try:
            yield name, load_artifact(name, models_dir)
        except (ArtifactError, FileNotFoundError):
            continue


def tick_sweep(models_dir: Path | None, episodes: int = 100) -> list[dict[str, Any]]:
    """Each shipped model with fewer input ticks (same weights): greedy emulator return
    over ``episodes`` unseen episodes per setting, down to the fewest that keep it."""
    import dataclasses

    from agent.evaluate import DEFAULT_EVAL_SEED, evaluate

    rows = []
    for name, art in _shipped(models_dir):
        hops = art.ticks - art.encoder.input_ticks
        full = None
        for t_in in range(art.encoder.input_ticks, 0, -1):
            cut = dataclasses.replace(
                art,
                encoder=dataclasses.replace(art.encoder, input_ticks=t_in),
                ticks=t_in + hops,
            )
            r = evaluate(cut, episodes=episodes, seed=DEFAULT_EVAL_SEED, agreement=False)
            full = full if full is not None else r
            margin = 2 * max(full["std"], 1.0) / math.sqrt(episodes)  # two standard errors
            rows.append(
                {
                    "model": name,
                    "input_ticks": t_in,
                    "ticks": t_in + hops,
                    "mean": r["mean"],
                    "std": r["std"],
                    "min": r["min"],
                    "keeps": r["mean"] >= full["mean"] - margin,
                }
            )
            if r["mean"] < full["mean"] - 3 * max(full["std"], 5.0):
                break  # clearly worse: fewer ticks will not come back
    return rows


def shipped_models(models_dir: Path | None) -> list[dict[str, Any]]:
    """What the shipped models' provenance says of them: recipe, neurons, encoder and
    their final evaluation (8-bit emulator, unseen episodes)."""
    rows = []
    for name, art in _shipped(models_dir):
        ev = art.provenance.get("evaluation") or {}
        emu = ev.get("emulator") or {}
        rows.append(
            {
                "model": name,
                "env_id": art.env_id,
                "recipe": art.provenance.get("recipe"),
                "encoder": art.encoder.kind,
                "neuron": "IF" if all(lay.alpha_decay == 1.0 for lay in art.layers[:-1]) else "LIF",
                "input_ticks": art.encoder.input_ticks,
                "mean": emu.get("mean"),
                "std": emu.get("std"),
                "min": emu.get("min"),
                "repeat_std": emu.get("repeat_std"),
                "episodes": ev.get("episodes"),
                "agreement": ev.get("agreement_float_vs_8bit"),
                "margin": (ev.get("decision_margin") or {}).get("median_margin"),
            }
        )
    return rows


# The targets of the issues (#17: the paper's recipe; #18: the shipped acrobot), one
# declaration each. Grid rows: dsqn, Poisson, LIF, by (env, T): (mean over seeds, every seed).
GRID_GOALS: dict[tuple[str, int], tuple[float, float | None]] = {
    ("CartPole-v1", 20): (490.0, 475.0),
    ("CartPole-v1", 10): (475.0, None),
    ("Acrobot-v1", 20): (-85.0, None),
}
# Shipped models: (mean, min) return floors and the float vs 8-bit agreement floor.
SHIPPED_GOALS: dict[str, tuple[float | None, float | None, float]] = {
    "cartpole": (None, 500.0, 0.995),
    "acrobot": (-72.0, None, 0.995),  # the "<= -72" steps: a return of at least -72
    "cartpole-dsqn": (490.0, 300.0, 0.98),
    "acrobot-dsqn": (-90.0, None, 0.98),
}


def targets(report: dict[str, Any]) -> list[list[str]]:
    """The issues' targets beside what this page measured: [what, target, measured, met]."""
    out = []

    def row(what: str, target: str, ok: bool, text: str) -> None:
        out.append([what, target, text, "met" if ok else "**not met**"])

    for r in report["rows"]:
        v = r["variant"]
        goal = GRID_GOALS.get((r["env_id"], v.get("input_ticks")))
        if goal is None or (v["recipe"], v["encoder"], v["neuron"]) != ("dsqn", "poisson", "LIF"):
            continue
        mean, worst, (mean_goal, seed_goal) = r["return_mean"][0], min(r["returns"]), goal
        what = f"dsqn {r['env_id']}, {r['label']}, {r['seeds']} seeds"
        row(f"{what}: mean", f">= {mean_goal:g}", mean >= mean_goal, _f(mean))
        if seed_goal is not None:
            row(f"{what}: every seed", f">= {seed_goal:g}", worst >= seed_goal,
                f"worst seed {_f(worst)}")  # fmt: skip
    shipped = {m["model"]: m for m in report.get("shipped", [])}
    for name, (mean_goal, min_goal, agree_goal) in SHIPPED_GOALS.items():
        m = shipped.get(name)
        if m is None or m["mean"] is None:
            continue
        if mean_goal is not None:
            row(f"shipped {name}: mean", f">= {mean_goal:g}", m["mean"] >= mean_goal, _f(m["mean"]))
        if min_goal is not None and m["min"] is not None:
            row(f"shipped {name}: min", f">= {min_goal:g}", m["min"] >= min_goal,
                _f(m["min"], 0))  # fmt: skip
        if m["agreement"] is not None:
            a = m["agreement"]
            row(f"shipped {name}: float vs 8-bit agreement", f">= {agree_goal * 100:g} %",
                a >= agree_goal, f"{a * 100:.2f} %")  # fmt: skip
    return out


# ------------------------------------------------------------------ the page


def _agg(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None], float)
    return (float(a.mean()), float(a.std())) if a.size else (math.nan, math.nan)


def summarize(models: dict[str, dict[str, Any]], results: list[dict[str, Any]]):
    """One row per (env, setting) of the sweep: the models' figures over training seeds."""
    rows = []
    for env_id in sorted({r["env"] for r in results}, key=_env_order):
        for v in SETTINGS:
            keys = sorted(
                {f"{env_id}/{v.key}/seed{r['seed']}" for r in results
                 if r["env"] == env_id and r["setting"] == v.key}
            )  # fmt: skip
            per_seed = [models[k] for k in keys if k in models]
            if not per_seed:
                continue
            row: dict[str, Any] = {"env_id": env_id, "variant": asdict(v), "label": v.label}
            row["seeds"] = len(per_seed)
            row["returns"] = [m["return_mean"] for m in per_seed]
            for key in (
                "return_mean", "return_std", "agreement", "margin", "spikes_per_inference",
                "synaptic_events_per_inference", "chip_time_s", "energy_j", "episode_energy_j",
                "v0_episode_energy_j", "v0_return_mean", "train_seconds", "finetune_seconds",
                "ticks",
            ):  # fmt: skip
                row[key] = _agg([m.get(key) for m in per_seed])
            rows.append(row)
    return rows


def _env_order(env_id: str) -> tuple[int, str]:
    return (ENVS.index(env_id) if env_id in ENVS else len(ENVS), env_id)


def _metrics_cached(path: Path, cfg: RecipesConfig) -> dict[str, Any]:
    cache = path.with_name("metrics.json")
    if cache.exists() and cache.stat().st_mtime >= path.stat().st_mtime:
        return json.loads(cache.read_text())
    metrics = model_metrics(path, cfg)
    cache.write_text(json.dumps(metrics, default=float))
    return metrics


def run_recipes(cfg: RecipesConfig, command: str = "", log: Log = print) -> dict[str, Any]:
    """The page's report from the sweep's results (and the shipped models)."""
    start = time.time()
    results = read_results(cfg.results)
    models: dict[str, dict[str, Any]] = {}
    missing = []
    for r in results:
        key = f"{r['env']}/{r['setting']}/seed{r['seed']}"
        if r["status"] == "ok" and r["artifact"] and Path(r["artifact"]).exists():
            log(f"metrics of {key}")
            models[key] = {**_metrics_cached(Path(r["artifact"]), cfg), "node_id": r["node_id"]}
        else:
            why = r["error"] or ("not run yet" if r["status"] == "pending" else "no model")
            missing.append(f"{key} ({why})")
    spec_path = cfg.results.with_name(SPEC_NAME)
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    settings = [v for v in SETTINGS if any(r["setting"] == v.key for r in results)]
    smoke = any(r["smoke"] for r in results)
    sweep_rows = tick_sweep(cfg.models_dir, 10 if cfg.quick else 100) if cfg.tick_sweep else []
    from agent.pipeline import git_commit

    return {
        "command": command,
        "sweep_command": spec.get("commands", {}).get("grid"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_commit": git_commit(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "quick": smoke,
        "config": {
            "results": str(cfg.results),
            "envs": sorted({r["env"] for r in results}, key=_env_order),
            "seeds": sorted({int(r["seed"]) for r in results}),
            "cpus_per_trial": sorted({r["cpus"] for r in results}),
            "nodes": len({r["node_id"] for r in results if r["node_id"]}),
            "eval_repeats": sorted({r["eval_repeats"] for r in results if r["eval_repeats"]}),
            "commands": {
                v.key: trial_commands("<env>", v, 0, "<run>", smoke=smoke) for v in settings
            },
        },
        "models": models,
        "missing": missing,
        "rows": summarize(models, results),
        "tick_sweep": sweep_rows,
        "shipped": shipped_models(cfg.models_dir),
        "paper": PAPER,
        "seconds": time.time() - start,
    }


def _cpus(values: list[float]) -> str:
    return "/".join(f"{c:g}" for c in values) + " CPU"


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def _pm(pair: Any, digits: int = 1, scale: float = 1.0) -> str:
    mean, std = pair
    if not math.isfinite(mean):
        return "n/a"
    return f"{_f(mean * scale, digits)} ± {_f(std * scale, digits)}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    m = report["machine"]
    lines = [
        "# Recipes: the paper's training recipe and ours, side by side",
        "",
        f"Written by `{report['command']}` on {report['date']}, commit "
        f"`{report['git_commit'][:12]}`, {m['processor']}, {m['cpu_count']} CPUs "
        f"here; the models come from the trials of `{report['sweep_command'] or 's2loop sweep'}` "
        "(Ray Tune, "
        f"{_cpus(cfg['cpus_per_trial'])} per trial, {cfg['nodes']} node(s); "
        f"`{cfg['results']}`). Every figure below is **ours**, measured by those commands, "
        "except where a line says it is the paper's.",
        "",
    ]
    if report["quick"]:
        lines += [
            "**Smoke sweep**: tiny training budgets for a test or a cluster check; these "
            "figures say nothing about the recipes.",
            "",
        ]
    lines += [
        "Each row: a training setting, "
        f"{len(cfg['seeds'])} training seeds ({', '.join(map(str, cfg['seeds']))}). Return: "
        "8-bit emulator, greedy, mean over the unseen evaluation episodes per seed, then mean "
        "± std over seeds (a Poisson model's episodes ran "
        f"{'/'.join(map(str, cfg['eval_repeats'])) or 'n/a'} times with fresh input spikes). "
        "Agreement: share of visited "
        "states where the float network and the 8-bit network pick the same action on the "
        "same spikes. Margin: the median gap between the 8-bit network's best and second-best "
        "Q-value in stds of that gap across Poisson draws (how far a decision is from "
        "flipping; n/a for deterministic inputs). "
        "Spikes and synaptic events per inference: hidden-layer spikes and "
        "spikes x fan-out, on states the model visits. Chip time and energy: **estimates** of "
        "the mapping model (`hw.mapping`, secondary power figures), per inference alone on "
        "the chip and per episode (x the mean episode length). Train time: train + finetune "
        "wall time, one torch thread per CPU of the trial.",
        "",
    ]
    for env_id in dict.fromkeys(r["env_id"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["env_id"] == env_id]
        head = ["setting", "seeds", "return (8-bit)", "per seed", "agreement", "margin",
                "spikes/inf", "syn. events/inf", "ticks", "chip ms/inf", "mJ/inf",
                "J/episode"]  # fmt: skip
        if env_id == "CartPole-v1":
            head += ["v0 return", "J/v0 episode"]
        head += ["train min"]
        body = []
        for r in rows:
            cells = [
                r["label"],
                str(r["seeds"]),
                _pm(r["return_mean"]),
                ", ".join(_f(x) for x in r["returns"]),
                _pm(r["agreement"], 2, 100) + " %",
                _pm(r["margin"], 2),
                _pm(r["spikes_per_inference"], 0),
                _pm(r["synaptic_events_per_inference"], 0),
                _f(r["ticks"][0], 0),
                _f(r["chip_time_s"][0] * 1e3, 0),
                _f(r["energy_j"][0] * 1e3, 2),
                _pm(r["episode_energy_j"], 2),
            ]
            if env_id == "CartPole-v1":
                cells += [_pm(r["v0_return_mean"]), _pm(r["v0_episode_energy_j"], 3)]
            minutes = r["train_seconds"][0] + r["finetune_seconds"][0]
            cells.append(_f(minutes / 60, 0))
            body.append(cells)
        lines += [f"## {env_id}", "", *_table(head, body), ""]
    lines += [f"![returns per setting]({PLOT_NAME})", ""]
    if report.get("shipped"):
        body = [
            [f"`{m['model']}`", m["env_id"], str(m["recipe"]),
             f"{m['encoder']} · {m['neuron']} · T={m['input_ticks']}",
             f"{_f(m['mean'])} ± {_f(m['std'])}", _f(m["min"], 0),
             "n/a" if m["agreement"] is None else f"{m['agreement'] * 100:.2f} %",
             "n/a" if m.get("margin") is None else f"{m['margin']:.2f}"]
            for m in report["shipped"]
        ]  # fmt: skip
        lines += [
            "## Shipped models",
            "",
            "From each artifact's provenance (its final evaluation: 8-bit emulator, greedy, "
            "100 unseen episodes; Poisson models: over repeats with fresh input spikes). "
            "Commands in each model's card, `models/*.md`.",
            "",
            *_table(
                [
                    "model",
                    "env",
                    "recipe",
                    "encoder · neuron · T",
                    "return",
                    "min",
                    "agreement",
                    "margin",
                ],
                body,
            ),
            "",
        ]
    rows = targets(report)
    if rows:
        lines += ["## Targets", "", *_table(["what", "target", "measured", ""], rows), ""]
    if report["missing"]:
        lines += [
            "Trials of the sweep without a model (a failed one's error file is in its folder "
            "under the sweep's `grid/`): " + ", ".join(report["missing"]),
            "",
        ]
    claims = {c["what"]: c for c in report["paper"]["claims"]}
    cp = [r for r in report["rows"] if r["env_id"] == "CartPole-v1"]
    lines += [
        "## The paper's figures (quoted, not measured here)",
        "",
        f"{report['paper']['citation']}: {report['paper']['network']}. Energy for CartPole: "
        f"{claims['CartPole energy, SpiNNaker2']['value_j']} J on SpiNNaker2 against "
        f"{claims['CartPole energy, GTX 1650']['value_j']} J on a GTX 1650 GPU "
        f"({claims['CartPole energy, SpiNNaker2']['grade'].split(';')[0]}), read here as "
        "energy **per "
        'inference**: the abstract names what was measured, "energy cost per inference" '
        "(one secondary source calls it episode energy on CartPole-v0; against the abstract "
        "that reading is doubtful). Latency on par with the GPU, up to 32x less energy "
        "(abstract). Network sizes, learning rates and returns: not found in what we could "
        "read.",
        "",
    ]
    if cp:
        best = max(cp, key=lambda r: r["return_mean"][0])
        lines += [
            f"Ours beside it, per inference: the {best['label']} CartPole models need an "
            f"estimated {_f(best['energy_j'][0] * 1e3, 2)} mJ per inference on the chip "
            f"(mapping estimate, one copy alone on the chip; {_f(best['ticks'][0], 0)} ticks of "
            "1 ms), against the paper's "
            f"{_f(claims['CartPole energy, SpiNNaker2']['value_j'] * 1e3, 0)} mJ on SpiNNaker2: "
            "different network sizes, tick lengths and power figures make this a rough "
            f"comparison. (Per CartPole-v0 episode ours is {_pm(best['v0_episode_energy_j'], 3)}"
            " J, which is not what the paper's figure measures.)",
            "",
        ]
    if report["tick_sweep"]:
        body = [
            [r["model"], str(r["input_ticks"]), str(r["ticks"]),
             f"{_f(r['mean'])} ± {_f(r['std'])}", _f(r["min"], 0),
             "yes" if r["keeps"] else "no"]
            for r in report["tick_sweep"]
        ]  # fmt: skip
        lines += [
            "## Fewer ticks per inference for the shipped models",
            "",
            "The shipped models evaluated with fewer input ticks (same weights, no "
            "retraining), 8-bit emulator, greedy, unseen episodes. 'keeps': mean return within "
            "two standard errors (2 std / sqrt(episodes)) of the full-tick model's mean; a "
            "Poisson model's rows are one draw each. Chip time is ticks x 1 ms.",
            "",
            *_table(["model", "input ticks", "ticks", "return", "min", "keeps"], body),
            "",
        ]
    lines += ["## Commands", "", "Per setting, what one trial runs (`<env>`, `<run>` and "
              "the seed vary):", ""]  # fmt: skip
    for key, cmds in cfg["commands"].items():
        lines += [f"- `{key}`:", "", "  ```", *(f"  {c}" for c in cmds), "  ```", ""]
    if report["sweep_command"]:
        lines += ["All of them, on Ray Tune (resumes with the same `--out`):", "",
                  f"```\n{report['sweep_command']}\n```", ""]  # fmt: skip
    lines += [f"This page: {report['seconds'] / 60:.1f} min of wall time.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env_id"] for r in report["rows"]))
    fig, axes = plt.subplots(1, max(1, len(envs)), figsize=(6.5 * max(1, len(envs)), 4.2))
    axes = np.atleast_1d(axes)
    for ax, env_id in zip(axes, envs, strict=False):
        rows = [r for r in report["rows"] if r["env_id"] == env_id]
        x = np.arange(len(rows))
        ax.bar(x, [r["return_mean"][0] for r in rows], yerr=[r["return_mean"][1] for r in rows],
               color="#9ecae1", capsize=3)  # fmt: skip
        for i, r in enumerate(rows):
            ax.plot([i] * len(r["returns"]), r["returns"], "k.", ms=5)
        ax.set_xticks(x, [r["label"].replace(" · ", "\n") for r in rows], fontsize=7)
        ax.set_title(f"{env_id}: 8-bit emulator return (dots: seeds)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_recipes(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / MD_NAME, out / JSON_NAME]
    paths[0].write_text(markdown(report))
    paths[1].write_text(json.dumps(report, indent=1, default=float))
    if report["rows"]:
        paths.append(plot(report, out / PLOT_NAME))
    return paths
