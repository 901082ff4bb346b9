"""``s2loop sweep``: many trainings on Ray Tune, on this machine or on a Ray cluster.

A grid trial is one (environment, setting, training seed): ``s2loop train`` then
``s2loop finetune`` with the setting's preset and options, run in-process through the
same entry points as the two commands (:func:`agent.cli.parse_options`,
:func:`agent.pipeline.train_run`, :func:`agent.pipeline.finetune_run`), into the run
folder ``OUT/runs/ENV/SETTING/seedN`` (its model: ``model.s2l`` there). Each trial asks
Ray for ``cpus_per_trial`` CPUs, so Ray packs them on the cluster's nodes.

A search trial is one set of option values drawn by Tune's Optuna searcher from the
ranges of :data:`agent.options.SEARCH_SPACE` on top of a setting; it trains and fine-tunes
once per training seed (``OUT/runs/search/TRIAL/seedN``) and reports the mean 8-bit
return over those seeds, its objective. No scheduler: every trial runs to the end
(stopping unlucky seeds early would bias the mean over seeds).

Resuming is Tune's: the experiment's state lives in ``OUT/grid`` (or ``OUT/search``);
the same command with the same ``--out`` restores it and runs only the trials that did
not finish (errored ones again too). A trial that raises is retried once, then
reported as ``error``. At the end, one row per trial (per seed in a search) goes to
``OUT/results.parquet`` (``OUT/search.parquet``).

Ray, Tune and torch are imported inside the functions: ``s2loop --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, replace
from pathlib import Path
from typing import Any

ENVS = ("CartPole-v1", "Acrobot-v1")
RESULTS_NAME = "results.parquet"
SEARCH_RESULTS_NAME = "search.parquet"
SPEC_NAME = "sweep.json"
OBJECTIVE = "return_8bit_mean"


class SweepError(ValueError):
    """A sweep that cannot start as asked (the message says why)."""


@dataclass(frozen=True)
class Setting:
    """One training setting of the recipe grid: a preset family and the options that
    differ from it (the rows of bench/RECIPES.md)."""

    key: str
    recipe: str
    encoder: str
    neuron: str
    input_ticks: int
    base: str  # "paper" or "distill": the preset family

    @property
    def label(self) -> str:
        return f"{self.recipe} · {self.encoder} · {self.neuron} · T={self.input_ticks}"

    def preset(self, env_id: str) -> str:
        return f"{self.base}-{env_id.split('-')[0].lower()}"

    def options(self) -> dict[str, Any]:
        return {
            "snn": {
                "encoder": self.encoder,
                "alpha_decay": 0.9 if self.neuron == "LIF" else 1.0,
                "input_ticks": self.input_ticks,
            }
        }


PAPER_SETTING = Setting("dsqn-poisson-lif-t20", "dsqn", "poisson", "LIF", 20, "paper")
SETTINGS = (
    PAPER_SETTING,
    replace(PAPER_SETTING, key="dsqn-poisson-lif-t10", input_ticks=10),
    replace(PAPER_SETTING, key="dsqn-poisson-if-t20", neuron="IF"),
    replace(PAPER_SETTING, key="dsqn-deterministic-lif-t20", encoder="deterministic"),
    Setting("distill-deterministic-if-t12", "distill", "deterministic", "IF", 12, "distill"),
    Setting("distill-poisson-lif-t20", "distill", "poisson", "LIF", 20, "distill"),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}

#: --smoke: budgets small enough for a test or a cluster check (results say nothing)
_SMOKE_DSQN = {"total_steps": 300, "learning_starts": 100, "eval_every": 100,
               "eval_episodes": 2, "batch_size": 16}  # fmt: skip
_SMOKE_DISTILL = {"rounds": 1, "steps_per_round": 5, "batch_size": 32, "teacher_episodes": 2,
                  "rollout_episodes": 2, "eval_episodes": 2}  # fmt: skip
SMOKE_TRAIN = {
    "dsqn": _SMOKE_DSQN,
    "teacher": {"total_steps": 300, "learning_starts": 100, "eval_every": 100,
                "eval_episodes": 2, "hidden": 32, "improve_steps": 5},
    "distill": _SMOKE_DISTILL,
    "snn": {"hidden": (16,)},
}  # fmt: skip
SMOKE_FINETUNE = {
    "dsqn": _SMOKE_DSQN,
    "distill": _SMOKE_DISTILL,
    "qat": {"select_episodes": 2, "percentiles": (100.0, 99.0)},
    "eval_episodes": 3,
    "eval_repeats": 2,
}
#: the final evaluation of a (non-smoke) trial: Poisson models' episodes run this often
EVAL_REPEATS = 3


# ------------------------------------------------------------------ one training


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
        )
    return out


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"teacher.lr": 1e-3}`` -> ``{"teacher": {"lr": 1e-3}}``."""
    out: dict[str, Any] = {}
    for name, value in dotted.items():
        *groups, leaf = name.split(".")
        d = out
        for g in groups:
            d = d.setdefault(g, {})
        d[leaf] = value
    return out


def flags(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested options as the command line of ``s2loop train``/``finetune`` spells them."""
    out: list[str] = []
    for key, value in options.items():
        name = key.replace("_", "-")
        if isinstance(value, Mapping):
            out += flags(value, f"{prefix}{name}.")
        elif isinstance(value, bool):
            out.append(f"--{prefix}{'' if value else 'no-'}{name}")
        elif isinstance(value, list | tuple):
            out += [f"--{prefix}{name}", *(str(v) for v in value)]
        else:
            out += [f"--{prefix}{name}", str(value)]
    return out


def _known(config_type: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``options`` that names fields of ``config_type`` (nested groups too):
    the smoke budgets name the options of every recipe, and a config may lack some."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    out = {}
    for k, v in options.items():
        if k not in fields:
            continue
        f = fields[k]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(v, Mapping) and dataclasses.is_dataclass(default):
            out[k] = _known(type(default), v)
        else:
            out[k] = v
    return out


def trial_args(
    env_id: str,
    setting: Setting,
    seed: int,
    run_dir: Path | str,
    *,
    smoke: bool = False,
    threads: int = 1,
    params: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """The arguments of ``s2loop train`` and ``s2loop finetune`` for one training (without
    the command names). ``params``: dotted train options over the setting's (a search)."""
    from agent.options import FinetuneConfig, TrainConfig

    preset = ["--preset", setting.preset(env_id)]
    common = {"threads": threads, "progress": False}
    train = _merge({"out": str(run_dir), "seed": seed, **common}, setting.options())
    if smoke:
        train = _merge(train, _known(TrainConfig, SMOKE_TRAIN))
    train = _merge(train, _nest(params or {}))
    finetune = {"run": str(run_dir), "out": f"{run_dir}/model.s2l", **common}
    finetune |= {"eval_repeats": EVAL_REPEATS, "card": False}
    if smoke:
        finetune = _merge(finetune, _known(FinetuneConfig, SMOKE_FINETUNE))
    return preset + flags(train), preset + flags(finetune)


def trial_commands(env_id: str, setting: Setting, seed: int, run_dir: str, **kw: Any) -> list[str]:
    """The two shell commands that make the same model by hand."""
    train, finetune = trial_args(env_id, setting, seed, run_dir, **kw)
    return [shlex.join(["s2loop", "train", *train]), shlex.join(["s2loop", "finetune", *finetune])]


def parse_trial(train_args: list[str], ft_args: list[str]) -> tuple[Any, Any]:
    """The typed configs of ``s2loop train`` and ``s2loop finetune`` from their arguments,
    parsed as the commands parse them; bad options raise :class:`SweepError`."""
    from agent.cli import parse_options
    from agent.options import FinetuneConfig, TrainConfig

    parsed = []
    for config_type, args, prog, required in (
        (TrainConfig, train_args, "s2loop train", ("out",)),
        (FinetuneConfig, ft_args, "s2loop finetune", ("run", "out")),
    ):
        try:
            parsed.append(parse_options(config_type, args, prog, required))
        except SystemExit:  # tyro printed why
            raise SweepError(f"{prog} refuses: {shlex.join(args)}") from None
    return parsed[0], parsed[1]


def train_and_finetune(
    env_id: str,
    setting: Setting,
    seed: int,
    run_dir: Path,
    *,
    smoke: bool = False,
    threads: int = 1,
    params: Mapping[str, Any] | None = None,
    found_by: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``s2loop train`` then ``s2loop finetune`` in this process; what the model scored.
    ``found_by`` (the sweep's command and the trial) goes into the model's provenance."""
    from agent.pipeline import finetune_run, train_run

    train_args, ft_args = trial_args(
        env_id, setting, seed, run_dir, smoke=smoke, threads=threads, params=params
    )
    cfg, ft_cfg = parse_trial(train_args, ft_args)
    train_run(cfg, command=shlex.join(["s2loop", "train", *train_args]))
    prov = finetune_run(
        ft_cfg, command=shlex.join(["s2loop", "finetune", *ft_args]), found_by=found_by
    )
    ev = prov["evaluation"]
    return {
        "return_8bit": float(ev["emulator"]["mean"]),
        "return_float": float(ev["float"]["mean"]),
        "agreement": ev.get("agreement_float_vs_8bit"),
        "episodes": int(ev["episodes"]),
        "eval_repeats": int(ft_cfg.eval_repeats),
        "artifact": str(ft_cfg.out),
    }


# ------------------------------------------------------------------ trials on Ray


def _where() -> dict[str, Any]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


def _threads(cpus: float) -> int:
    return max(1, math.floor(cpus))


def _found_by(t: dict[str, Any], trial: str) -> dict[str, str] | None:
    """The sweep's command line and this trial, for the model's provenance and card."""
    return {"sweep": t["sweep"], "trial": trial} if t.get("sweep") else None


def grid_trial(config: dict[str, Any]) -> None:
    """Tune trainable of a grid trial (``config["trial"]``: env, setting, seed, ...)."""
    from ray import tune

    t = config["trial"]
    start = time.perf_counter()
    run_dir = Path(t["runs"]) / t["env"] / t["setting"] / f"seed{t['seed']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    res = train_and_finetune(
        t["env"],
        SETTINGS_BY_KEY[t["setting"]],
        t["seed"],
        run_dir,
        smoke=t["smoke"],
        threads=_threads(t["cpus"]),
        found_by=_found_by(t, f"{t['env']} {t['setting']} seed {t['seed']}"),
    )
    tune.report({**res, **_where(), "run_dir": str(run_dir), "wall_s": time.perf_counter() - start})


def search_trial(config: dict[str, Any]) -> None:
    """Tune trainable of a search trial: one training per seed, the mean 8-bit return."""
    from ray import tune

    t = config["trial"]
    params = dict(config["params"])
    trial_id = tune.get_context().get_trial_id()
    start = time.perf_counter()
    per_seed = []
    for seed in t["seeds"]:
        run_dir = Path(t["runs"]) / "search" / trial_id / f"seed{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        per_seed.append(
            train_and_finetune(
                t["env"],
                SETTINGS_BY_KEY[t["setting"]],
                seed,
                run_dir,
                smoke=t["smoke"],
                threads=_threads(t["cpus"]),
                params=params,
                found_by=_found_by(t, f"{trial_id} seed {seed}"),
            )
        )
    returns = [r["return_8bit"] for r in per_seed]
    tune.report(
        {
            OBJECTIVE: sum(returns) / len(returns),
            "per_seed": per_seed,
            **_where(),
            "wall_s": time.perf_counter() - start,
        }
    )


def search_space(recipe: str) -> dict[str, Any]:
    """Tune domains of :data:`agent.options.SEARCH_SPACE` for ``recipe``."""
    from ray import tune

    from agent.options import SEARCH_SPACE

    out = {}
    for name, r in SEARCH_SPACE[recipe].items():
        if r.integer:
            # tune's randint excludes its upper bound; the declared range includes it
            out[name] = (tune.lograndint if r.log else tune.randint)(int(r.low), int(r.high) + 1)
        else:
            out[name] = (tune.loguniform if r.log else tune.uniform)(r.low, r.high)
    return out


def _lows(recipe: str) -> dict[str, Any]:
    from agent.options import SEARCH_SPACE

    return {k: int(r.low) if r.integer else r.low for k, r in SEARCH_SPACE[recipe].items()}


@dataclass(frozen=True)
class SweepConfig:
    """What ``s2loop sweep`` was asked for: each field is one of its options (lists also
    as ``a,b,c``; ``--settings all``: every setting)."""

    #: sweep folder: Tune's state, the run folders (OUT/runs/ENV/SETTING/seedN) and
    #: results.parquet; on a cluster, storage every node mounts at the same path
    out: Path = Path("runs/sweep")
    env: tuple[str, ...] = ENVS  # Gymnasium ids
    settings: tuple[str, ...] = tuple(SETTINGS_BY_KEY)  # setting names of bench/RECIPES.md
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # training seeds
    smoke: bool = False  # every trial at a tiny budget (a test, or a cluster check)
    #: HOST:PORT of a running Ray cluster (nothing of ours is started); default: a local
    #: Ray for this sweep
    address: str | None = None
    cpus_per_trial: float = 1.0  # CPUs Ray reserves for each trial
    #: 'optuna': search the options of one setting (objective: the mean 8-bit return over
    #: --seeds) instead of running the grid
    search: str | None = None
    trials: int = 20  # --search: option sets to try

    @property
    def name(self) -> str:
        return "search" if self.search else "grid"

    def trials_of_grid(self, command: str = "") -> list[dict[str, Any]]:
        """Seed-major, so a grid stopped early has every setting with the seeds done.
        ``command``: the sweep's command line, recorded in each model's provenance."""
        runs = str((self.out / "runs").resolve())
        return [
            {"env": e, "setting": s, "seed": seed, "smoke": self.smoke, "runs": runs,
             "cpus": self.cpus_per_trial, "sweep": command}
            for seed in self.seeds for e in self.env for s in self.settings
        ]  # fmt: skip

    def spec(self) -> dict[str, Any]:
        """What must match for a restart with the same ``--out`` to resume this sweep."""
        keep = ("env", "settings", "seeds", "smoke", "search", "trials")
        # "envs": the key of the environments in every sweep.json written so far
        d = {"envs" if k == "env" else k: v for k, v in asdict(self).items() if k in keep}
        return json.loads(json.dumps(d))


def check(cfg: SweepConfig) -> None:
    unknown = sorted(set(cfg.settings) - set(SETTINGS_BY_KEY))
    if unknown:
        raise SweepError(f"unknown settings {unknown}; choose from {', '.join(SETTINGS_BY_KEY)}")
    if not cfg.env or not cfg.settings or not cfg.seeds:
        raise SweepError("--env, --settings and --seeds need at least one value each")
    strange = sorted(set(cfg.env) - set(ENVS))
    if strange:
        raise SweepError(f"no presets for {strange}; the settings exist for {', '.join(ENVS)}")
    if cfg.cpus_per_trial <= 0:
        raise SweepError("--cpus-per-trial must be > 0")
    if cfg.search is not None:
        if cfg.search != "optuna":
            raise SweepError(f"--search {cfg.search!r}: only 'optuna' is supported")
        if len(cfg.env) != 1 or len(cfg.settings) != 1:
            raise SweepError("--search tunes one setting on one environment: give one of each")
        if cfg.trials < 1:
            raise SweepError("--trials must be >= 1")
    for env_id in cfg.env:  # every trial's options, parsed as the commands will
        for key in cfg.settings:
            setting = SETTINGS_BY_KEY[key]
            params = _lows(setting.recipe) if cfg.search else None
            args = trial_args(env_id, setting, 0, cfg.out / "runs", smoke=cfg.smoke, params=params)
            parse_trial(*args)
    spec_path = cfg.out / SPEC_NAME
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old.get(cfg.name) not in (None, cfg.spec()):
            raise SweepError(
                f"{cfg.out} holds a different {cfg.name} ({old[cfg.name]}); to resume it give "
                "the same options, or start a new sweep with another --out"
            )


def run_sweep(cfg: SweepConfig, command: str = "", log=print) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; write and return its rows."""
    import ray
    from ray import tune

    check(cfg)
    out = cfg.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / SPEC_NAME
    specs = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    specs[cfg.name] = cfg.spec()
    specs.setdefault("commands", {})[cfg.name] = command
    spec_path.write_text(json.dumps(specs, indent=1))

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=False)  # theirs: start nothing
    else:
        # "local": always a Ray of our own, even if another runs on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        log(f"ray: {len(ray.nodes())} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs")
        trainable = tune.with_resources(
            grid_trial if cfg.search is None else search_trial, {"cpu": cfg.cpus_per_trial}
        )
        path = out / cfg.name
        if tune.Tuner.can_restore(str(path)):
            log(f"resuming {path}")
            tuner = tune.Tuner.restore(str(path), trainable, restart_errored=True)
        else:
            tuner = tune.Tuner(trainable, **_tuner_args(cfg, out, command))
        grid = tuner.fit()
        rows = _rows(grid, cfg)
    finally:
        ray.shutdown()
    _write_rows(rows, out / (SEARCH_RESULTS_NAME if cfg.search else RESULTS_NAME))
    return rows


def _trial_name(trial) -> str:
    t = trial.config["trial"]
    if "setting" in t and "seed" in t:
        return f"{t['env']}_{t['setting']}_seed{t['seed']}"
    return f"trial_{trial.trial_id}"


def _tuner_args(cfg: SweepConfig, out: Path, command: str) -> dict[str, Any]:
    from ray import tune

    run_config = tune.RunConfig(
        name=cfg.name,
        storage_path=str(out),
        failure_config=tune.FailureConfig(max_failures=1),  # retried once, then reported
        log_to_file=True,  # each trial's stdout and stderr in its folder under OUT/NAME
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1,
    )
    if cfg.search is None:
        return {
            "param_space": {"trial": tune.grid_search(cfg.trials_of_grid(command))},
            "tune_config": tune.TuneConfig(
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
            ),
            "run_config": run_config,
        }
    from ray.tune.search.optuna import OptunaSearch

    setting = SETTINGS_BY_KEY[cfg.settings[0]]
    trial = {"env": cfg.env[0], "setting": setting.key, "seeds": list(cfg.seeds),
             "smoke": cfg.smoke, "runs": str(out / "runs"), "cpus": cfg.cpus_per_trial,
             "sweep": command}  # fmt: skip
    return {
        "param_space": {"trial": trial, "params": search_space(setting.recipe)},
        "tune_config": tune.TuneConfig(
            search_alg=OptunaSearch(metric=OBJECTIVE, mode="max", seed=0),
            num_samples=cfg.trials,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        "run_config": run_config,
    }


_COLUMNS = ("return_8bit", "return_float", "agreement", "episodes", "eval_repeats", "artifact",
            "run_dir", "node_id", "hostname", "wall_s")  # fmt: skip


def _rows(grid, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial (per trial and seed in a search). ``status``: ``ok``, ``error``
    (failed twice) or ``pending`` (not run or not finished: the sweep was stopped)."""
    rows, seen = [], set()
    for result in grid:
        if result.config is None:  # never started: a grid's pending trials are added below
            continue
        t, m = result.config["trial"], result.metrics or {}
        ok = result.error is None and ("artifact" in m or OBJECTIVE in m)
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1]}"
        base = {
            "env": t["env"],
            "setting": t["setting"],
            "smoke": bool(t["smoke"]),
            "cpus": float(t["cpus"]),
            "trial_id": m.get("trial_id") or Path(result.path).name,
            "status": "ok" if ok else "error" if error else "pending",
            "error": error and error[:500],
        }
        if cfg.search is None:
            seen.add((t["env"], t["setting"], int(t["seed"])))
            rows.append({**base, "seed": int(t["seed"]), **{k: m.get(k) for k in _COLUMNS}})
            continue
        params = json.dumps(dict(result.config["params"]))
        for seed, r in zip(t["seeds"], m.get("per_seed") or [None] * len(t["seeds"]), strict=True):
            row = {**base, "seed": int(seed), "params": params, OBJECTIVE: m.get(OBJECTIVE)}
            row |= {k: (r or {}).get(k) for k in _COLUMNS}
            row |= {k: m.get(k) for k in ("node_id", "hostname", "wall_s")}
            rows.append(row)
    if cfg.search is None:
        for t in cfg.trials_of_grid():
            if (t["env"], t["setting"], t["seed"]) not in seen:
                rows.append(
                    {"env": t["env"], "setting": t["setting"], "smoke": cfg.smoke,
                     "cpus": float(t["cpus"]), "trial_id": None, "status": "pending",
                     "error": None, "seed": t["seed"], **dict.fromkeys(_COLUMNS)}
                )  # fmt: skip
    return sorted(rows, key=lambda r: (r["env"], r["setting"], r["trial_id"] or "", r["seed"]))


def _write_rows(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep's ``results.parquet`` (or ``search.parquet``)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
