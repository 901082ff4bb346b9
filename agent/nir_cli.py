"""``s2loop export-nir``: write a model as a NIR graph; its options are the fields of
:class:`ExportNirOptions` (imports stay inside the command)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import typer

from s2loop.commands import generated


@dataclass(frozen=True)
class ExportNirOptions:
    """What ``s2loop export-nir`` writes and checks."""

    model: str
    """model name (models/NAME.s2l) or path"""
    out: Path
    """where to write the NIR graph (HDF5, e.g. model.nir)"""
    weights: Literal["int8", "float"] = "int8"
    """int8: the network the chip runs; float: the float master weights"""
    explicit_delays: bool = False
    """one nir.Delay step before each weight node (s2_nir cannot read these)"""
    check: int = 256
    """read the file back and compare it with the emulator on this many random
    observations (0: skip)"""
    seed: int = 0
    """seed of the check's observations"""


def register(app: typer.Typer) -> None:
    @generated(app, "export-nir", "agent.nir_cli:ExportNirOptions", prog="s2loop export-nir",
               positional=True)  # fmt: skip
    def export_nir_command(opts: ExportNirOptions) -> None:
        """Write MODEL as a NIR graph that snnTorch, Norse or py-spinnaker2's s2_nir can read.

        The encoder, readout, reset mode and tick delay go into the graph's metadata
        (see agent/nir_export.py for the algebra and what each reader needs)."""
        import json

        import nir
        import numpy as np

        from agent.nir_export import export_nir, run_nir_graph
        from hw.artifact import ArtifactError, load_artifact
        from hw.emulator import CompiledNetwork, greedy_actions, readout, run_raster
        from hw.encoding import encode

        try:
            art = load_artifact(opts.model)
            use_float = opts.weights == "float"
            path = export_nir(
                art, opts.out, use_float=use_float, explicit_delays=opts.explicit_delays
            )
        except (ArtifactError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        graph = nir.read(path)
        report: dict[str, object] = {
            "model": art.name,
            "out": str(path),
            "weights": opts.weights,
            "nodes": {name: type(node).__name__ for name, node in graph.nodes.items()},
        }
        check, seed = opts.check, opts.seed
        if check > 0:
            rng = np.random.default_rng(seed)
            obs = art.obs_offset + art.obs_scale * rng.uniform(
                -1.0, 1.0, size=(check, art.observation_size)
            ).astype(np.float32)
            # a Poisson model: the same seeded draws on both sides
            seeds = np.arange(check) + seed if art.encoder.kind == "poisson" else None
            res = run_nir_graph(graph, obs, seeds=seeds)
            raster = encode(art, obs, seeds=seeds)
            emu = run_raster(CompiledNetwork.from_artifact(art), raster, record=True)
            q = readout(art, emu.v_final, emu.counts)
            report["check"] = {
                "observations": check,
                "action_agreement": float(np.mean(res.actions == greedy_actions(q))),
                "max_abs_q_difference": float(np.max(np.abs(res.q_values - q))),
                "spikes_identical": bool(np.array_equal(res.record, emu.record)),
            }
        typer.echo(json.dumps(report, indent=2))
