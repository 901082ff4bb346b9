"""``s2loop`` subcommands of the hardware layer (imports stay inside the commands)."""

from __future__ import annotations

from pathlib import Path

import typer


def _runs(values: list[int]) -> str:
    """``[250, 250, 100]`` -> ``250x2,100`` (compact list for tables)."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        parts.append(f"{values[i]}x{j - i}" if j - i > 1 else str(values[i]))
        i = j
    return ",".join(parts)


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

    @app.command("map")
    def map_model(
        model: str = typer.Argument(..., help="model name (models/NAME.s2l) or path"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
        neurons_per_pe: int = typer.Option(250, help="neurons one PE holds"),
        bytes_per_synapse: int = typer.Option(4, help="bytes one stored synapse costs"),
        sys_tick: float = typer.Option(1e-3, help="tick length in seconds"),
    ) -> None:
        """Place a model on SpiNNaker2 PEs; print PEs, copies per chip, time and energy."""
        import json

        from hw.artifact import load_artifact
        from hw.mapping import ChipSpec, MappingError, map_network

        chip = ChipSpec(
            neurons_per_pe=neurons_per_pe,
            bytes_per_synapse=bytes_per_synapse,
            sys_tick_s=sys_tick,
        )
        art = load_artifact(model)
        try:
            rep = map_network(art, chip)
        except MappingError as exc:
            typer.echo(f"does not fit: {exc}", err=True)
            raise typer.Exit(1) from None
        if as_json:
            typer.echo(json.dumps(rep.to_dict(), indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{art.name}: placement on one SpiNNaker2 chip")
        for col in ("population", "model", "neurons", "PEs", "neurons/PE", "synapses", "max B/PE"):
            table.add_column(col, justify="left" if col in ("population", "model") else "right")
        for p in rep.populations:
            table.add_row(
                p.name,
                p.neuron_model,
                str(p.size),
                str(p.pes),
                _runs(p.neurons_per_pe),
                str(p.synapses),
                str(p.max_synapse_bytes_per_pe),
            )
        console = Console()
        console.print(table)
        console.print(
            f"PEs used {rep.pes_used}/{chip.usable_pes}  copies per chip {rep.copies_per_chip}  "
            f"chip time {rep.chip_time_s * 1e3:.3g} ms/inference ({rep.ticks} ticks)"
        )
        console.print(
            f"energy (estimate): {rep.energy_j * 1e3:.3g} mJ alone, "
            f"{rep.energy_batched_j * 1e3:.3g} mJ per inference with all copies busy, "
            f"{rep.energy_dynamic_j * 1e6:.3g} uJ above idle"
        )

    @app.command("infer")
    def infer(
        model: str = typer.Argument(..., help="model name (models/NAME.s2l) or path"),
        observation: list[float] = typer.Argument(..., help="one observation, e.g. 0 0 0.05 0"),
        backend: str = typer.Option("emulator", help="emulator, spinnaker2 or module:Class"),
        eth_ip: str | None = typer.Option(None, help="SpiNNaker2 board address (spinnaker2)"),
        sys_tick: float = typer.Option(1e-3, help="tick length in seconds (spinnaker2)"),
        seed: int | None = typer.Option(
            None, help="Poisson-coded models: seed of the input spikes (default: fresh draws)"
        ),
    ) -> None:
        """Run one observation through a model on any backend and print the result as JSON."""
        import json

        import numpy as np

        from hw.artifact import load_artifact
        from hw.backend import BackendError, create_backend

        art = load_artifact(model)
        settings = {}
        if backend == "spinnaker2":
            settings = {"eth_ip": eth_ip, "sys_tick_in_s": sys_tick}
        try:
            with create_backend(backend, **settings) as be:
                be.load(art)
                seeds = None if seed is None else np.array([seed])
                res = be.infer(art.name, np.asarray([observation], np.float32), seeds)
        except (BackendError, ValueError) as exc:
            typer.echo(f"backend {backend!r} failed: {exc}", err=True)
            raise typer.Exit(1) from None
        action = int(res.actions[0])
        typer.echo(
            json.dumps(
                {
                    "model": art.name,
                    "backend": res.backend,
                    "action": action,
                    "action_name": art.action_names[action],
                    "q_values": [float(x) for x in res.q_values[0]],
                    "ticks": res.ticks,
                    "spikes_per_layer": [int(x) for x in res.spikes_per_layer[0]],
                    "synaptic_events": int(res.synaptic_events[0]),
                    "compute_us": round(res.compute_us, 1),
                    "seed": None if res.seeds is None else int(res.seeds[0]),
                    "extra": res.extra,
                }
            )
        )
