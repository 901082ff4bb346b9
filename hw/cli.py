"""``s2loop`` subcommands of the hardware layer; their options are the fields of
:mod:`hw.options` (imports stay inside the commands)."""

from __future__ import annotations

import typer

from s2loop.commands import generated


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
    @generated(app, "emulate", "hw.options:EmulateOptions", prog="s2loop emulate", positional=True)
    def emulate(opts) -> None:
        """Run one observation through a model on the emulator and print the result."""
        import json

        import numpy as np

        from hw.artifact import load_artifact
        from hw.emulator import EmulatorBackend

        art = load_artifact(opts.model)
        with EmulatorBackend() as backend:
            backend.load(art)
            res = backend.infer(art.name, np.asarray([opts.observation], np.float32))
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

    @generated(app, "make-random-model", "hw.options:RandomModelOptions",
               prog="s2loop make-random-model", positional=True)  # fmt: skip
    def make_random_model(opts) -> None:
        """Write an untrained random artifact (for tests and benchmarks, not a policy)."""
        from hw.artifact import save_artifact
        from hw.synthetic import random_artifact

        save_artifact(
            random_artifact(seed=opts.seed, ticks=opts.ticks, name=opts.out.stem), opts.out
        )
        typer.echo(f"wrote {opts.out}")

    @generated(app, "map", "hw.options:MapOptions", prog="s2loop map", positional=True)
    def map_model(opts) -> None:
        """Place a model on SpiNNaker2 PEs; print PEs, copies per chip, time and energy."""
        import json

        from hw.artifact import load_artifact
        from hw.mapping import MappingError, map_network

        chip = opts.chip
        art = load_artifact(opts.model)
        try:
            rep = map_network(art, chip)
        except MappingError as exc:
            typer.echo(f"does not fit: {exc}", err=True)
            raise typer.Exit(1) from None
        if opts.json:
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

    @generated(app, "infer", "hw.options:InferOptions", prog="s2loop infer", positional=True)
    def infer(opts) -> None:
        """Run one observation through a model on any backend and print the result as JSON."""
        import json

        import numpy as np

        from hw.artifact import load_artifact
        from hw.backend import BackendError, create_backend

        art = load_artifact(opts.model)
        settings = {}
        if opts.backend == "spinnaker2":
            settings = {"eth_ip": opts.eth_ip, "sys_tick_in_s": opts.sys_tick}
        try:
            with create_backend(opts.backend, **settings) as be:
                be.load(art)
                seeds = None if opts.seed is None else np.array([opts.seed])
                res = be.infer(art.name, np.asarray([opts.observation], np.float32), seeds)
        except (BackendError, ValueError) as exc:
            typer.echo(f"backend {opts.backend!r} failed: {exc}", err=True)
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
