"""``s2loop`` subcommands of the hardware layer (imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("emulate")
    def emulate(
        model: str = typer.Argument(..., help="model name (models/NAME.s2l) or path"),
        observation: list[float] = typer.Argument(..., help="one observation, e.g. 0 0 0.05 0"),
    ) -> None:
        """Run one observation through a model on the emulator and print the result."""
        import json

        import numpy as np

        from hw.artifact import load_artifact
        from hw.emulator import EmulatorBackend

        art = load_artifact(model)
        with EmulatorBackend() as backend:
            backend.load(art)
            res = backend.infer(art.name, np.asarray([observation], np.float32))
        typer.echo(
            json.dumps(
                {
                    "model": art.name,
                    "action": int(res.actions[0]),
                    "action_name": art.action_names[int(res.actions[0])],
                    "q_values": [float(x) for x in res.q_values[0]],
                    "ticks": res.ticks,
                    "spikes_per_layer": [int(x) for x in res.spikes_per_layer[0]],
                    "synaptic_events": int(res.synaptic_events[0]),
                }
            )
        )

    @app.command("make-random-model")
    def make_random_model(
        out: Path = typer.Argument(..., help="where to write the .s2l file"),
        seed: int = typer.Option(0),
        ticks: int = typer.Option(16),
    ) -> None:
        """Write an untrained random artifact (for tests and benchmarks, not a policy)."""
        from hw.artifact import save_artifact
        from hw.synthetic import random_artifact

        save_artifact(random_artifact(seed=seed, ticks=ticks, name=out.stem), out)
        typer.echo(f"wrote {out}")
