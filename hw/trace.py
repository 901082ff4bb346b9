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
import itertools
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
    sizes = tuple(int(lay.size) for lay in artifact.layers)
    starts, in_starts = _layout(sizes, int(raster.shape[2]))
    pairs, cuts = _pairs_kernel(record, starts, ticks)
    in_pairs, in_cuts = _pairs_kernel(raster, in_starts, ticks)
    return traces_from_pairs(artifact, pairs, cuts, in_pairs, in_cuts, q_ticks)


def traces_from_pairs(
    artifact: ModelArtifact,
    pairs: np.ndarray,
    cuts: np.ndarray,
    in_pairs: np.ndarray,
    in_cuts: np.ndarray,
    q_ticks: np.ndarray,
) -> list[SpikeTrace]:
    """:func:`build_traces` from spike pairs already cut (:func:`_pairs_kernel`'s
    output for the record, by row and layer, and for the input raster, by row)."""
    ticks = int(artifact.ticks)
    layers_ = artifact.layers
    sizes = tuple(int(lay.size) for lay in layers_)
    q_ticks = q_ticks.astype(np.float32, copy=False)
    n_k = len(sizes)
    traces = []
    for b in range(len(in_cuts) - 1):
        g = b * n_k
        layers = [
            LayerTrace(lay.name, sizes[k], pairs[cuts[g + k] : cuts[g + k + 1]])
            for k, lay in enumerate(layers_)
        ]
        traces.append(SpikeTrace(ticks, in_pairs[in_cuts[b] : in_cuts[b + 1]], layers, q_ticks[b]))
    return traces


# ----------------------------------------------------------------------------- msgpack


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_big_endian(buf, n, tag, x, width):  # pragma: no cover - compiled
    """A msgpack tag byte, then ``x`` in ``width`` big-endian bytes."""
    buf[n] = tag
    for k in range(width):
        buf[n + 1 + k] = (x >> (8 * (width - 1 - k))) & 0xFF
    return n + 1 + width


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_uint(buf, n, x):  # pragma: no cover - compiled
    """msgpack's smallest encoding of a non-negative int (as msgpack-python writes it)."""
    if x < 128:  # positive fixint
        buf[n] = x
        return n + 1
    if x < 256:
        return _pack_big_endian(buf, n, 0xCC, x, 1)
    if x < 65536:
        return _pack_big_endian(buf, n, 0xCD, x, 2)
    return _pack_big_endian(buf, n, 0xCE, x, 4)


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_array_header(buf, n, size):  # pragma: no cover - compiled
    if size < 16:  # fixarray
        buf[n] = 0x90 | size
        return n + 1
    if size < 65536:
        return _pack_big_endian(buf, n, 0xDC, size, 2)
    return _pack_big_endian(buf, n, 0xDD, size, 4)


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_pairs(pairs, cuts):  # pragma: no cover - compiled
    """Blocks of (tick, neuron) pairs as msgpack arrays of 2-int arrays, one after the
    other: returns the bytes and where each block ends."""
    buf = np.empty(5 + pairs.shape[0] * 11 + 5 * cuts.shape[0], dtype=np.uint8)
    ends = np.empty(cuts.shape[0] - 1, dtype=np.int64)
    n = 0
    for b in range(cuts.shape[0] - 1):
        n = _pack_array_header(buf, n, cuts[b + 1] - cuts[b])
        for i in range(cuts[b], cuts[b + 1]):
            buf[n] = 0x92
            n = _pack_uint(buf, n + 1, pairs[i, 0])
            n = _pack_uint(buf, n, pairs[i, 1])
        ends[b] = n
    return buf[:n], ends


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_floats(q):  # pragma: no cover - compiled
    """A float32 [rows, cols] array as a msgpack array of arrays of float64 (what
    msgpack-python writes for ``q.tolist()``)."""
    rows, cols = q.shape
    buf = np.empty(5 + rows * (5 + 9 * cols), dtype=np.uint8)
    n = _pack_array_header(buf, 0, rows)
    for r in range(rows):
        n = _pack_array_header(buf, n, cols)
        for c in range(cols):
            bits = np.array([np.float64(q[r, c])]).view(np.uint64)[0]
            buf[n] = 0xCB
            for k in range(8):
                buf[n + 1 + k] = (bits >> np.uint64(56 - 8 * k)) & np.uint64(0xFF)
            n += 9
    return buf[:n]


def _mp(value: Any) -> bytes:
    import msgpack

    return msgpack.packb(value, use_bin_type=True)


@functools.cache
def _fragments(names: tuple[str, ...], sizes: tuple[int, ...], ticks: int) -> tuple:
    """The fixed parts of a trace's msgpack map for one network layout, in the order
    they are written (pairs of each block between them), as one byte array and its cuts."""
    parts = [b"\x84" + _mp("ticks") + _mp(ticks) + _mp("input")]
    parts.append(_mp("layers") + _mp([0] * len(names))[: -len(names)])  # the array header
    for name, size in zip(names, sizes, strict=True):
        parts.append(b"\x83" + _mp("name") + _mp(name) + _mp("size") + _mp(size) + _mp("spikes"))
    parts.append(_mp("output_q"))
    cuts = np.fromiter(itertools.accumulate(map(len, parts), initial=0), np.int64)
    return np.frombuffer(b"".join(parts), np.uint8), cuts


@njit(cache=True, nogil=True, boundscheck=False)
def _pack_trace(frag, frag_cuts, pairs, cuts, q):  # pragma: no cover - compiled
    """A trace's msgpack map: fixed fragments, then the input's pairs, the layers' array
    header, each layer's head and pairs, the output_q key and the Q-values."""
    packed, ends = _pack_pairs(pairs, cuts)
    floats = _pack_floats(q)
    buf = np.empty(frag.shape[0] + packed.shape[0] + floats.shape[0], dtype=np.uint8)
    n = 0
    blocks = cuts.shape[0] - 1
    for k in range(blocks + 1):
        # fragment k, then block k (the input's pairs, then each layer's)
        if k == 1:  # the "layers" key and array header come between input and layer 0
            for i in range(frag_cuts[1], frag_cuts[2]):
                buf[n] = frag[i]
                n += 1
        f = 0 if k == 0 else k + 1
        if k < blocks:
            for i in range(frag_cuts[f], frag_cuts[f + 1]):
                buf[n] = frag[i]
                n += 1
            lo = 0 if k == 0 else ends[k - 1]
            for i in range(lo, ends[k]):
                buf[n] = packed[i]
                n += 1
    for i in range(frag_cuts[blocks + 1], frag_cuts[blocks + 2]):  # "output_q"
        buf[n] = frag[i]
        n += 1
    for i in range(floats.shape[0]):
        buf[n] = floats[i]
        n += 1
    return buf[:n]


def to_msgpack(trace: SpikeTrace) -> bytes:
    """``msgpack.packb(trace.to_dict())`` with the arrays as lists, byte for byte, written
    by one compiled call (a trace holds hundreds of small arrays: msgpack-python takes
    ~30 µs for them, this a few)."""
    layers = trace.layers
    frag, frag_cuts = _fragments(
        tuple(lay.name for lay in layers), tuple(lay.size for lay in layers), trace.ticks
    )
    blocks = [trace.input, *(lay.spikes for lay in layers)]
    cuts = np.fromiter(itertools.accumulate(map(len, blocks), initial=0), np.int64)
    return _pack_trace(frag, frag_cuts, np.concatenate(blocks), cuts, trace.output_q).tobytes()
