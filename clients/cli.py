"""``s2loop run`` and ``s2loop demo``. ``run``'s options are generated from the typed
loop configuration (:class:`clients.config.LoopConfig`, standard library only), so a
field added there is an option here with its own help, default and type; heavier imports
stay inside the commands."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from s2loop.commands import generated


def _field_type(config_type: type, f: dataclasses.Field) -> Any:
    """An option field's annotation as a type (the config module's names resolve it)."""
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[config_type.__module__]))


def _nested(f: dataclasses.Field) -> type | None:
    """The config type of a field that holds a nested config (made by its factory)."""
    factory = f.default_factory
    return factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None


def options_from(config_type: type, prefix: str = "") -> list[inspect.Parameter]:
    """One keyword parameter (a ``typer.Option``) per field of ``config_type`` with
    ``cli`` metadata, named ``PREFIX + field``; nested config fields contribute theirs
    under ``FIELD_``."""
    params = []
    for f in dataclasses.fields(config_type):
        meta = dict(f.metadata.get("cli", {}))
        if not meta:
            if nested := _nested(f):
                params += options_from(nested, prefix=f"{prefix}{f.name}_")
            continue
        kind = _field_type(config_type, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        decls = [meta.pop("flag")] if "flag" in meta else []
        option = typer.Option(default, *decls, **meta)
        params.append(
            inspect.Parameter(
                prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind
            )
        )
    return params


def config_from(config_type: type, values: dict[str, Any], prefix: str = "") -> Any:
    """``config_type`` from the values of :func:`options_from`'s parameters (nested
    configs built the same way; fields without options keep their defaults)."""
    kwargs = {}
    for f in dataclasses.fields(config_type):
        nested = _nested(f)
        if f.metadata.get("cli"):
            kwargs[f.name] = values[prefix + f.name]
        elif nested and options_from(nested, f"{prefix}{f.name}_"):
            kwargs[f.name] = config_from(nested, values, f"{prefix}{f.name}_")
    return config_type(**kwargs)


def with_options(params: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Give a ``**values`` command function the signature typer reads its options from."""

    def wrap(fn: Callable) -> Callable:
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return fn

    return wrap


def register(app: typer.Typer) -> None:
    from clients.config import LoopConfig, RunCommand

    @app.command("run")
    @with_options(options_from(LoopConfig) + options_from(RunCommand))
    def run(out: Path | None, wait: float, progress: bool, **values: Any) -> None:
        """Drive seeded episodes through the service; write steps.csv, summary.json, PNGs."""
        from rich.console import Console

        from clients.report import summary_table
        from clients.session import PreflightError, run_and_report
        from clients.view import ViewUnavailable

        console = Console()
        try:
            cfg = config_from(LoopConfig, values)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{stamp}-{cfg.model}-{cfg.transport}"
        try:
            _, summary = run_and_report(
                cfg, out, console=console, progress=progress, wait_s=wait, hold_view=True
            )
        except (PreflightError, ViewUnavailable) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        console.print(summary_table([summary]))
        if cfg.clients > 1:
            console.print(
                f"{cfg.clients} clients: {summary['steps']} steps in {summary['wall_s']:.2f}s = "
                f"{summary['steps_per_s']:,.0f} steps/s aggregate, "
                f"{summary['error_steps']} steps without an action"
            )
        console.print(f"results in {out}/ (steps.csv, summary.json, latency.png, returns.png)")
        if summary["aborted"]:
            for line in summary["aborted"]:
                console.print(f"[red]aborted:[/] {line}")
            raise typer.Exit(1)

    @generated(app, "demo", "clients.demo:DemoConfig", prog="s2loop demo")
    def demo(cfg) -> None:
        """Start a server with the shipped models on the emulator, run CartPole-v1 and
        Acrobot-v1 over HTTP and WebSocket, print the table, write plots, stop the server."""
        from rich.console import Console

        from clients.demo import ServerFailed, run_demo
        from clients.report import summary_table
        from clients.session import PreflightError

        try:
            cfg.check()
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        console = Console()
        out = cfg.out
        try:
            outcome = run_demo(cfg, console=console)
        except (ServerFailed, PreflightError) as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            raise typer.Exit(1) from None
        for line in outcome.skipped:
            console.print(f"[yellow]skipped[/] {line}")
        if not outcome.runs:
            console.print("[red]nothing ran[/]")
            raise typer.Exit(1)
        console.print(summary_table([r.summary for r in outcome.runs], title="s2loop demo"))
        for r in outcome.runs:
            s = r.summary
            if s["solved"] is not None:
                verdict = "solved" if s["solved"] else "NOT solved"
                console.print(
                    f"{s['env_id']} over {s['transport']}: {verdict} "
                    f"(mean return {s['returns']['mean']:.1f}, threshold {s['reward_threshold']:g})"
                )
        console.print(
            f"plots: {out}/latency.png, {out}/returns.png; per run: {out}/<model>-<transport>/; "
            f"server log: {outcome.server_log} (exit code {outcome.server_exit_code})"
        )
        console.print(
            "watch a run step by step (frames, Q-values, spikes): pip install "
            "'s2loop\\[view]', then s2loop run --view --trace (see the README)"
        )
        if any(r.summary["aborted"] for r in outcome.runs):
            raise typer.Exit(1)
