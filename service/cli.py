"""``s2loop serve``: its options are generated from :class:`service.settings.Settings`.
Imports only typer and the standard library at module level."""

from __future__ import annotations

import gc
import tempfile

import typer


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
