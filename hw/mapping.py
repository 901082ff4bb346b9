"""Place an artifact's populations on SpiNNaker2 processing elements (PEs) and
estimate what one inference costs on the chip.

Placement model (every limit is a named field of :class:`ChipSpec`):

- Each population gets its own PEs (the SDK never shares a PE between
  populations): the ``spike_list`` input population and every ``lif_no_delay``
  layer. A population is cut into contiguous slices of neurons, filled greedily.
- A PE holds at most ``neurons_per_pe`` neurons (the SDK default is about 250,
  ``set_max_atoms_per_core``) and at most ``synapse_memory_bytes`` of incoming
  synapses. Synapses live on the PE of their *post*-synaptic neuron; only
  non-zero weights are stored (the board backend skips zero weights), at
  ``bytes_per_synapse`` each. The input population stores no synapses.
- ``copies_per_chip = usable_pes // pes_used``: how many independent copies
  of the network one board run can hold, i.e. how many observations one run
  can serve.

Time: ``chip_time_s = ticks * sys_tick_s`` per run, whatever the copies (all
copies run in the same ticks). Host-side loading and the Ethernet round trip
are not included (they are measured, not estimated, by the board backend).

Energy (**estimates** from secondary sources, see ``shared/spinnaker2-notes.md``):
the chip draws ``power_idle_w`` whenever it runs, and each busy PE adds
``(power_busy_w - power_idle_w) / usable_pes``. So a run with ``n`` busy PEs
draws ``P(n) = power_idle_w + n * (power_busy_w - power_idle_w) / usable_pes``.

- ``energy_j``: one inference alone on the chip (one copy; the closed-loop
  case, one observation per control step): ``P(pes_used) * chip_time_s``.
- ``energy_batched_j``: per inference when a run fills every copy:
  ``P(copies * pes_used) * chip_time_s / copies``.
- ``energy_dynamic_j``: the busy part only, ``(P(pes_used) - power_idle_w) *
  chip_time_s``, i.e. what the network adds above an idle chip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hw.artifact import ModelArtifact


class MappingError(ValueError):
    """The network does not fit on one chip under the given limits."""


@dataclass(frozen=True)
class ChipSpec:
    """Limits and power constants of one SpiNNaker2 chip (all overridable).

    Sources: ``shared/spinnaker2-notes.md`` ("The chip"); the power figures
    are secondary and the per-synapse size is an assumption, so treat every
    derived figure as an estimate.
    """

    #: PEs an application may use (152 on the chip, 4 reserved).
    usable_pes: int = 148
    #: neurons one PE holds (SDK default about 250; ``set_max_atoms_per_core``).
    neurons_per_pe: int = 250
    #: SRAM per PE left for data (of 128 KB), bytes.
    synapse_memory_bytes: int = 96 * 1024
    #: bytes one stored synapse costs: assumed one 32-bit word (int8 weight,
    #: target index, delay), as SpiNNaker synapse rows use; not verified for
    #: ``lif_no_delay``.
    bytes_per_synapse: int = 4
    #: tick length, seconds (the SDK's ``sys_tick_in_s`` default).
    sys_tick_s: float = 1e-3
    #: whole-chip power, PEs powered but idle, 0.5 V (secondary source).
    power_idle_w: float = 0.235
    #: whole-chip power, all PEs busy, 0.5 V / 150 MHz (secondary source;
    #: 1.25 W at 0.8 V / 300 MHz).
    power_busy_w: float = 0.425
    #: whole-chip power with the PEs switched off (secondary; informational).
    power_off_w: float = 0.075

    def __post_init__(self) -> None:
        for name in ("usable_pes", "neurons_per_pe", "synapse_memory_bytes", "bytes_per_synapse"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ChipSpec.{name} must be >= 1")
        if not self.sys_tick_s > 0:
            raise ValueError("ChipSpec.sys_tick_s must be > 0")
        if self.power_busy_w < self.power_idle_w:
            raise ValueError("ChipSpec.power_busy_w must be >= power_idle_w")

    @property
    def busy_w_per_pe(self) -> float:
        """Extra power of one busy PE over idle, watts."""
        return (self.power_busy_w - self.power_idle_w) / self.usable_pes

    def power_w(self, busy_pes: int) -> float:
        """Whole-chip power with ``busy_pes`` PEs running, watts."""
        return self.power_idle_w + busy_pes * self.busy_w_per_pe


@dataclass(frozen=True)
class PopulationPlacement:
    """Where one population sits: its PEs and what each holds."""

    name: str
    neuron_model: str
    size: int
    pes: int
    neurons_per_pe: list[int]
    synapses: int  # stored (non-zero) incoming synapses of the whole population
    max_synapse_bytes_per_pe: int


@dataclass(frozen=True)
class MappingReport:
    """Result of :func:`map_network` (per inference unless said otherwise)."""

    model: str
    chip: ChipSpec
    ticks: int
    populations: list[PopulationPlacement]
    pes_used: int
    copies_per_chip: int
    chip_time_s: float
    energy_j: float
    energy_batched_j: float
    energy_dynamic_j: float
    synapses: int
    notes: list[str] = field(default_factory=list)

    def estimate(self, batch: int) -> tuple[float, float]:
        """Estimated chip time (s) and energy (J) of ``batch`` inferences: as many per run
        as copies fit on the chip, so ``ceil(batch / copies)`` runs of ``chip_time_s``,
        each at the power of the PEs its copies keep busy."""
        copies = max(1, self.copies_per_chip)
        full, rest = divmod(batch, copies)
        energy = full * self.chip.power_w(copies * self.pes_used) * self.chip_time_s
        if rest:
            energy += self.chip.power_w(rest * self.pes_used) * self.chip_time_s
        return (full + (1 if rest else 0)) * self.chip_time_s, energy

    @property
    def pe_utilisation(self) -> float:
        """Share of the usable PEs one copy occupies."""
        return self.pes_used / self.chip.usable_pes

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "ticks": self.ticks,
            "pes_used": self.pes_used,
            "usable_pes": self.chip.usable_pes,
            "copies_per_chip": self.copies_per_chip,
            "chip_time_s": self.chip_time_s,
            "energy_j": self.energy_j,
            "energy_batched_j": self.energy_batched_j,
            "energy_dynamic_j": self.energy_dynamic_j,
            "energy_is_estimate": True,
            "synapses": self.synapses,
            "populations": [asdict(p) for p in self.populations],
            "chip": asdict(self.chip),
            "notes": list(self.notes),
        }


def _place(
    name: str, model: str, per_neuron_synapses: np.ndarray, chip: ChipSpec
) -> PopulationPlacement:
    """Greedy contiguous slicing of one population onto PEs."""
    mem = chip.synapse_memory_bytes
    slices: list[int] = []
    bytes_per_pe: list[int] = []
    count = used = 0
    for i, n_syn in enumerate(per_neuron_synapses.tolist()):
        need = int(n_syn) * chip.bytes_per_synapse
        if need > mem:
            raise MappingError(
                f"population {name!r}: neuron {i} has {int(n_syn)} synapses "
                f"({need} bytes at {chip.bytes_per_synapse} B/synapse), more than one PE's "
                f"{mem} bytes of synapse memory; reduce the fan-in or prune weights"
            )
        if count and (count >= chip.neurons_per_pe or used + need > mem):
            slices.append(count)
            bytes_per_pe.append(used)
            count = used = 0
        count += 1
        used += need
    if count:
        slices.append(count)
        bytes_per_pe.append(used)
    return PopulationPlacement(
        name=name,
        neuron_model=model,
        size=int(per_neuron_synapses.shape[0]),
        pes=len(slices),
        neurons_per_pe=slices,
        synapses=int(per_neuron_synapses.sum()),
        max_synapse_bytes_per_pe=max(bytes_per_pe, default=0),
    )


def map_network(artifact: ModelArtifact, chip: ChipSpec | None = None) -> MappingReport:
    """Place ``artifact`` on one chip; raise :class:`MappingError` if it does not fit."""
    chip = chip or ChipSpec()
    pops = [
        _place(
            "input",
            "spike_list",
            np.zeros(artifact.input_size, dtype=np.int64),
            chip,
        )
    ]
    for layer in artifact.layers:
        per_neuron = np.count_nonzero(layer.weight, axis=1).astype(np.int64)
        pops.append(_place(layer.name, layer.neuron_model, per_neuron, chip))
    pes_used = sum(p.pes for p in pops)
    if pes_used > chip.usable_pes:
        detail = ", ".join(f"{p.name}: {p.pes}" for p in pops)
        raise MappingError(
            f"model {artifact.name!r} needs {pes_used} PEs ({detail}) but one chip has "
            f"{chip.usable_pes} usable PEs (limits: {chip.neurons_per_pe} neurons/PE, "
            f"{chip.synapse_memory_bytes} B synapse memory/PE)"
        )
    copies = chip.usable_pes // pes_used
    chip_time = artifact.ticks * chip.sys_tick_s
    energy = chip.power_w(pes_used) * chip_time
    energy_batched = chip.power_w(copies * pes_used) * chip_time / copies
    energy_dynamic = pes_used * chip.busy_w_per_pe * chip_time
    notes = [
        "energy figures are estimates from secondary power figures (shared/spinnaker2-notes.md)",
        "chip_time_s excludes loading and the Ethernet round trip of a board run",
    ]
    return MappingReport(
        model=artifact.name,
        chip=chip,
        ticks=artifact.ticks,
        populations=pops,
        pes_used=pes_used,
        copies_per_chip=copies,
        chip_time_s=chip_time,
        energy_j=energy,
        energy_batched_j=energy_batched,
        energy_dynamic_j=energy_dynamic,
        synapses=sum(p.synapses for p in pops),
        notes=notes,
    )
