"""``s2loop serve``: its options are generated from :class:`service.settings.Settings`.
Imports only typer and the standard library at module level."""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path

import typer

from s2loop.commands import generated


def freeze_after_start() -> None:
    """Process-wide policy of a serving process, once the models are loaded.

    Everything alive now (libraries, models, routes: ~150k objects) lives as long as
    the server. Freezing it keeps the cyclic GC from rescanning it: a full collection
    took ~80 ms here, a stall long enough to miss a 200 Hz deadline."""
    gc.collect()
    gc.freeze()


def _env_file(settings: object) -> str:
    """The settings as an env file uvicorn loads into each worker process (the workers
    build their app from the environment, like any S2LOOP_* deployment)."""
    lines = []
    for key, value in settings.model_dump(mode="json").items():  # type: ignore[attr-defined]
        if value is not None:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"S2LOOP_{key.upper()}={text}")
    with tempfile.NamedTemporaryFile("w", suffix=".env", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    return f.name


def register(app: typer.Typer) -> None:
    register_replay(app)

    @app.command(
        "serve",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def serve(ctx: typer.Context) -> None:
        """Run the control server (HTTP + WebSocket). Every option also reads
        S2LOOP_<NAME>; all of them: s2loop serve --help."""
        import uvicorn
        from pydantic import ValidationError

        from service.logs import configure_logging
        from service.settings import Settings

        try:
            settings = Settings(_cli_parse_args=ctx.args)
        except ValidationError as exc:
            problems = "; ".join(
                f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                for e in exc.errors()
            )
            raise typer.BadParameter(problems) from None
        if settings.workers > 1 and settings.backend == "spinnaker2":
            raise typer.BadParameter("the board runs one network at a time: use --workers 1")
        try:  # what cannot work is one line now, not a traceback from a worker later
            settings.check_usable()
        except ValueError as exc:
            typer.echo(f"s2loop serve: {exc}", err=True)
            raise typer.Exit(2) from None
        configure_logging(settings.log_level, settings.log_json)
        common = settings.uvicorn_options()
        if settings.workers == 1:
            from service.app import create_app

            uvicorn.run(create_app(settings, on_started=freeze_after_start), **common)
            return
        uvicorn.run(
            "service.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            env_file=_env_file(settings),
            **common,
        )


def _view_recording(
    record_dir: Path, view: str, port: int, models: Path | None, replayed: dict
) -> None:
    """``s2loop replay --view``: the recording in Rerun (clients.view); a web viewer
    serves on until Ctrl-C."""
    import contextlib
    import time

    from hw.artifact import ArtifactError, load_artifact

    try:
        from clients.view import (
            ViewUnavailable,
            close_stream,
            log_recording,
            open_stream,
            parse_target,
        )

        target = parse_target(view, port)
    except (ValueError, ImportError) as exc:
        raise typer.BadParameter(str(exc)) from None
    env_ids = {}
    for name in replayed:
        with contextlib.suppress(ArtifactError, FileNotFoundError, ValueError):
            env_ids[name] = load_artifact(name, models).env_id
    try:
        rec, where = open_stream(target, "s2loop-replay", f"record-{record_dir.resolve().name}")
    except ViewUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        rows = log_recording(rec, record_dir, env_ids=env_ids, replayed=replayed)
        typer.echo(f"Rerun view of {rows} rows: {where}", err=True)
        if target.kind == "web":
            typer.echo("the web viewer serves on; Ctrl-C to stop", err=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:  # sleeps, so that Ctrl-C is seen at once
                    time.sleep(1)
    finally:
        close_stream(rec)


@dataclass(frozen=True)
class ReplayOptions:
    """What ``s2loop replay`` runs again, on what, and how it shows the comparison."""

    record_dir: Path
    """a flight-recorder folder (S2LOOP_RECORD_DIR)"""
    model: str | None = None
    """replay with this model (name or .s2l path) instead of the recorded one"""
    backend: str = "emulator"
    """emulator | reference | spinnaker2 | module:Class"""
    models: Path | None = None
    """where the recorded models are (default: S2LOOP_MODELS or models/)"""
    min_agreement: float = 0.0
    """exit 1 when any model's action agreement is below this (0 to 1)"""
    plot: Path | None = None
    """PNG of agreement per episode and Q differences (default: in RECORD_DIR)"""
    eth_ip: str | None = None
    """board address (spinnaker2)"""
    view: str | None = None
    """log the recording to Rerun, each episode on its timeline, the live, shadow and
    replayed answers side by side: --view spawns the desktop viewer, --view web serves the
    web viewer (--view-port), --view FILE.rrd saves a recording"""
    view_port: int = 9090
    """port of the web viewer (--view web), 1 to 65535"""


def register_replay(app: typer.Typer) -> None:
    @generated(app, "replay", "service.cli:ReplayOptions", prog="s2loop replay", positional=True)
    def replay_command(opts: ReplayOptions) -> None:
        """Run a recording's observations again and compare actions and Q-values with it."""
        import json

        from service.replay import plot as plot_report
        from service.replay import replay
        from service.settings import BACKEND_ALIASES

        if not 0.0 <= opts.min_agreement <= 1.0:
            raise typer.BadParameter("must lie in [0, 1]", param_hint="--min-agreement")
        if not 1 <= opts.view_port <= 65535:
            raise typer.BadParameter("must lie in [1, 65535]", param_hint="--view-port")
        record_dir, models, backend = opts.record_dir, opts.models, opts.backend
        options = {"eth_ip": opts.eth_ip} if backend == "spinnaker2" else {}
        try:
            report = replay(
                record_dir,
                model=opts.model,
                backend=BACKEND_ALIASES.get(backend, backend),
                backend_options=options,
                models_dir=models,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from None
        path = plot_report(report, opts.plot or record_dir / "replay.png")
        replayed = {name: m.pop("_replayed") for name, m in report["models"].items()}
        for m in report["models"].values():
            m.pop("_q_diff")
        typer.echo(json.dumps({**report, "plot": str(path)}, indent=2))
        if opts.view is not None:
            _view_recording(record_dir, opts.view, opts.view_port, models, replayed)
        if report["agreement"] is not None and report["agreement"] < opts.min_agreement:
            typer.echo(
                f"agreement {report['agreement']:.4f} is below --min-agreement "
                f"{opts.min_agreement}",
                err=True,
            )
            raise typer.Exit(1)
