"""Commands generated from typed configs: a command's options are the fields of its
dataclass, parsed by tyro (each field's doc or comment is its help, its default the
option's default), so no option is declared by hand. Only typer and the standard library
at module level: tyro is imported when a command runs."""

from __future__ import annotations

import inspect
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

#: typer hands every argument, ``--help`` included, to tyro
PASS_THROUGH: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}

Config = TypeVar("Config")


def command_line() -> str:
    """The command as it was typed (for the pages and provenance it writes)."""
    return shlex.join(["s2loop", *sys.argv[1:]])


def parse(
    config_type: type[Config],
    args: list[str],
    prog: str,
    *,
    default: Config | None = None,
    positional: bool = False,
    description: str | None = None,
) -> Config:
    """``config_type`` from ``args``; ``default``: the values a preset sets first;
    ``positional``: required fields are positional arguments (``s2loop eval MODEL``)."""
    import tyro

    return tyro.cli(
        config_type,
        args=args,
        prog=prog,
        default=default,
        description=inspect.cleandoc(description) if description else None,
        config=(tyro.conf.PositionalRequiredArgs,) if positional else (),
    )


def generated(
    app: typer.Typer,
    name: str,
    config: str,
    *,
    prog: str,
    preset: Callable[[Any, list[str]], Any] | None = None,
    positional: bool = False,
    setup: Callable[[], None] | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register ``run(config)`` as ``app``'s command ``name``, its options generated from
    the dataclass ``config`` (``"module:Class"``, imported when the command runs, so that
    ``s2loop`` starts without it). ``preset(config_type, args)``: the defaults to parse
    over, chosen from the raw arguments (``--quick`` picks the quick preset, and is itself
    a field); ``setup()``: runs first (process settings a measurement needs)."""

    def register(run: Callable[[Any], None]) -> Callable[[Any], None]:
        def command(ctx: typer.Context) -> None:
            import importlib

            if setup is not None:
                setup()
            module, cls = config.split(":")
            config_type = getattr(importlib.import_module(module), cls)
            default = preset(config_type, ctx.args) if preset is not None else None
            run(parse(config_type, ctx.args, prog, default=default, positional=positional,
                      description=run.__doc__))  # fmt: skip

        command.__doc__ = f"{run.__doc__}\n\nAll options: {prog} --help."
        command.__name__ = run.__name__
        app.command(name, **PASS_THROUGH)(command)
        return run

    return register
