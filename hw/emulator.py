"""The SpiNNaker2 emulator: runs an artifact with ``lif_no_delay`` semantics.

Chip semantics followed (``shared/spinnaker2-notes.md``):

- neuron state is float32, weights are int8, ``I_syn`` is their integer sum;
- per tick ``v = alpha_decay * v + I_syn + i_offset`` (float32, in that order);
- a neuron spikes when ``v > threshold`` (setting ``threshold_comparison``),
  then ``v -= threshold`` or ``v = v_reset``;
- a spike emitted at tick ``t`` reaches the next population at tick ``t + 1``:
  input spikes of tick ``t`` (``spike_list``) are integrated by layer 1 at
  ``t + 1``, layer k lags the input by k ticks.

The tick loop is a numba kernel, batched over observations, deterministic.
Two entry points share it: :func:`run_raster` (any input raster, optional full
spike record) and :func:`run_observations` (deterministic encoder, readout and
argmax fused into the kernel: the path :class:`EmulatorBackend` serves).
:func:`lif_step` is the same update written plainly in numpy, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from hw.artifact import ModelArtifact
from hw.backend import Backend, InferenceResult, check_observations
from hw.encoding import encode, request_seeds
from hw.trace import _pairs_kernel, build_traces, output_q, traces_from_pairs


@dataclass(frozen=True)
class EmulatorSettings:
    """Unknowns of the chip, each a named setting with its default.

    threshold_comparison: ``">"`` (default; the notes: strict, secondary source)
        or ``">="``.
    """

    threshold_comparison: str = ">"

    def __post_init__(self) -> None:
        if self.threshold_comparison not in (">", ">="):
            raise ValueError("threshold_comparison must be '>' or '>='")


def lif_step(
    i_syn: np.ndarray,
    v: np.ndarray,
    *,
    threshold: np.float32,
    alpha_decay: np.float32,
    i_offset: np.ndarray,
    reset: str,
    v_reset: np.float32,
    inclusive: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One tick of ``lif_no_delay`` on float32 arrays: returns ``(spikes uint8, v)``.

    ``v' = alpha_decay * v + i_syn + i_offset``; ``spike = v' > threshold``;
    ``v' -= threshold`` (subtraction) or ``v' = v_reset`` where spiked.
    """
    v = (np.float32(alpha_decay) * v + i_syn) + i_offset
    spikes = (v >= threshold) if inclusive else (v > threshold)
    if reset == "reset_by_subtraction":
        v = np.where(spikes, v - np.float32(threshold), v).astype(np.float32)
    else:
        v = np.where(spikes, np.float32(v_reset), v).astype(np.float32)
    return spikes.astype(np.uint8), v


# ----------------------------------------------------------------------------- kernels
#
# Performance notes (issue target: 2x64 hidden, 16 ticks, one core):
# - weights are laid out transposed and flat (one contiguous float32 row of
#   fan-out per presynaptic neuron), so a presynaptic spike is one dense row
#   add that LLVM vectorizes; float32 sums of int8 values are exact below 2**24;
# - no fastmath: LLVM must not contract ``alpha * v + I`` into an FMA or
#   reorder sums, so results stay bit-identical to the numpy/torch reference;
# - the deterministic encoder runs inside the kernel (:func:`_run_obs_kernel`)
#   with the same float32 operations as :mod:`hw.encoding`, and the readout and
#   argmax too, so a single-observation call is one numba dispatch.


@njit(cache=True, nogil=True, inline="always")
def _layer_rows(layer_i, layer_f):
    """The rows of :class:`CompiledNetwork`'s per-layer arrays, by name: ``w_row, sizes,
    n_off, reset_sub`` (int64 [L] each) and ``thr, alpha, v_reset, v_init`` (float32)."""
    return (layer_i[0], layer_i[1], layer_i[2], layer_i[3],
            layer_f[0], layer_f[1], layer_f[2], layer_f[3])  # fmt: skip


@njit(cache=True, nogil=True, boundscheck=False)
def _run_one(
    in_idx,  # int32 [t_in, n_in]: indices of the input neurons firing at each input tick
    in_cnt,  # int32 [t_in]: how many fire
    ticks,  # int
    w,  # int8 [R, S]: per layer, row j = weights from presynaptic neuron j (weight.T)
    w_row,  # int64 [L]: first row of each layer in w
    sizes,  # int64 [L]
    n_off,  # int64 [L]: offset of each layer in a flat [N] neuron vector (for record)
    i_offset,  # float32 [L, S]
    thr,  # float32 [L] threshold (subtracted on reset)
    thr_cmp,  # float32 [L] spike when v > thr_cmp (thr, or the float below it for '>=')
    alpha,  # float32 [L]
    reset_sub,  # int64 [L]: 1 reset by subtraction, 0 to v_reset
    v_reset,  # float32 [L]
    v_init,  # float32 [L]
    v,  # float32 [L, S] scratch: membrane potentials
    spk,  # uint8 [L, S] scratch: spikes of the current tick
    spk_idx,  # int32 [L, S] scratch: indices of the neurons that spiked
    spk_cnt,  # int64 [L] scratch: how many spiked
    isyn,  # float32 [S] scratch: synaptic input of one layer
    counts,  # int32 [B, A] out: spike counts of the output layer (added to row b)
    layer_spikes,  # int64 [B, L] out: spikes per layer (added to row b)
    b,  # int: batch row
    record,  # uint8 [B, ticks, N] out, or shape [0, 0, 0] for no record
    v_record,  # float32 [B, ticks, A] out: output membranes per tick, or [0, 0, 0]
):
    """One observation through the network; returns its synaptic events.

    Tick ``t``: layer 0 integrates the input spikes of input tick ``t - 1``,
    layer ``k > 0`` the spikes layer ``k - 1`` emitted at tick ``t - 1``. Layers
    are updated last to first within a tick, so layer ``k`` reads layer
    ``k - 1``'s spike list before it is overwritten.

    Written for speed without changing a float32 result: spike lists are built
    without branches (mispredicted branches on random spikes cost more than the
    arithmetic); 2-D state indexed ``[layer, i]`` with ``i`` from ``range``
    keeps the inner loops free of negative-index checks and of array slices
    (each slice costs an atomic reference count), so LLVM vectorizes them."""
    t_in = in_cnt.shape[0]
    n_layers = sizes.shape[0]
    last = n_layers - 1
    do_record = record.shape[0] > 0
    zero = np.float32(0.0)
    for layer in range(n_layers):
        for i in range(sizes[layer]):
            v[layer, i] = v_init[layer]
        spk_cnt[layer] = 0
    syn = 0
    for t in range(ticks):
        for layer in range(last, -1, -1):
            size = sizes[layer]
            base = w_row[layer]
            for i in range(size):
                isyn[i] = zero
            n_pre = 0
            if layer == 0:
                if 1 <= t <= t_in:
                    n_pre = in_cnt[t - 1]
                    for k in range(n_pre):
                        r = base + in_idx[t - 1, k]
                        for i in range(size):
                            isyn[i] += np.float32(w[r, i])
            elif size < 16:
                # narrow layer (the output): sum each neuron's input in a register
                # rather than a load-add-store chain per presynaptic spike
                n_pre = spk_cnt[layer - 1]
                for i in range(size):
                    s = zero
                    for k in range(n_pre):
                        s += np.float32(w[base + spk_idx[layer - 1, k], i])
                    isyn[i] = s
            else:
                n_pre = spk_cnt[layer - 1]
                for k in range(n_pre):
                    r = base + spk_idx[layer - 1, k]
                    for i in range(size):
                        isyn[i] += np.float32(w[r, i])
            syn += n_pre * size
            a = alpha[layer]
            th = thr[layer]
            thc = thr_cmp[layer]
            if reset_sub[layer]:
                for i in range(size):
                    x = a * v[layer, i] + isyn[i]
                    x = x + i_offset[layer, i]
                    fired = x > thc
                    v[layer, i] = (x - th) if fired else x
                    spk[layer, i] = fired
            else:
                vr = v_reset[layer]
                for i in range(size):
                    x = a * v[layer, i] + isyn[i]
                    x = x + i_offset[layer, i]
                    fired = x > thc
                    v[layer, i] = vr if fired else x
                    spk[layer, i] = fired
            n = 0
            for i in range(size):
                spk_idx[layer, n] = i
                n += spk[layer, i]
            spk_cnt[layer] = n
            layer_spikes[b, layer] += n
            if layer == last:
                for i in range(size):
                    counts[b, i] += spk[layer, i]
        if do_record:
            for layer in range(n_layers):
                off = n_off[layer]
                for i in range(sizes[layer]):
                    record[b, t, off + i] = spk[layer, i]
            if v_record.shape[0] > 0:
                for i in range(sizes[last]):
                    v_record[b, t, i] = v[last, i]
    return syn


@njit(cache=True, nogil=True, boundscheck=False)
def _run_kernel(
    raster,  # uint8 [B, T_in, n_in]
    ticks,
    w,
    i_offset,
    layer_i,
    layer_f,
    thr_cmp,
    v_out,  # float32 [B, A] out: final membrane of the output layer
    count_out,  # int32 [B, A] out: spike count of the output layer
    layer_spikes,  # int64 [B, L] out
    syn_events,  # int64 [B] out
    record,  # uint8 [B, ticks, N] out, or [0, 0, 0]
    v_record,  # float32 [B, ticks, A] out (with record only), or [0, 0, 0]
):
    """Batched run from input rasters (any encoder). ``w`` is int8 (an artifact) or
    float32 (a float network, :func:`run_layers`): each weight is converted to float32
    where it is added."""
    n_batch, t_in, n_in = raster.shape
    n_layers, width = i_offset.shape
    w_row, sizes, n_off, reset_sub, thr, alpha, v_reset, v_init = _layer_rows(layer_i, layer_f)
    last = n_layers - 1
    v = np.empty((n_layers, width), dtype=np.float32)
    spk = np.zeros((n_layers, width), dtype=np.uint8)
    spk_idx = np.zeros((n_layers, width), dtype=np.int32)
    spk_cnt = np.zeros(n_layers, dtype=np.int64)
    isyn = np.empty(width, dtype=np.float32)
    in_idx = np.zeros((t_in, n_in), dtype=np.int32)
    in_cnt = np.empty(t_in, dtype=np.int32)
    for b in range(n_batch):
        for t in range(t_in):
            n = 0
            for j in range(n_in):
                in_idx[t, n] = j
                n += raster[b, t, j] != 0
            in_cnt[t] = n
        syn_events[b] = _run_one(
            in_idx, in_cnt, ticks, w, w_row, sizes, n_off, i_offset, thr, thr_cmp, alpha,
            reset_sub, v_reset, v_init, v, spk, spk_idx, spk_cnt, isyn, count_out,
            layer_spikes, b, record, v_record,
        )  # fmt: skip
        for i in range(v_out.shape[1]):
            v_out[b, i] = v[last, i]


@njit(cache=True, nogil=True, boundscheck=False, inline="always")
def _encode_row(obs, b, obs_offset, obs_scale, signed, centres, inv_width, phase, p, acc, in_idx,
                in_cnt):  # fmt: skip
    """Deterministic encoder of observation row ``b`` into spike lists (``in_idx``,
    ``in_cnt`` per input tick): :mod:`hw.encoding`'s float32 operations, one for one."""
    n_obs = obs.shape[1]
    per_dim = 2 if signed else centres.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    lo = np.float32(-1.0)
    # hw.encoding.normalize + intensities
    for d in range(n_obs):
        z = (obs[b, d] - obs_offset[d]) / obs_scale[d]
        z = min(max(z, lo), one)
        if signed:
            p[2 * d] = max(z, zero)
            p[2 * d + 1] = max(-z, zero)
        else:
            for c in range(per_dim):
                dist = abs(z - centres[c]) * inv_width
                p[d * per_dim + c] = max(one - dist, zero)
    # hw.encoding.spike_raster's deterministic accumulator, as spike lists
    n_in = p.shape[0]
    for j in range(n_in):
        acc[j] = phase
    for t in range(in_cnt.shape[0]):
        n = 0
        for j in range(n_in):
            x = acc[j] + p[j]
            fired = x >= one
            acc[j] = (x - one) if fired else x
            in_idx[t, n] = j
            n += fired
        in_cnt[t] = n


@njit(cache=True, nogil=True, boundscheck=False)
def _run_obs_kernel(
    obs,  # float32 [B, obs]: observations, shape already checked
    q,  # float32 [B, A] out: Q-values
    ints,  # int64 [2 + L, B] out: rows of actions, synaptic events, spikes per layer
    obs_offset,  # float32 [obs]
    obs_scale,  # float32 [obs]
    signed,  # bool: 'signed' channels, else 'tent'
    centres,  # float32 [bins] tent centres (np.linspace(-1, 1, bins) in float32)
    inv_width,  # float32
    phase,  # float32
    t_in,  # int: input ticks
    ticks,
    w,
    i_offset,
    layer_i,  # int64 [4, L] and float32 [4, L]: see _layer_rows
    layer_f,
    thr_cmp,  # float32 [L]: spike when v > thr_cmp
    count_readout,  # bool: q = (count * threshold + v) / scale, else q = v / scale
    q_scale,  # float32: weight_scale of the output layer
):
    """Deterministic encoder + network + readout + argmax, batched, into the caller's
    ``q`` and ``ints`` (two arrays made by the caller cost less than four boxed on the
    way out). Returns the first row with a non-finite value (then nothing written is
    meaningful), else -1."""
    n_batch, n_obs = obs.shape
    n_layers, width = i_offset.shape
    w_row, sizes, n_off, reset_sub, thr, alpha, v_reset, v_init = _layer_rows(layer_i, layer_f)
    last = n_layers - 1
    n_out = sizes[last]
    per_dim = 2 if signed else centres.shape[0]
    n_in = n_obs * per_dim
    for b in range(n_batch):
        for d in range(n_obs):
            if not np.isfinite(obs[b, d]):
                return b
    layer_spikes = ints[2:].T  # [B, L], as _run_one writes it
    layer_spikes[:] = 0
    counts = np.zeros((n_batch, n_out), dtype=np.int32)
    v = np.empty((n_layers, width), dtype=np.float32)
    spk = np.zeros((n_layers, width), dtype=np.uint8)
    spk_idx = np.zeros((n_layers, width), dtype=np.int32)
    spk_cnt = np.zeros(n_layers, dtype=np.int64)
    isyn = np.empty(width, dtype=np.float32)
    p = np.empty(n_in, dtype=np.float32)
    acc = np.empty(n_in, dtype=np.float32)
    in_idx = np.zeros((t_in, n_in), dtype=np.int32)
    in_cnt = np.empty(t_in, dtype=np.int32)
    no_record = np.zeros((0, 0, 0), dtype=np.uint8)
    no_v_record = np.zeros((0, 0, 0), dtype=np.float32)
    out_thr = thr[last]
    for b in range(n_batch):
        _encode_row(obs, b, obs_offset, obs_scale, signed, centres, inv_width, phase, p, acc,
                    in_idx, in_cnt)  # fmt: skip
        ints[1, b] = _run_one(
            in_idx, in_cnt, ticks, w, w_row, sizes, n_off, i_offset, thr, thr_cmp, alpha,
            reset_sub, v_reset, v_init, v, spk, spk_idx, spk_cnt, isyn, counts,
            layer_spikes, b, no_record, no_v_record,
        )  # fmt: skip
        # readout() and np.argmax (first maximum; a NaN wins, as in numpy)
        best = 0
        for i in range(n_out):
            raw = v[last, i]
            if count_readout:
                raw = np.float32(counts[b, i]) * out_thr + raw
            qi = raw / q_scale
            q[b, i] = qi
            if i > 0:
                qb = q[b, best]
                if (qi > qb or np.isnan(qi)) and not np.isnan(qb):
                    best = i
        ints[0, b] = best
    return -1


@njit(cache=True, nogil=True, boundscheck=False)
def _run_obs_traced_kernel(
    obs, obs_offset, obs_scale, signed, centres, inv_width, phase, t_in, ticks, w, i_offset,
    layer_i, layer_f, thr_cmp, count_readout, q_scale,
):  # fmt: skip
    """:func:`_run_obs_kernel` with everything a trace needs, in one call: returns
    ``(q_ticks [B, T, A], actions [B], layer_spikes [B, L], syn_events [B], (pairs, cuts,
    in_pairs, in_cuts), first_bad_row)``, the spikes of the record and of the input
    raster as :func:`hw.trace._pairs_kernel` cuts them; ``q_ticks[b, t]`` is the readout
    after tick ``t`` (the same float32 operations), its last tick the answer."""
    n_batch, n_obs = obs.shape
    n_layers, width = i_offset.shape
    w_row, sizes, n_off, reset_sub, thr, alpha, v_reset, v_init = _layer_rows(layer_i, layer_f)
    last = n_layers - 1
    n_out = sizes[last]
    per_dim = 2 if signed else centres.shape[0]
    n_in = n_obs * per_dim
    n_all = 0
    for k in range(n_layers):
        n_all += sizes[k]
    q_ticks = np.empty((n_batch, ticks, n_out), dtype=np.float32)
    actions = np.empty(n_batch, dtype=np.int64)
    layer_spikes = np.zeros((n_batch, n_layers), dtype=np.int64)
    counts = np.zeros((n_batch, n_out), dtype=np.int32)
    syn_events = np.empty(n_batch, dtype=np.int64)
    raster = np.zeros((n_batch, t_in, n_in), dtype=np.uint8)
    record = np.zeros((n_batch, ticks, n_all), dtype=np.uint8)
    v_record = np.empty((n_batch, ticks, n_out), dtype=np.float32)
    for b in range(n_batch):
        for d in range(n_obs):
            if not np.isfinite(obs[b, d]):
                no = (np.zeros((0, 2), np.int32), np.zeros(1, np.int64))
                return q_ticks, actions, layer_spikes, syn_events, (*no, *no), b
    v = np.empty((n_layers, width), dtype=np.float32)
    spk = np.zeros((n_layers, width), dtype=np.uint8)
    spk_idx = np.zeros((n_layers, width), dtype=np.int32)
    spk_cnt = np.zeros(n_layers, dtype=np.int64)
    isyn = np.empty(width, dtype=np.float32)
    p = np.empty(n_in, dtype=np.float32)
    acc = np.empty(n_in, dtype=np.float32)
    in_idx = np.zeros((t_in, n_in), dtype=np.int32)
    in_cnt = np.empty(t_in, dtype=np.int32)
    out_thr = thr[last]
    out_off = n_off[last]
    for b in range(n_batch):
        _encode_row(obs, b, obs_offset, obs_scale, signed, centres, inv_width, phase, p, acc,
                    in_idx, in_cnt)  # fmt: skip
        for t in range(t_in):
            for k in range(in_cnt[t]):
                raster[b, t, in_idx[t, k]] = 1
        syn_events[b] = _run_one(
            in_idx, in_cnt, ticks, w, w_row, sizes, n_off, i_offset, thr, thr_cmp, alpha,
            reset_sub, v_reset, v_init, v, spk, spk_idx, spk_cnt, isyn, counts,
            layer_spikes, b, record, v_record,
        )  # fmt: skip
        # readout() after every tick: the output's spikes so far and its membrane then
        for i in range(n_out):
            fired = 0
            for t in range(ticks):
                fired += record[b, t, out_off + i]
                raw = v_record[b, t, i]
                if count_readout:
                    raw = np.float32(fired) * out_thr + raw
                q_ticks[b, t, i] = raw / q_scale
        best = 0  # np.argmax of the last tick (first maximum; a NaN wins, as in numpy)
        for i in range(1, n_out):
            qi = q_ticks[b, ticks - 1, i]
            qb = q_ticks[b, ticks - 1, best]
            if (qi > qb or np.isnan(qi)) and not np.isnan(qb):
                best = i
        actions[b] = best
    starts = np.empty(n_layers + 1, dtype=np.int64)
    starts[0] = 0
    for k in range(n_layers):
        starts[k + 1] = starts[k] + sizes[k]
    pairs, cuts = _pairs_kernel(record, starts, ticks)
    in_starts = np.array([0, n_in], dtype=np.int64)
    in_pairs, in_cuts = _pairs_kernel(raster, in_starts, ticks)
    return q_ticks, actions, layer_spikes, syn_events, (pairs, cuts, in_pairs, in_cuts), -1


def readout(artifact: ModelArtifact, v_final: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Output layer state -> Q-values, float32 [B, actions] (see :class:`Readout`)."""
    out = artifact.layers[-1]
    if artifact.readout.kind == "membrane":
        raw = v_final.astype(np.float32)
    else:
        raw = counts.astype(np.float32) * np.float32(out.threshold) + v_final.astype(np.float32)
    return raw / np.float32(out.weight_scale)


def greedy_actions(q_values: np.ndarray) -> np.ndarray:
    """argmax over actions, the lowest index on ties; int64 [B]."""
    return np.argmax(q_values, axis=1).astype(np.int64)


def pack_layers(
    weights: list[np.ndarray],
    i_offsets: list[np.ndarray],
    constants: list[list[float]],
    reset_sub: list[bool],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Layers as the kernels take them: ``(w, i_offset, layer_i, layer_f)`` of
    :class:`CompiledNetwork` from per-layer weights [size, fan_in] (``w`` keeps their
    dtype), i_offsets [size], ``(threshold, alpha, v_reset, v_init)`` and reset kinds."""
    sizes = np.array([wt.shape[0] for wt in weights], dtype=np.int64)
    fan_in = np.array([wt.shape[1] for wt in weights], dtype=np.int64)
    width = int(sizes.max())
    w_row = np.concatenate([[0], np.cumsum(fan_in)[:-1]]).astype(np.int64)
    n_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    w = np.zeros((int(fan_in.sum()), width), dtype=weights[0].dtype)
    i_offset = np.zeros((len(weights), width), dtype=np.float32)
    for k, wt in enumerate(weights):
        w[w_row[k] : w_row[k] + fan_in[k], : sizes[k]] = wt.T
        i_offset[k, : sizes[k]] = i_offsets[k]
    layer_i = np.array([w_row, sizes, n_off, reset_sub], dtype=np.int64)
    layer_f = np.array(constants, dtype=np.float32).T.copy()
    return w, i_offset, layer_i, layer_f


@dataclass(frozen=True)
class CompiledNetwork:
    """An artifact laid out for the kernels (built once per model).

    Per-layer arrays are padded to the widest layer, ``S``: ``w`` [R, S] holds
    each layer's transposed weights (row ``w_row[l] + j``: from presynaptic
    neuron ``j``), ``i_offset`` [L, S]. The per-layer constants are two arrays
    (:func:`_layer_rows` names their rows; ``n_off`` places the layers in the flat
    neuron order of a spike record): a kernel call unboxes each array argument, so
    fewer of them make a request cheaper."""

    artifact: ModelArtifact
    w: np.ndarray
    i_offset: np.ndarray
    layer_i: np.ndarray  # int64 [4, L]: w_row, size, n_off, reset by subtraction (0/1)
    layer_f: np.ndarray  # float32 [4, L]: threshold, alpha, v_reset, v_init
    thr_ge: np.ndarray  # largest float32 below the threshold: "v >= thr" is "v > thr_ge"
    # deterministic encoder and readout constants for _run_obs_kernel
    encoder_args: tuple = ()
    readout_count: bool = False
    readout_scale: float = 1.0  # float32 value of the output weight_scale
    # as Python ints, for the checks and output arrays of a request
    n_obs: int = 0  # observation size
    n_out: int = 0  # the output layer's size
    n_layers: int = 0
    #: what the deterministic kernels take after the observations, per threshold test
    #: (built on first use, so that a request builds no argument tuple)
    _obs_args: dict[str, tuple] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> CompiledNetwork:
        layers = artifact.layers
        w, i_offset, layer_i, layer_f = pack_layers(
            # int8, as on the chip: a quarter of float32's cache lines (every sum of them
            # in float32 is exact, |sum| < 2**24, so the results are the same)
            [np.asarray(lay.weight, np.int8) for lay in layers],
            [lay.i_offset for lay in layers],
            [[lay.threshold, lay.alpha_decay, lay.v_reset, lay.v_init] for lay in layers],
            [lay.reset == "reset_by_subtraction" for lay in layers],
        )
        thr = layer_f[0]
        sizes = layer_i[1]
        enc = artifact.encoder
        bins = max(enc.bins, 2)
        encoder_args = (
            np.ascontiguousarray(artifact.obs_offset, dtype=np.float32),
            np.ascontiguousarray(artifact.obs_scale, dtype=np.float32),
            enc.channels == "signed",
            # the same float32 constants as hw.encoding.intensities
            np.linspace(-1.0, 1.0, bins, dtype=np.float32),
            np.float32((bins - 1) / 2.0),
            np.float32(enc.phase),
            int(enc.input_ticks),
            int(artifact.ticks),
        )
        return cls(
            artifact=artifact,
            w=w,
            i_offset=i_offset,
            layer_i=layer_i,
            layer_f=layer_f,
            thr_ge=np.nextafter(thr, np.float32(-np.inf)).astype(np.float32),
            encoder_args=encoder_args,
            readout_count=artifact.readout.kind == "count_membrane",
            readout_scale=np.float32(layers[-1].weight_scale),
            n_obs=artifact.observation_size,
            n_out=int(sizes[-1]),
            n_layers=len(layers),
        )

    def obs_args(self, settings: EmulatorSettings) -> tuple:
        """The arguments of :func:`_run_obs_kernel` (and its traced twin) after the
        observations: encoder, layers with the threshold test of ``settings``, readout."""
        args = self._obs_args.get(settings.threshold_comparison)
        if args is None:
            args = (*self.encoder_args, *self.layer_args(settings), self.readout_count,
                    self.readout_scale)  # fmt: skip
            self._obs_args[settings.threshold_comparison] = args
        return args

    def layer_args(self, settings: EmulatorSettings) -> tuple:
        """The network as the kernels take it, with the threshold test of ``settings``:
        ``(w, i_offset, layer_i, layer_f, thr_cmp)``."""
        # '>': the threshold itself (layer_f's first row)
        thr_cmp = self.thr_ge if settings.threshold_comparison == ">=" else self.layer_f[0]
        return self.w, self.i_offset, self.layer_i, self.layer_f, thr_cmp


@dataclass
class RunOutput:
    v_final: np.ndarray  # float32 [B, A]
    counts: np.ndarray  # int32 [B, A]
    layer_spikes: np.ndarray  # int64 [B, L]
    synaptic_events: np.ndarray  # int64 [B]
    record: np.ndarray | None  # uint8 [B, ticks, N] when asked for
    v_record: np.ndarray | None = None  # float32 [B, ticks, A]: output membranes, with record


def run_raster(
    net: CompiledNetwork,
    raster: np.ndarray,
    *,
    settings: EmulatorSettings = EmulatorSettings(),
    record: bool = False,
) -> RunOutput:
    """Run input spike rasters uint8 [B, input_ticks, n_inputs] through the network;
    ``record``: also every neuron's spikes and the output membranes, per tick."""
    return run_layers(raster, net.artifact.ticks, *net.layer_args(settings), record=record)


def run_layers(
    raster: np.ndarray,
    ticks: int,
    w: np.ndarray,
    i_offset: np.ndarray,
    layer_i: np.ndarray,
    layer_f: np.ndarray,
    thr_cmp: np.ndarray,
    *,
    record: bool = False,
) -> RunOutput:
    """:func:`run_raster` for layers packed by :func:`pack_layers` (int8 weights of an
    artifact, or float32 ones: :func:`agent.snn.simulate_fast` without gradients)."""
    raster = np.ascontiguousarray(raster, dtype=np.uint8)
    n_batch = raster.shape[0]
    n_out, n_layers = int(layer_i[1, -1]), layer_i.shape[1]
    v_out = np.zeros((n_batch, n_out), dtype=np.float32)
    counts = np.zeros((n_batch, n_out), dtype=np.int32)
    layer_spikes = np.zeros((n_batch, n_layers), dtype=np.int64)
    syn = np.zeros(n_batch, dtype=np.int64)
    if record:
        rec = np.zeros((n_batch, ticks, int(layer_i[1].sum())), dtype=np.uint8)
        v_rec = np.zeros((n_batch, ticks, n_out), dtype=np.float32)
    else:
        rec = np.zeros((0, 0, 0), dtype=np.uint8)
        v_rec = np.zeros((0, 0, 0), dtype=np.float32)
    _run_kernel(
        raster, ticks, w, i_offset, layer_i, layer_f, thr_cmp, v_out, counts, layer_spikes, syn,
        rec, v_rec,
    )  # fmt: skip
    if not record:
        return RunOutput(v_out, counts, layer_spikes, syn, None)
    return RunOutput(v_out, counts, layer_spikes, syn, rec, v_rec)


_FLOAT32 = np.dtype(np.float32)


def _as_checked_observations(net: CompiledNetwork, observations: Any) -> np.ndarray:
    """float32 C-contiguous [B, obs] (one observation becomes B = 1), shape checked;
    finiteness is the kernels' to check."""
    obs = observations
    if type(obs) is not np.ndarray or obs.dtype is not _FLOAT32:
        obs = np.asarray(obs, dtype=np.float32)
    if obs.ndim == 1:
        obs = obs[None, :]
    if obs.ndim != 2 or obs.shape[1] != net.n_obs:
        check_observations(net.artifact, observations)  # raises with the shared message
    if not obs.flags.c_contiguous:
        obs = np.ascontiguousarray(obs)
    return obs


def run_observations(
    net: CompiledNetwork,
    observations: np.ndarray,
    *,
    settings: EmulatorSettings = EmulatorSettings(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic-encoder fast path: observations float32 [B, obs] (checked) ->
    ``(q_values [B, A], actions [B], spikes_per_layer [B, L], synaptic_events [B])``.

    Same results as ``encode`` + :func:`run_raster` + :func:`readout` +
    :func:`greedy_actions`, in one kernel call. Raises ``ValueError`` for a
    wrong shape or a non-finite value, like :func:`check_observations`."""
    art = net.artifact
    if art.encoder.kind != "deterministic":
        raise ValueError("run_observations needs a deterministic encoder; use run_raster")
    obs = _as_checked_observations(net, observations)
    n = obs.shape[0]
    q = np.empty((n, net.n_out), np.float32)
    ints = np.empty((2 + net.n_layers, n), np.int64)  # rows: each one contiguous
    if _run_obs_kernel(obs, q, ints, *net.obs_args(settings)) >= 0:
        check_observations(art, obs)  # raises with the shared message
        raise ValueError("observations must be finite (no NaN or inf)")
    return q, ints[0], ints[2:].T, ints[1]


class EmulatorBackend(Backend):
    """Numba emulator of ``lif_no_delay`` populations on SpiNNaker2."""

    name = "emulator"
    inline_safe = True  # ~10 us per observation: cheaper than a thread hop
    thread_safe = True  # numba kernels release the GIL and share nothing mutable
    gives_traces = True

    def __init__(self, threshold_comparison: str = ">") -> None:
        super().__init__()
        self.settings = EmulatorSettings(threshold_comparison=threshold_comparison)

    def _prepare(self, artifact: ModelArtifact) -> CompiledNetwork:
        net = CompiledNetwork.from_artifact(artifact)
        # compile (or load from cache) and smoke-run once so the first request is fast
        zeros = np.zeros((1, artifact.observation_size), np.float32)
        run_raster(net, encode(artifact, zeros, seeds=request_seeds(artifact, 1)))
        if artifact.encoder.kind == "deterministic":
            run_observations(net, zeros)
        return net

    def _infer(
        self, net: CompiledNetwork, observations: Any, seeds: Any, trace: bool
    ) -> InferenceResult:
        art = net.artifact
        if trace:
            return self._traced(net, observations, seeds)
        if art.encoder.kind == "deterministic":
            seeds = None  # nothing random to seed
            q, actions, spikes, syn = run_observations(net, observations, settings=self.settings)
        else:
            obs = check_observations(art, observations)
            seeds = request_seeds(art, obs.shape[0], seeds)
            out = run_raster(net, encode(art, obs, seeds=seeds), settings=self.settings)
            q = readout(art, out.v_final, out.counts)
            actions = greedy_actions(q)
            spikes, syn = out.layer_spikes, out.synaptic_events
        # positional: a call with keywords costs twice as much (InferenceResult's order:
        # q_values, actions, ticks, spikes_per_layer, synaptic_events, backend,
        # compute_us (set by Backend.infer), seeds)
        return InferenceResult(q, actions, art.ticks, spikes, syn, self.name, 0.0, seeds)

    def _traced(self, net: CompiledNetwork, observations: Any, seeds: Any) -> InferenceResult:
        """The raster path with the full record: the same answer, plus the traces."""
        art = net.artifact
        if art.encoder.kind == "deterministic":  # one compiled call, as the untraced path
            return self._traced_deterministic(net, observations)
        obs = check_observations(art, observations)
        seeds = request_seeds(art, obs.shape[0], seeds)
        raster = encode(art, obs, seeds=seeds)
        out = run_raster(net, raster, settings=self.settings, record=True)
        assert out.record is not None and out.v_record is not None
        q_ticks = output_q(art, out.record, out.v_record)
        q = np.ascontiguousarray(q_ticks[:, -1])  # the last tick's readout: the answer
        traces = build_traces(art, raster, out.record, q_ticks)
        return InferenceResult(
            q_values=q,
            actions=greedy_actions(q),
            ticks=art.ticks,
            spikes_per_layer=out.layer_spikes,
            synaptic_events=out.synaptic_events,
            backend=self.name,
            seeds=seeds,
            traces=traces,
        )

    def _traced_deterministic(self, net: CompiledNetwork, observations: Any) -> InferenceResult:
        art = net.artifact
        obs = _as_checked_observations(net, observations)
        q_ticks, actions, spikes, syn, pairs, bad = _run_obs_traced_kernel(
            obs, *net.obs_args(self.settings)
        )
        if bad >= 0:
            check_observations(art, obs)  # raises with the shared message
            raise ValueError("observations must be finite (no NaN or inf)")
        return InferenceResult(
            q_values=np.ascontiguousarray(q_ticks[:, -1]),  # the last tick's readout
            actions=actions,
            ticks=art.ticks,
            spikes_per_layer=spikes,
            synaptic_events=syn,
            backend=self.name,
            traces=traces_from_pairs(art, *pairs, q_ticks),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threshold_comparison": self.settings.threshold_comparison}
