"""The ``s2loop`` command. Each package registers its own subcommands from a
``cli`` module that imports only typer and the standard library at module
level, so ``s2loop serve`` never pays for (or needs) torch."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="s2loop",
    help="Spiking Q-networks on SpiNNaker2 (or its emulator): train, serve, drive, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# package.cli modules that expose ``register(app)``; missing ones are skipped so a
# partial install (e.g. the serving image) still gets the commands it has.
_COMMAND_MODULES = (
    "hw.cli",
    "agent.cli",
    "agent.nir_cli",
    "agent.sweep_cli",
    "service.cli",
    "clients.cli",
    "bench.cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_all()


#: options whose value may be left out (``s2loop run --view``), and what that means; typer
#: has no optional option values, so they are filled in before it parses
OPTIONAL_VALUES = {"--view": "desktop"}


def fill_optional_values(argv: list[str]) -> list[str]:
    """``argv`` with the value of a bare :data:`OPTIONAL_VALUES` option filled in (one is
    bare when nothing or another option follows it)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


def main() -> None:
    """``s2loop``: a model file that is missing or not a model is the user's input, so it
    ends in one line on stderr and exit status 2, not a traceback."""
    from hw.artifact import ArtifactError

    try:
        app(args=fill_optional_values(sys.argv[1:]))
    except ArtifactError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
