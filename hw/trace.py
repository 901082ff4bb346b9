"""Spike traces: what one inference did, tick by tick, on any backend.

A trace of one observation (:class:`SpikeTrace`, on the wire ``"trace"``):

- ``ticks``: chip ticks run (``T``);
- ``input``: the input spikes as ``[tick, neuron]`` pairs; ``tick`` is the
  ``spike_list`` tick the input neuron fires at (raster row ``t``), integrated by
  the first layer at ``tick + 1``; spikes at ``tick >= T`` are left out (they
  never happen in a run of ``T`` ticks);
- ``layers``: per LIF layer ``{"name", "size", "spikes": [[tick, neuron], ...]}``;
  a layer's spike count is what the backend reports in ``spikes_per_layer``;
- ``output_q``: ``T`` rows, row ``t`` the Q-values the run would have answered had
  it stopped after tick ``t`` (the readout of the output layer's membrane and spike
  count then), so its last row equals ``q_values``.

Pairs are ordered by tick, then neuron. Every backend builds its traces here from
the same two dense records, so they agree in shape and order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numba import njit

from hw.artifact import ModelArtifact


@dataclass(slots=True)
class LayerTrace:
    name: str
    size: int
    spikes: np.ndarray  # int32 [n, 2]: (tick, neuron)


@dataclass(slots=True)
class SpikeTrace:
    """One observation's trace (see the module docstring)."""

    ticks: int
    input: np.ndarray  # int32 [n, 2]: (tick, input neuron)
    layers: list[LayerTrace]
    output_q: np.ndarray  # float32 [ticks, actions]

    def to_dict(self) -> dict[str, Any]:
        """The wire map, its arrays still numpy (the server's JSON and msgpack encoders
        write them as lists: ``output_q`` in float32 precision, as ``q_values``)."""
        return {
            "ticks": self.ticks,
            "input": self.input,
            "layers": [
                {"name": lay.name, "size": lay.size, "spikes": lay.spikes} for lay in self.layers
            ],
            "output_q": self.output_q,
        }

    def to_json(self) -> bytes:
        """The wire map as JSON, as the server answers it."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpikeTrace:
        """The inverse of :meth:`to_dict` (the flight recorder stores the wire form)."""

        def pairs(x: Any) -> np.ndarray:
            return np.ascontiguousarray(x, dtype=np.int32).reshape(-1, 2)

        return cls(
            ticks=int(data["ticks"]),
            input=pairs(data["input"]),
            layers=[
                LayerTrace(str(lay["name"]), int(lay["size"]), pairs(lay["spikes"]))
                for lay in data["layers"]
            ],
            output_q=np.asarray(data["output_q"], dtype=np.float32),
        )

    def raster(self, layer: int) -> np.ndarray:
        """One layer's spikes as a dense uint8 [ticks, size] raster."""
        lay = self.layers[layer]
        out = np.zeros((self.ticks, lay.size), np.uint8)
        out[lay.spikes[:, 0], lay.spikes[:, 1]] = 1
        return out


def trace_cells(artifact: ModelArtifact) -> int:
    """Tick x neuron cells of one observation's trace (the size a traced request is
    capped by): ``ticks * (inputs + neurons)``."""
    return int(artifact.ticks) * (
        int(artifact.input_size) + sum(int(lay.size) for lay in artifact.layers)
    )


def output_q(artifact: ModelArtifact, record: np.ndarray, v_out: np.ndarray) -> np.ndarray:
    """Q-values after each tick, float32 [B, ticks, actions], from the full spike record
    uint8 [B, ticks, N] and the output membranes after each tick's reset float32
    [B, ticks, A]: the same float32 operations as :func:`hw.emulator.readout`."""
    out = artifact.layers[-1]
    v = v_out.astype(np.float32, copy=False)
    if artifact.readout.kind == "membrane":
        raw = v
    else:
        out_spikes = record[:, :, record.shape[2] - int(out.size) :]
        counts = np.cumsum(out_spikes, axis=1, dtype=np.int32).astype(np.float32)
        raw = counts * np.float32(out.threshold) + v
    return raw / np.float32(out.weight_scale)


@njit(cache=True, nogil=True, boundscheck=False)
def _pairs_kernel(dense, starts, ticks):  # pragma: no cover - compiled
    """(tick, neuron) pairs of a [B, T, N] 0/1 record cut into groups (row, block),
    block k the neurons ``starts[k]:starts[k + 1]``, ticks below ``ticks`` only;
    returns ``(pairs int32 [M, 2], cuts int64 [B * K + 1])``, group g's pairs at
    ``cuts[g]:cuts[g + 1]``, by tick, then neuron."""
    n_b, n_t, _ = dense.shape
    n_k = starts.shape[0] - 1
    t_max = min(n_t, ticks)
    total = 0
    for b in range(n_b):
        for t in range(t_max):
            for i in range(starts[n_k]):
                total += dense[b, t, i] != 0
    pairs = np.empty((total, 2), dtype=np.int32)
    cuts = np.empty(n_b * n_k + 1, dtype=np.int64)
    m = 0
    for b in range(n_b):
        for k in range(n_k):
            cuts[b * n_k + k] = m
            lo = starts[k]
            for t in range(t_max):
                for i in range(lo, starts[k + 1]):
                    if dense[b, t, i] != 0:
                        pairs[m, 0] = t
                        pairs[m, 1] = i - lo
                        m += 1
    cuts[n_b * n_k] = m
    return pairs, cuts


@functools.cache
def _layout(sizes: tuple[int, ...], inputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Block starts of the LIF neurons and of the inputs (cached: a traced request is
    short, numpy's small-array calls are not free)."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return starts, np.array([0, inputs], dtype=np.int64)


def build_traces(
    artifact: ModelArtifact, raster: np.ndarray, record: np.ndarray, q_ticks: np.ndarray
) -> list[SpikeTrace]:
    """One :class:`SpikeTrace` per observation from dense records: ``raster`` uint8
    [B, input_ticks, inputs] (the encoder's), ``record`` uint8 [B, ticks, N] (every LIF
    neuron, layers in order), ``q_ticks`` float32 [B, ticks, A] (Q after each tick);
    the arrays C-contiguous."""
    ticks = int(artifact.ticks)
    layers_ = artifact.layers
    sizes = tuple(int(lay.size) for lay in layers_)
    starts, in_starts = _layout(sizes, int(raster.shape[2]))
    pairs, cuts = _pairs_kernel(record, starts, ticks)
    in_pairs, in_cuts = _pairs_kernel(raster, in_starts, ticks)
    q_ticks = q_ticks.astype(np.float32, copy=False)
    n_k = len(sizes)
    traces = []
    for b in range(record.shape[0]):
        g = b * n_k
        layers = [
            LayerTrace(lay.name, sizes[k], pairs[cuts[g + k] : cuts[g + k + 1]])
            for k, lay in enumerate(layers_)
        ]
        traces.append(SpikeTrace(ticks, in_pairs[in_cuts[b] : in_cuts[b + 1]], layers, q_ticks[b]))
    return traces
