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
:func:`lif_step` is the same update written plainly in numpy, for tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from hw.artifact import ModelArtifact
from hw.backend import Backend, InferenceResult, check_observations
from hw.encoding import encode


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


@njit(cache=True, nogil=True, boundscheck=False)
def _run_kernel(
    raster,  # uint8 [B, T_in, n_in]
    ticks,  # int
    w,  # float32 flat: per layer weight.T [fan_in, size] row-major
    w_off,  # int64 [L]
    sizes,  # int64 [L]
    n_off,  # int64 [L] offset of each layer in the neuron state
    i_offset,  # float32 [N]
    thr,  # float32 [L]
    alpha,  # float32 [L]
    reset_sub,  # bool [L]
    v_reset,  # float32 [L]
    v_init,  # float32 [L]
    inclusive,  # bool
    v_out,  # float32 [B, A] final membrane of the output layer
    count_out,  # int32 [B, A] spike count of the output layer
    layer_spikes,  # int64 [B, L]
    syn_events,  # int64 [B]
    record,  # uint8 [B, ticks, N] or [0, 0, 0]
):
    n_batch = raster.shape[0]
    t_in = raster.shape[1]
    n_in = raster.shape[2]
    n_layers = sizes.shape[0]
    n_total = i_offset.shape[0]
    do_record = record.shape[0] > 0
    last = n_layers - 1
    v = np.empty(n_total, dtype=np.float32)
    prev = np.zeros(n_total, dtype=np.uint8)
    cur = np.zeros(n_total, dtype=np.uint8)
    isyn = np.empty(n_total, dtype=np.float32)
    pre_idx = np.empty(max(n_in, n_total), dtype=np.int64)
    zero = np.float32(0.0)
    for b in range(n_batch):
        for layer in range(n_layers):
            for i in range(n_off[layer], n_off[layer] + sizes[layer]):
                v[i] = v_init[layer]
        prev[:] = 0
        syn_b = 0
        for t in range(ticks):
            for layer in range(n_layers):
                size = sizes[layer]
                off = n_off[layer]
                # presynaptic spikes of the previous tick
                n_pre = 0
                if layer == 0:
                    if 1 <= t <= t_in:
                        row = raster[b, t - 1]
                        for j in range(n_in):
                            if row[j]:
                                pre_idx[n_pre] = j
                                n_pre += 1
                else:
                    poff = n_off[layer - 1]
                    for j in range(sizes[layer - 1]):
                        if prev[poff + j]:
                            pre_idx[n_pre] = j
                            n_pre += 1
                for i in range(size):
                    isyn[off + i] = zero
                base = w_off[layer]
                for k in range(n_pre):
                    r = base + pre_idx[k] * size
                    for i in range(size):
                        isyn[off + i] += w[r + i]
                syn_b += n_pre * size
                a = alpha[layer]
                th = thr[layer]
                sub = reset_sub[layer]
                vr = v_reset[layer]
                n_spk = 0
                for i in range(size):
                    x = a * v[off + i] + isyn[off + i]
                    x = x + i_offset[off + i]
                    fired = (x >= th) if inclusive else (x > th)
                    if fired:
                        n_spk += 1
                        if sub:
                            x = x - th
                        else:
                            x = vr
                        cur[off + i] = 1
                    else:
                        cur[off + i] = 0
                    v[off + i] = x
                layer_spikes[b, layer] += n_spk
                if layer == last:
                    for i in range(size):
                        count_out[b, i] += cur[off + i]
            if do_record:
                for i in range(n_total):
                    record[b, t, i] = cur[i]
            tmp = prev
            prev = cur
            cur = tmp
        off = n_off[last]
        for i in range(sizes[last]):
            v_out[b, i] = v[off + i]
        syn_events[b] = syn_b


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


@dataclass(frozen=True)
class CompiledNetwork:
    """An artifact laid out flat for the kernel."""

    artifact: ModelArtifact
    w: np.ndarray
    w_off: np.ndarray
    sizes: np.ndarray
    n_off: np.ndarray
    i_offset: np.ndarray
    thr: np.ndarray
    alpha: np.ndarray
    reset_sub: np.ndarray
    v_reset: np.ndarray
    v_init: np.ndarray

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> CompiledNetwork:
        layers = artifact.layers
        sizes = np.array([lay.size for lay in layers], dtype=np.int64)
        n_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        blocks = [np.ascontiguousarray(lay.weight.T.astype(np.float32)).ravel() for lay in layers]
        w_off = np.concatenate([[0], np.cumsum([b.size for b in blocks])[:-1]]).astype(np.int64)
        return cls(
            artifact=artifact,
            w=np.concatenate(blocks).astype(np.float32),
            w_off=w_off,
            sizes=sizes,
            n_off=n_off,
            i_offset=np.concatenate([lay.i_offset for lay in layers]).astype(np.float32),
            thr=np.array([lay.threshold for lay in layers], dtype=np.float32),
            alpha=np.array([lay.alpha_decay for lay in layers], dtype=np.float32),
            reset_sub=np.array([lay.reset == "reset_by_subtraction" for lay in layers]),
            v_reset=np.array([lay.v_reset for lay in layers], dtype=np.float32),
            v_init=np.array([lay.v_init for lay in layers], dtype=np.float32),
        )


@dataclass
class RunOutput:
    v_final: np.ndarray  # float32 [B, A]
    counts: np.ndarray  # int32 [B, A]
    layer_spikes: np.ndarray  # int64 [B, L]
    synaptic_events: np.ndarray  # int64 [B]
    record: np.ndarray | None  # uint8 [B, ticks, N] when asked for


def run_raster(
    net: CompiledNetwork,
    raster: np.ndarray,
    *,
    settings: EmulatorSettings = EmulatorSettings(),
    record: bool = False,
) -> RunOutput:
    """Run input spike rasters uint8 [B, input_ticks, n_inputs] through the network."""
    art = net.artifact
    raster = np.ascontiguousarray(raster, dtype=np.uint8)
    n_batch = raster.shape[0]
    n_out = int(net.sizes[-1])
    v_out = np.zeros((n_batch, n_out), dtype=np.float32)
    counts = np.zeros((n_batch, n_out), dtype=np.int32)
    layer_spikes = np.zeros((n_batch, len(net.sizes)), dtype=np.int64)
    syn = np.zeros(n_batch, dtype=np.int64)
    rec = (
        np.zeros((n_batch, art.ticks, int(net.sizes.sum())), dtype=np.uint8)
        if record
        else np.zeros((0, 0, 0), dtype=np.uint8)
    )
    _run_kernel(
        raster,
        art.ticks,
        net.w,
        net.w_off,
        net.sizes,
        net.n_off,
        net.i_offset,
        net.thr,
        net.alpha,
        net.reset_sub,
        net.v_reset,
        net.v_init,
        settings.threshold_comparison == ">=",
        v_out,
        counts,
        layer_spikes,
        syn,
        rec,
    )
    return RunOutput(v_out, counts, layer_spikes, syn, rec if record else None)


class EmulatorBackend(Backend):
    """Numba emulator of ``lif_no_delay`` populations on SpiNNaker2."""

    name = "emulator"

    def __init__(self, threshold_comparison: str = ">", **_: Any) -> None:
        super().__init__()
        self.settings = EmulatorSettings(threshold_comparison=threshold_comparison)

    def _prepare(self, artifact: ModelArtifact) -> CompiledNetwork:
        net = CompiledNetwork.from_artifact(artifact)
        # compile (or load from cache) and smoke-run once so the first request is fast
        run_raster(net, encode(artifact, np.zeros((1, artifact.observation_size), np.float32)))
        return net

    def infer(
        self, model: str, observations: np.ndarray, rng: np.random.Generator | None = None
    ) -> InferenceResult:
        net: CompiledNetwork = self._get(model)
        art = net.artifact
        start = time.perf_counter()
        obs = check_observations(art, observations)
        out = run_raster(net, encode(art, obs, rng), settings=self.settings)
        q = readout(art, out.v_final, out.counts)
        actions = greedy_actions(q)
        elapsed = (time.perf_counter() - start) * 1e6
        return InferenceResult(
            q_values=q,
            actions=actions,
            ticks=art.ticks,
            spikes_per_layer=out.layer_spikes,
            synaptic_events=out.synaptic_events,
            backend=self.name,
            compute_us=elapsed,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threshold_comparison": self.settings.threshold_comparison}
