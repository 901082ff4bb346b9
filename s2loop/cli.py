"""The ``s2loop`` command. Each package registers its own subcommands from a
``cli`` module that imports only typer and the standard library at module
level, so ``s2loop serve`` never pays for (or needs) torch."""

from __future__ import annotations

import importlib

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
