"""``s2loop sweep``: the recipe grid, or a search, on Ray Tune (:mod:`agent.sweep`).
Only typer and the standard library at module level."""

from __future__ import annotations

import typer

from s2loop.commands import PASS_THROUGH, command_line, parse

#: options that take a list, which the README and RECIPES.md write as ``a,b,c``
LISTS = ("--env", "--settings", "--seeds")


def comma_lists(args: list[str]) -> list[str]:
    """``args`` with each comma-separated value of a :data:`LISTS` option as separate
    values (``--seeds 0,1,2`` is ``--seeds 0 1 2``) and ``--settings all`` as every
    setting."""
    from agent.sweep import SETTINGS_BY_KEY

    out: list[str] = []
    option = None
    for arg in args:
        if arg.startswith("-"):
            option = arg if arg in LISTS else None
            out.append(arg)
        elif option is None:
            out.append(arg)
        elif option == "--settings" and arg == "all":
            out.extend(SETTINGS_BY_KEY)
        else:
            out.extend(x.strip() for x in arg.split(",") if x.strip())
    return out


def sweep(ctx: typer.Context) -> None:
    """Train and fine-tune every (env, setting, seed) on Ray Tune, or search one setting's
    options (--search optuna, objective the mean 8-bit return over --seeds). The same
    command with the same --out resumes: only unfinished trials run. All options: s2loop
    sweep --help."""
    from agent.sweep import SweepConfig, SweepError, check, run_sweep

    cfg = parse(SweepConfig, comma_lists(ctx.args), "s2loop sweep", description=sweep.__doc__)
    out, search = cfg.out, cfg.search
    try:
        check(cfg)
    except ValueError as exc:  # SweepError, or a preset the settings cannot take
        raise typer.BadParameter(str(exc)) from None
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        typer.echo("s2loop sweep needs Ray Tune: pip install 's2loop[train]'", err=True)
        raise typer.Exit(2) from None
    try:
        rows = run_sweep(cfg, command=command_line(), log=typer.echo)
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
    app.command("sweep", **PASS_THROUGH)(sweep)
