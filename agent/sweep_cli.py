"""``s2loop sweep``: the recipe grid, or a search, on Ray Tune (:mod:`agent.sweep`).
Only typer and the standard library at module level."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from agent.sweep import SETTINGS_BY_KEY  # the standard library only

ALL_SETTINGS = "all"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def sweep(
    out: Path = typer.Option(
        Path("runs/sweep"),
        "--out",
        help="sweep folder: Tune's state, the run folders (OUT/runs/ENV/SETTING/seedN) and "
        "results.parquet; on a cluster, storage every node mounts at the same path",
    ),
    env: str = typer.Option("CartPole-v1,Acrobot-v1", "--env", help="comma-separated env ids"),
    settings: str = typer.Option(
        ALL_SETTINGS,
        help=f"comma-separated setting names of bench/RECIPES.md ({', '.join(SETTINGS_BY_KEY)}), "
        "or 'all'",
    ),
    seeds: str = typer.Option("0,1,2,3,4", help="comma-separated training seeds"),
    smoke: bool = typer.Option(
        False, "--smoke", help="every trial at a tiny budget (a test, or a cluster check)"
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="HOST:PORT of a running Ray cluster (nothing of ours is started); "
        "default: a local Ray for this sweep",
    ),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs Ray reserves for each trial"),
    search: str | None = typer.Option(
        None, help="'optuna': search the options of one setting instead of running the grid"
    ),
    trials: int = typer.Option(20, help="--search: option sets to try"),
) -> None:
    """Train and fine-tune every (env, setting, seed) on Ray Tune, or search one setting's
    options (--search optuna, objective the mean 8-bit return over --seeds). The same
    command with the same --out resumes: only unfinished trials run."""
    from agent.sweep import SweepConfig, SweepError, check, run_sweep

    chosen = tuple(SETTINGS_BY_KEY) if settings == ALL_SETTINGS else _csv(settings)
    try:
        cfg = SweepConfig(
            out=out,
            envs=_csv(env),
            settings=chosen,
            seeds=tuple(int(s) for s in _csv(seeds)),
            smoke=smoke,
            address=address,
            cpus_per_trial=cpus_per_trial,
            search=search,
            trials=trials,
        )
        check(cfg)
    except ValueError as exc:  # SweepError, or a seed that is not a number
        raise typer.BadParameter(str(exc)) from None
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        typer.echo("s2loop sweep needs Ray Tune: pip install 's2loop[train]'", err=True)
        raise typer.Exit(2) from None
    command = shlex.join(["s2loop", *sys.argv[1:]])
    try:
        rows = run_sweep(cfg, command=command, log=typer.echo)
    except SweepError as exc:
        raise typer.BadParameter(str(exc)) from None
    failed = [r for r in rows if r["status"] == "error"]
    pending = [r for r in rows if r["status"] == "pending"]
    name = "search.parquet" if search else "results.parquet"
    ok = len(rows) - len(failed) - len(pending)
    typer.echo(f"{ok} ok, {len(failed)} failed, {len(pending)} not run; wrote {out / name}")
    for r in failed:
        typer.echo(f"FAILED {r['env']} {r['setting']} seed {r['seed']}: {r['error']}", err=True)
    if pending:
        typer.echo("stopped before the end: the same command resumes it", err=True)
    if search and rows:
        from agent.sweep import OBJECTIVE

        done = [r for r in rows if r[OBJECTIVE] is not None]
        if done:
            best = max(done, key=lambda r: r[OBJECTIVE])
            typer.echo(f"best mean 8-bit return {best[OBJECTIVE]:.1f}: {best['params']}")
    if failed or pending:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
