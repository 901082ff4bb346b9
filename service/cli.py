"""``s2loop serve``: imports only typer and the standard library at module level."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        models: Path | None = typer.Option(
            None, help="folder of *.s2l models [env S2LOOP_MODELS; default: the shipped models/]"
        ),
        backend: str | None = typer.Option(
            None,
            help="emulator | spinnaker2 | reference | module:Class [env S2LOOP_BACKEND; "
            "default emulator]",
        ),
        fallback: str | None = typer.Option(
            None, help="emulator | none [env S2LOOP_FALLBACK; default emulator]"
        ),
        host: str | None = typer.Option(None, help="[env S2LOOP_HOST; default 127.0.0.1]"),
        port: int | None = typer.Option(None, help="[env S2LOOP_PORT; default 8000]"),
        workers: int | None = typer.Option(
            None,
            help="server processes, each with its own copy of the models [env S2LOOP_WORKERS; "
            "default 1; the board allows only 1]",
        ),
        board_eth_ip: str | None = typer.Option(
            None, help="SpiNNaker2 board address [env S2LOOP_BOARD_ETH_IP]"
        ),
        sys_tick_in_s: float | None = typer.Option(
            None, help="chip tick, seconds [env S2LOOP_SYS_TICK_IN_S; default 0.001]"
        ),
        deadline_ms: float | None = typer.Option(
            None, help="per-request deadline [env S2LOOP_DEADLINE_MS; default 1000]"
        ),
        queue_size: int | None = typer.Option(
            None, help="calls that may wait for a busy backend [env S2LOOP_QUEUE_SIZE]"
        ),
        log_level: str | None = typer.Option(None, help="[env S2LOOP_LOG_LEVEL; default info]"),
    ) -> None:
        """Run the control server (HTTP + WebSocket). Every setting also reads S2LOOP_<NAME>;
        see service/settings.py for the full list (reload token, body limit, ...)."""
        import uvicorn

        from service.logs import configure_logging
        from service.settings import Settings

        given = {
            "models": models,
            "backend": backend,
            "fallback": fallback,
            "host": host,
            "port": port,
            "workers": workers,
            "board_eth_ip": board_eth_ip,
            "sys_tick_in_s": sys_tick_in_s,
            "deadline_ms": deadline_ms,
            "queue_size": queue_size,
            "log_level": log_level,
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        try:
            settings = Settings(**overrides)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if settings.workers > 1 and settings.backend == "spinnaker2":
            raise typer.BadParameter("the board runs one network at a time: use --workers 1")
        configure_logging(settings.log_level, settings.log_json)
        common = settings.uvicorn_options()
        if settings.workers == 1:
            from service.app import create_app

            uvicorn.run(create_app(settings), **common)
            return
        # Worker processes build their own app from the environment: pass the options on.
        for key, value in overrides.items():
            os.environ[f"S2LOOP_{key.upper()}"] = str(value)
        uvicorn.run(
            "service.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
