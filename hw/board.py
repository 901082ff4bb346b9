"""Run an artifact on a SpiNNaker2 chip through py-spinnaker2.

The SDK (``spinnaker2``, not on PyPI) is imported lazily, only when a
:class:`SpiNNaker2Backend` is created, so the rest of ``hw`` works without it.

What the network looks like, per copy of the model (one copy per observation):

- ``input``: ``snn.Population(size=n_inputs, neuron_model="spike_list",
  params={neuron_idx: [tick, ...]})`` from :func:`hw.encoding.spike_times`;
- one ``lif_no_delay`` population per layer with ``threshold``,
  ``alpha_decay``, ``i_offset`` (a list, one float per neuron), ``v_init``,
  ``v_reset`` and ``reset``; hidden layers record ``["spikes"]``, the output
  layer ``["spikes", "v"]``;
- ``snn.Projection(pre=, post=, connections=[[pre, post, weight, 0], ...])``
  with plain int weights in [-127, 127], zero weights left out, delay 0.

Several copies share one run (as many as :func:`hw.mapping.map_network`
allows, ``copies_per_chip``), so a batch of B observations takes
``ceil(B / copies)`` board runs. Each run makes a fresh
``hardware.SpiNNaker2Chip(eth_ip=...)`` (as the SDK's examples do) and calls
``hw.run(net, ticks, sys_tick_in_s=...)``. If a run with several copies fails
(e.g. a board with fewer free PEs than the mapping assumes), that model falls
back to one copy per run, with a warning; a failing single-copy run raises
:class:`BackendError`.

SDK facts this code relies on, and where they come from (public sources, read
through the project's search tools; no board was available to check them):

- constructor and keyword names of ``snn.Population`` (``size``,
  ``neuron_model``, ``params``, ``name``, ``record``), ``snn.Projection``
  (``pre``, ``post``, ``connections`` as ``[pre, post, weight, delay]``),
  ``snn.Network(name).add(...)``, ``hardware.SpiNNaker2Chip(eth_ip=...)``,
  ``hw.run(net, timesteps, sys_tick_in_s=...)``,
  ``Population.set_max_atoms_per_core(n)``: py-spinnaker2 docs "SNN API"
  (spinnaker2.gitlab.io/py-spinnaker2/snn-api), NIR example
  ``neuromorphs/NIR example/spinnaker2/import_to_spinnaker2.py``, NICE 2024
  tutorial notebook ``bvogginger/NIR_Tutorial_at_NICE_2024``.
- ``lif_no_delay`` parameter names ``threshold``, ``alpha_decay``,
  ``i_offset``, ``v_init``, ``v_reset``, ``reset`` (``"reset_by_subtraction"``
  / ``"reset_to_v_reset"``), given per population or per neuron (the SDK's
  NIR converter ``s2_nir.py`` passes per-neuron arrays): same sources.
- ``spike_list`` params are ``{neuron_idx: [tick, ...]}`` with int ticks (the
  docs' example ``{0: [1, 2, 3], 5: [20, 30]}``; the tutorial builds them with
  ``.nonzero()[0].tolist()``).
- A spike emitted at tick t (by a ``spike_list`` or a LIF neuron) is integrated
  by the post population at tick t + 1 (+ delay): the SDK's ``lif_neuron``
  example says "Actual delay on the hardware is: delay+1", its ``lif_fugu``
  example expects outputs "one cycle delayed" after input spikes, and the NIR
  example runs ``timesteps += 3`` to flush a 2-layer pipe. This is the
  emulator's convention, so input tick t here is raster row t there.
- ``get_spikes() -> {idx: [ticks]}`` and ``get_voltages() -> {idx: numpy array
  with one float per timestep}``: stated in the comments of the SDK's
  ``lif_neuron`` example (which also lists the parameter names above and plots
  ``voltages[0]`` against ``np.arange(timesteps)``); SDK-based scripts read
  ``vs[-1]`` as "the voltage of the last timestep" (Braille task of the SDK's
  comparison tasks). A non-spiking output layer recorded with
  ``["spikes", "v"]`` and ``threshold=1e9`` is how the SDK's own dense-network
  example reads out its output, as here.

Spike traces (``infer(..., trace=True)``, :mod:`hw.trace`) come from what every run
records anyway: each layer's ``get_spikes()`` and the output layer's
``get_voltages()``, one value per tick, read as the membrane after that tick (so
``output_q`` row t is the readout of tick t's voltage and the spikes up to t).

Decision (documented, not verified on a board): the emulator's ``v_final``
(membrane after the update *and* reset of the last tick) equals
``get_voltages()[i][-1]``. If a board recorded the voltage before the reset,
the two differ only for an output neuron that spiked on the very last tick,
which cannot happen with the ``membrane`` readout's non-spiking output layer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw.artifact import ModelArtifact
from hw.backend import Backend, BackendError, InferenceResult, check_observations
from hw.encoding import encode, request_seeds, spike_times
from hw.mapping import ChipSpec, MappingError, map_network
from hw.trace import build_traces, output_q

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the py-spinnaker2 SDK is not installed; on a machine with a SpiNNaker2 board run "
    'pip install "spinnaker2 @ git+https://gitlab.com/spinnaker2/py-spinnaker2.git" '
    "(it also needs the vendor's chip-side apps); without a board use backend 'emulator'"
)


def _import_sdk() -> tuple[Any, Any]:
    """``(snn, hardware)`` from py-spinnaker2, or a :class:`BackendError` that says how
    to install it."""
    try:
        from spinnaker2 import hardware, snn
    except ImportError as exc:
        raise BackendError(f"{INSTALL_HINT} ({exc})") from None
    return snn, hardware


@dataclass(frozen=True)
class BoardModel:
    """An artifact prepared once for board runs: per-layer params and connection
    lists in plain Python types, and how many copies fit one chip."""

    artifact: ModelArtifact
    params: list[dict[str, Any]]
    connections: list[list[list[int]]]
    copies: int
    chip_time_s: float
    energy_j: float
    energy_batched_j: float


def layer_params(artifact: ModelArtifact) -> list[dict[str, Any]]:
    """``lif_no_delay`` params per layer, plain Python floats (and a float list for
    ``i_offset``, one value per neuron)."""
    out = []
    for layer in artifact.layers:
        out.append(
            {
                "threshold": float(layer.threshold),
                "alpha_decay": float(layer.alpha_decay),
                "i_offset": [float(x) for x in layer.i_offset.astype(np.float32)],
                "v_init": float(layer.v_init),
                "v_reset": float(layer.v_reset),
                "reset": str(layer.reset),
            }
        )
    return out


def connection_list(weight: np.ndarray, delay: int = 0) -> list[list[int]]:
    """int8 weight ``[post, pre]`` -> ``[[pre, post, weight, delay], ...]`` (plain ints,
    zero weights skipped), ordered by pre then post."""
    post_idx, pre_idx = np.nonzero(weight)
    order = np.lexsort((post_idx, pre_idx))
    pre_l = pre_idx[order].tolist()
    post_l = post_idx[order].tolist()
    w_l = weight[post_idx[order], pre_idx[order]].astype(np.int64).tolist()
    d = int(delay)
    return [[a, b, c, d] for a, b, c in zip(pre_l, post_l, w_l, strict=True)]


class SpiNNaker2Backend(Backend):
    """``lif_no_delay`` populations on a SpiNNaker2 chip, via py-spinnaker2.

    eth_ip: the chip's address; ``None`` falls back to ``$S2_IP`` (as the SDK's
        examples do), else the SDK's own default.
    sys_tick_in_s: tick length passed to ``hw.run`` (SDK default 1 ms).
    max_copies: cap on network copies per run (``None``: as many as fit).
    neurons_per_pe: passed to ``set_max_atoms_per_core`` for the LIF populations,
        and to the mapping that decides the copies.
    """

    name = "spinnaker2"
    # one board runs one network at a time: one worker thread, never on the event loop
    inline_safe = False
    thread_safe = False
    # traces from what the runs record anyway: every layer's spikes, the output's voltages
    gives_traces = True

    def __init__(
        self,
        eth_ip: str | None = None,
        sys_tick_in_s: float = 1e-3,
        max_copies: int | None = None,
        neurons_per_pe: int = 250,
    ) -> None:
        super().__init__()
        self.snn, self.hardware = _import_sdk()
        self.eth_ip = eth_ip if eth_ip is not None else os.environ.get("S2_IP")
        if not sys_tick_in_s > 0:
            raise ValueError("sys_tick_in_s must be > 0")
        self.sys_tick_in_s = float(sys_tick_in_s)
        if max_copies is not None and max_copies < 1:
            raise ValueError("max_copies must be >= 1")
        self.max_copies = max_copies
        self.chip = ChipSpec(neurons_per_pe=int(neurons_per_pe), sys_tick_s=self.sys_tick_in_s)
        self.runs = 0  # board runs made (for describe / tests)
        self._copies: dict[str, int] = {}  # per model: copies per run after a fallback

    def _prepare(self, artifact: ModelArtifact) -> BoardModel:
        try:
            report = map_network(artifact, self.chip)
        except MappingError as exc:
            raise BackendError(f"model {artifact.name!r} cannot run on one chip: {exc}") from None
        self._copies.pop(artifact.name, None)
        copies = report.copies_per_chip
        if self.max_copies is not None:
            copies = min(copies, self.max_copies)
        return BoardModel(
            artifact=artifact,
            params=layer_params(artifact),
            connections=[connection_list(layer.weight) for layer in artifact.layers],
            copies=copies,
            chip_time_s=report.chip_time_s,
            energy_j=report.energy_j,
            energy_batched_j=report.energy_batched_j,
        )

    # ------------------------------------------------------------------ one run

    def _build(self, model: BoardModel, rasters: np.ndarray) -> tuple[Any, list[list[Any]]]:
        """One ``snn.Network`` holding ``len(rasters)`` copies; returns it and, per copy,
        its LIF populations in layer order."""
        snn = self.snn
        art = model.artifact
        net = snn.Network(f"s2loop_{art.name}")
        copies = []
        for k, raster in enumerate(rasters):
            inp = snn.Population(
                size=int(art.input_size),
                neuron_model="spike_list",
                params=spike_times(raster),
                name=f"input_c{k}",
            )
            net.add(inp)
            pre = inp
            lif_pops = []
            last = len(art.layers) - 1
            for li, layer in enumerate(art.layers):
                pop = snn.Population(
                    size=int(layer.size),
                    neuron_model="lif_no_delay",
                    params=dict(model.params[li]),
                    name=f"{layer.name}_c{k}",
                    record=["spikes", "v"] if li == last else ["spikes"],
                )
                pop.set_max_atoms_per_core(int(self.chip.neurons_per_pe))
                proj = snn.Projection(pre=pre, post=pop, connections=model.connections[li])
                net.add(pop, proj)
                lif_pops.append(pop)
                pre = pop
            copies.append(lif_pops)
        return net, copies

    def _run_chunk(
        self, model: BoardModel, rasters: np.ndarray, record: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Run one chunk of ``n`` copies on the board.

        Returns ``(v_final [n, A], counts [n, A], spikes [n, L], delivered [n, L],
        v_out [n, ticks, A])``: ``spikes`` counts every spike per layer, ``delivered``
        only those of ticks ``<= ticks - 2`` (the ones that reach the next layer within
        the run), ``v_out`` the output membranes the board recorded per tick.
        ``record`` (uint8 [n, ticks, N], zeros): filled with every recorded spike."""
        art = model.artifact
        ticks = int(art.ticks)
        net, copies = self._build(model, rasters)
        try:
            hw = (
                self.hardware.SpiNNaker2Chip(eth_ip=self.eth_ip)
                if self.eth_ip
                else self.hardware.SpiNNaker2Chip()
            )
            hw.run(net, ticks, sys_tick_in_s=self.sys_tick_in_s)
        except Exception as exc:  # the SDK raises assorted errors (sockets, timeouts, ...)
            raise BackendError(f"SpiNNaker2 run failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.runs += 1
        n = len(rasters)
        n_layers = len(art.layers)
        n_out = art.layers[-1].size
        v_final = np.zeros((n, n_out), np.float32)
        counts = np.zeros((n, n_out), np.int32)
        spikes = np.zeros((n, n_layers), np.int64)
        early = np.zeros((n, n_layers), np.int64)  # spikes at ticks <= ticks - 2
        v_out = np.zeros((n, ticks, n_out), np.float32)
        offset = np.concatenate([[0], np.cumsum([lay.size for lay in art.layers])])
        for k, pops in enumerate(copies):
            for li, pop in enumerate(pops):
                recorded = pop.get_spikes()
                for i in range(art.layers[li].size):
                    times = [int(t) for t in recorded.get(i, ())]
                    spikes[k, li] += len(times)
                    early[k, li] += sum(1 for t in times if t <= ticks - 2)
                    if li == n_layers - 1:
                        counts[k, i] = len(times)
                    if record is not None and times:
                        record[k, [t for t in times if 0 <= t < ticks], offset[li] + i] = 1
            voltages = pops[-1].get_voltages()
            for i in range(n_out):
                trace = voltages.get(i)
                if trace is None or len(trace) == 0:
                    raise BackendError(f"no voltage recorded for output neuron {i}")
                v_final[k, i] = np.float32(trace[-1])
                if record is not None:
                    if len(trace) != ticks:
                        msg = f"{len(trace)} voltages recorded for {ticks} ticks"
                        raise BackendError(msg)
                    v_out[k, :, i] = np.asarray(trace, np.float32)
        return v_final, counts, spikes, early, v_out

    # -------------------------------------------------------------------- infer

    def _infer(
        self, prepared: BoardModel, observations: Any, seeds: Any, trace: bool
    ) -> InferenceResult:
        art = prepared.artifact
        model = art.name
        obs = check_observations(art, observations)
        seeds = request_seeds(art, obs.shape[0], seeds)
        rasters = encode(art, obs, seeds=seeds)
        n = obs.shape[0]
        ticks = int(art.ticks)
        v_final = np.zeros((n, art.action_count), np.float32)
        counts = np.zeros((n, art.action_count), np.int32)
        spikes = np.zeros((n, len(art.layers)), np.int64)
        syn = np.zeros(n, np.int64)
        sizes = [layer.size for layer in art.layers]
        record = np.zeros((n, ticks, sum(sizes)), np.uint8) if trace else None
        v_out = np.zeros((n, ticks, art.action_count), np.float32)
        runs = 0
        lo = 0
        while lo < n:
            copies = self._copies.get(model, prepared.copies)
            hi = min(n, lo + copies)
            try:
                part = None if record is None else record[lo:hi]
                v, c, s, delivered, vo = self._run_chunk(prepared, rasters[lo:hi], part)
            except BackendError as exc:
                if hi - lo == 1:
                    raise
                # A run with many copies may not fit where the mapping's limits are
                # optimistic (an SDK or board with fewer free PEs): retry this model
                # one copy per run from here on, and say so.
                logger.warning("%s; retrying model %r with one copy per run", exc, model)
                self._copies[model] = 1
                continue
            runs += 1
            v_final[lo:hi], counts[lo:hi], spikes[lo:hi], v_out[lo:hi] = v, c, s, vo
            # synaptic events as the emulator counts them: a spike reaches the next
            # layer one tick later, so only spikes of ticks <= ticks - 2 are delivered;
            # each costs the full fan-out (the size of the next layer).
            delivered_in = rasters[lo:hi, : max(0, ticks - 1)].reshape(hi - lo, -1).sum(axis=1)
            syn[lo:hi] = delivered_in.astype(np.int64) * sizes[0]
            for li in range(len(sizes) - 1):
                syn[lo:hi] += delivered[:, li] * sizes[li + 1]
            lo = hi
        # imported here: hw.emulator compiles numba kernels on first use
        from hw.emulator import greedy_actions, readout

        q = readout(art, v_final, counts)
        traces = None
        if record is not None:
            traces = build_traces(art, rasters, record, output_q(art, record, v_out))
        return InferenceResult(
            q_values=q,
            actions=greedy_actions(q),
            ticks=ticks,
            spikes_per_layer=spikes,
            synaptic_events=syn,
            backend=self.name,
            seeds=seeds,
            extra={
                "board_runs": runs,
                "copies_per_run": self._copies.get(model, prepared.copies),
                "chip_time_s_per_run": prepared.chip_time_s,
                "energy_j_estimate": prepared.energy_j,
                "energy_batched_j_estimate": prepared.energy_batched_j,
            },
            traces=traces,
        )

    def copies_per_run(self, model: str) -> int:
        """Observations one board run takes (copies of the network that fit the chip)."""
        return self._copies.get(model, self._get(model).copies)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "eth_ip": self.eth_ip,
            "sys_tick_in_s": self.sys_tick_in_s,
            "max_copies": self.max_copies,
            "neurons_per_pe": self.chip.neurons_per_pe,
            "board_runs": self.runs,
            "copies_per_run": {
                k: self._copies.get(k, m.copies) for k, m in list(self._models.items())
            },
        }
