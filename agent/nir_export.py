"""Export an s2loop artifact as a NIR graph, and a small numpy reader that runs one.

NIR (the ``nir`` package) describes neurons in continuous time; each reader picks a
time step and an integrator. This module writes graphs that read back as our
discrete ``lif_no_delay`` network under **forward Euler at dt = 1e-4 s**
(:data:`NIR_DT`), the step snnTorch's importer hard-codes and one that
py-spinnaker2's ``s2_nir`` accepts (``ConversionConfig(dt=1e-4,
integrator=IntegratorMethod.FORWARD)``). NIR time is a unit here, not wall
time: one NIR step of 1e-4 s is one chip tick (1 ms on the chip by default).

Algebra, per layer (``alpha = alpha_decay``, ``dt = NIR_DT``)::

    chip tick:      v = alpha * v + W @ s + i_offset ; spike if v > threshold ; reset
    NIR LIF:        tau * dv/dt = (v_leak - v) + r * I ,  I = W @ s + b  (Affine)
    forward Euler:  v = (1 - dt/tau) * v + (dt*r/tau) * I + (dt/tau) * v_leak

    exported:       tau = dt / (1 - alpha) ,  r = 1 / (1 - alpha) (so dt*r/tau = 1),
                    v_leak = 0 ,  v_threshold = threshold ,  b = i_offset

``s2_nir`` turns that back into ``alpha_decay = 1 - dt/tau``, ``threshold =
v_threshold / (dt*r/tau)`` and ``i_offset = b`` (the Affine bias, applied every
tick); snnTorch into ``Leaky(beta = 1 - dt/tau, threshold = v_threshold)``.
A layer without leak (``alpha_decay == 1``) becomes ``IF(r=1)``, read by both as
``v += I`` per step (they ignore dt for IF). Weights are the artifact's int8
values as float32 (or ``--float``: the float master weights, thresholds and
offsets, unscaled).

What NIR cannot say, and where it goes instead (graph ``metadata``, nested under
plain keys; each neuron node's ``metadata`` repeats its layer's facts):

- **the input encoder** (observation -> spike raster): ``encoder``,
  ``obs_offset``, ``obs_scale``; the reader applies it (:func:`encode_observations`).
  The graph's ``Input`` takes that raster, ``input_ticks`` steps, zeros after.
- **the run length** ``ticks`` and **the readout** (Q from the output layer's final
  membrane, or spike count * threshold + membrane, divided by ``readout.scale``):
  NIR outputs spikes only.
- **the reset mode**: NIR 1.0 defines LIF/IF reset as ``v = v_reset``; our
  ``reset_by_subtraction`` is in each node's ``metadata["reset"]`` (``s2_nir``:
  ``ResetMethod.SUBTRACT``; snnTorch's importer always resets to zero).
- **one tick of delay per hop**: a spike of tick t (input or neuron) reaches the
  next layer at t + 1. NIR edges carry no delay, so by default the graph says
  ``hop_delay_ticks = 1`` (``s2_nir``: ``conn_delay=0``, as the SDK adds one tick
  to every projection). ``explicit_delays=True`` instead puts a ``nir.Delay`` of
  one step before every weight node and sets ``hop_delay_ticks = 0`` (``s2_nir``
  rejects ``Delay`` nodes).
- ``v_init`` (NIR has no initial state) and ``threshold_comparison`` (strict ``>``,
  as NIR's spike condition).

Exactness: :func:`run_nir_graph` on an exported integer graph reproduces the
emulator bit for bit (spikes, final membrane, Q-values, actions). It fuses each
weight node into the following neuron node as ``s2_nir`` does, so the float32
update keeps the chip's order ``(alpha * v + I_syn) + i_offset``. Synaptic sums are
exact for integer weights; for float weights they are summed in float64 and
rounded once, which can differ in the last bit from the emulator's sequential
float32 sum. A reader that adds the bias inside the weight node (snnTorch) rounds
``alpha*v + (I_syn + b)`` instead, so near-threshold ties can in principle differ.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nir
import numpy as np

from hw.artifact import ModelArtifact, encoder_from_dict
from hw.encoding import intensities, spike_raster

NIR_DT = 1e-4
FORMAT = "s2loop-nir"
FORMAT_VERSION = 1
RESET_NIR = {"reset_by_subtraction": "subtract", "reset_to_v_reset": "zero"}

_WEIGHT_NODES = (nir.Affine, nir.Linear)
_NEURON_NODES = (nir.LIF, nir.IF)


# --------------------------------------------------------------------------- export


def _neuron_node(
    size: int,
    *,
    alpha: float,
    threshold: float,
    v_reset: float,
    meta: dict[str, Any],
) -> nir.NIRNode:
    thr = np.full(size, threshold, dtype=np.float32)
    vr = np.full(size, v_reset, dtype=np.float32)
    if alpha == 1.0:
        return nir.IF(r=np.ones(size), v_threshold=thr, v_reset=vr, metadata=meta)
    if not alpha < 1.0:
        raise ValueError(f"alpha_decay {alpha} > 1 has no NIR LIF equivalent (negative tau)")
    one_minus = 1.0 - float(alpha)
    return nir.LIF(
        tau=np.full(size, NIR_DT / one_minus),
        r=np.full(size, 1.0 / one_minus),
        v_leak=np.zeros(size),
        v_threshold=thr,
        v_reset=vr,
        metadata=meta,
    )


def to_nir(
    artifact: ModelArtifact, *, use_float: bool = False, explicit_delays: bool = False
) -> nir.NIRGraph:
    """The artifact as a NIR graph ``Input -> Affine -> LIF|IF -> ... -> Output``.

    ``use_float``: the float master parameters instead of the int8 chip network
    (raises ``ValueError`` if the artifact has none). ``explicit_delays``: one
    ``nir.Delay`` step before each ``Affine`` instead of the implicit hop delay.
    """
    artifact.validate()
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array([artifact.input_size]))}
    chain = ["input"]
    resets = []
    for i, layer in enumerate(artifact.layers):
        if use_float:
            if layer.float_weight is None or layer.float_i_offset is None:
                raise ValueError(f"layer {layer.name!r} has no float master weights")
            weight = np.asarray(layer.float_weight, np.float32)
            bias = np.asarray(layer.float_i_offset, np.float32)
            unit = float(layer.weight_scale)  # chip units per float unit
            threshold = (
                float(layer.float_threshold)
                if layer.float_threshold is not None
                else layer.threshold / unit
            )
        else:
            weight = layer.weight.astype(np.float32)
            bias = layer.i_offset.astype(np.float32)
            unit = 1.0
            threshold = layer.threshold
        v_reset = float(np.float32(layer.v_reset / unit))
        v_init = float(np.float32(layer.v_init / unit))
        if explicit_delays:
            name = f"layer{i}_delay"
            nodes[name] = nir.Delay(delay=np.full(layer.fan_in, NIR_DT))
            chain.append(name)
        w_name, n_name = f"layer{i}_affine", f"layer{i}_neurons"
        nodes[w_name] = nir.Affine(weight=weight, bias=bias)
        nodes[n_name] = _neuron_node(
            layer.size,
            alpha=float(np.float32(layer.alpha_decay)),
            threshold=float(np.float32(threshold)),
            v_reset=v_reset,
            meta={
                "layer": layer.name,
                "alpha_decay": float(np.float32(layer.alpha_decay)),
                "threshold": float(np.float32(threshold)),
                "reset": layer.reset,
                "v_reset": v_reset,
                "v_init": v_init,
                "weight_scale": float(layer.weight_scale),
                "neuron_model": layer.neuron_model,
            },
        )
        chain += [w_name, n_name]
        resets.append(layer.reset)
    out = artifact.layers[-1]
    nodes["output"] = nir.Output(output_type=np.array([out.size]))
    chain.append("output")
    out_node = nodes[chain[-2]]
    reset = resets[0] if len(set(resets)) == 1 else "per-layer"
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": artifact.name,
        "env_id": artifact.env_id,
        "artifact_sha256": artifact.sha256,
        "action_names": json.dumps(list(artifact.action_names)),
        "weights": "float" if use_float else "int8",
        "dt": NIR_DT,
        "integrator": "forward-euler",
        "ticks": int(artifact.ticks),
        "hop_delay_ticks": 0 if explicit_delays else 1,
        "threshold_comparison": ">",
        "reset": reset,
        "encoder": asdict(artifact.encoder),
        "obs_offset": np.asarray(artifact.obs_offset, np.float32),
        "obs_scale": np.asarray(artifact.obs_scale, np.float32),
        "readout": {
            "kind": artifact.readout.kind,
            "node": chain[-2],
            "threshold": float(out_node.v_threshold[0]),
            "scale": 1.0 if use_float else float(np.float32(out.weight_scale)),
        },
        "s2_nir": {
            "dt": NIR_DT,
            "integrator": "Forward-Euler",
            "conn_delay": 0,
            "scale_weights": False,
            "reset": RESET_NIR.get(reset, "per-layer"),
        },
    }
    edges = list(itertools.pairwise(chain))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export_nir(
    artifact: ModelArtifact,
    path: str | os.PathLike[str],
    *,
    use_float: bool = False,
    explicit_delays: bool = False,
) -> Path:
    """Write :func:`to_nir` of ``artifact`` to ``path`` (HDF5, ``nir.write``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = to_nir(artifact, use_float=use_float, explicit_delays=explicit_delays)
    nir.write(path, graph)
    return path


# --------------------------------------------------------------------------- reader


def _plain(value: Any) -> Any:
    """Metadata as read back from HDF5 (numpy scalars, bytes) -> Python values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return value
    if isinstance(value, np.generic | np.ndarray):
        return value.item()
    return value


def graph_metadata(graph: nir.NIRGraph) -> dict[str, Any]:
    """The graph's s2loop metadata as plain Python values; ``ValueError`` if absent."""
    meta = _plain(dict(graph.metadata or {}))
    if meta.get("format") != FORMAT:
        raise ValueError("not an s2loop NIR graph (metadata.format is missing)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported s2loop NIR format_version {meta.get('format_version')!r}")
    return meta


def encode_observations(
    graph: nir.NIRGraph, observations: np.ndarray, seeds: np.ndarray | None = None
) -> np.ndarray:
    """Observations [B, obs] -> the graph Input's raster uint8 [B, input_ticks, n],
    using only the encoder recorded in the graph's metadata (``seeds``: one per
    observation for a Poisson encoder, as :func:`hw.encoding.encode`)."""
    meta = graph_metadata(graph)
    encoder = encoder_from_dict(meta["encoder"])
    offset = np.asarray(meta["obs_offset"], np.float32)
    scale = np.asarray(meta["obs_scale"], np.float32)
    obs = np.asarray(observations, np.float32)
    z = np.clip((obs - offset) / scale, np.float32(-1.0), np.float32(1.0))
    return spike_raster(encoder, intensities(encoder, z), seeds=seeds)


@dataclass
class NIRRunResult:
    q_values: np.ndarray  # float32 [B, actions]
    actions: np.ndarray  # int64 [B]
    v_final: np.ndarray  # float32 [B, actions]
    counts: np.ndarray  # int32 [B, actions]
    layer_spikes: np.ndarray  # int64 [B, neuron nodes]
    record: np.ndarray  # uint8 [B, ticks, all neurons], neuron nodes in chain order


def _chain(graph: nir.NIRGraph) -> list[str]:
    succ: dict[str, str] = {}
    for src, dst in graph.edges:
        if src in succ:
            raise ValueError(f"node {src!r} has several successors; only chains are supported")
        succ[src] = dst
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise ValueError("the graph needs exactly one Input node")
    order = [inputs[0]]
    while order[-1] in succ:
        order.append(succ[order[-1]])
        if len(order) > len(graph.nodes):
            raise ValueError("the graph has a cycle")
    if not isinstance(graph.nodes[order[-1]], nir.Output):
        raise ValueError("the chain from Input does not end in an Output node")
    return order


def _shift(series: np.ndarray, ticks: int) -> np.ndarray:
    """Delay a [B, T, n] series by ``ticks`` steps (zeros shifted in)."""
    if ticks == 0:
        return series
    out = np.zeros_like(series)
    out[:, ticks:] = series[:, :-ticks]
    return out


def _lif_params(node: nir.NIRNode, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step (alpha, gain on I, constant drive from v_leak) of a LIF/IF node."""
    if isinstance(node, nir.IF):
        r = np.asarray(node.r, np.float64).ravel()
        return np.ones_like(r), r, np.zeros_like(r)
    tau = np.asarray(node.tau, np.float64).ravel()
    r = np.asarray(node.r, np.float64).ravel()
    k = dt / tau
    return 1.0 - k, k * r, k * np.asarray(node.v_leak, np.float64).ravel()


def run_nir_graph(
    graph: nir.NIRGraph,
    observations: np.ndarray | None = None,
    *,
    raster: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
) -> NIRRunResult:
    """Run an s2loop NIR graph on observations (encoded from the metadata) or on a
    ready input raster uint8 [B, input_ticks, n], with numpy only.

    Semantics: forward Euler at the metadata's ``dt``; each weight node feeds the
    next neuron node, its bias becoming that node's per-tick ``i_offset`` (as
    ``s2_nir`` does); ``hop_delay_ticks`` of delay on every weight node's input plus
    any ``nir.Delay``; reset and ``v_init`` from each node's metadata (NIR's reset
    to ``v_reset`` and 0 where absent); the metadata's readout gives Q-values.
    """
    meta = graph_metadata(graph)
    ticks = int(meta["ticks"])
    dt = float(meta["dt"])
    hop = int(meta["hop_delay_ticks"])
    if raster is None:
        if observations is None:
            raise ValueError("give observations or a raster")
        raster = encode_observations(graph, observations, seeds)
    raster = np.asarray(raster, np.uint8)
    n_batch, t_in = raster.shape[:2]
    series = np.zeros((n_batch, ticks, raster.shape[2]), np.float32)
    series[:, : min(t_in, ticks)] = raster[:, :ticks]
    pending: tuple[np.ndarray, np.ndarray] | None = None
    spikes_by_node: list[np.ndarray] = []
    names: list[str] = []
    v = np.zeros((n_batch, 0), np.float32)
    for name in _chain(graph)[1:]:
        node = graph.nodes[name]
        if isinstance(node, nir.Delay):
            steps = np.unique(np.rint(np.asarray(node.delay, np.float64) / dt).astype(np.int64))
            if steps.size != 1 or steps[0] < 0:
                raise ValueError(f"{name}: only one non-negative delay per Delay node")
            series = _shift(series, int(steps[0]))
        elif isinstance(node, _WEIGHT_NODES):
            if pending is not None:
                raise ValueError(f"{name}: two weight nodes in a row")
            weight = np.asarray(node.weight, np.float64)
            bias = (
                np.asarray(node.bias, np.float64)
                if isinstance(node, nir.Affine)
                else np.zeros(weight.shape[0])
            )
            # synaptic input per tick, summed in float64 and rounded once
            i_syn = (_shift(series, hop).astype(np.float64) @ weight.T).astype(np.float32)
            pending = (i_syn, bias)
        elif isinstance(node, _NEURON_NODES):
            if pending is None:
                raise ValueError(f"{name}: a neuron node must follow a weight node")
            i_syn, bias = pending
            pending = None
            nmeta = _plain(dict(node.metadata or {}))
            alpha, gain, drive = _lif_params(node, dt)
            if np.allclose(gain, 1.0, rtol=1e-9, atol=0.0):
                i_offset = (bias + drive).astype(np.float32)
            else:
                i_syn = (i_syn * gain).astype(np.float32)
                i_offset = (bias * gain + drive).astype(np.float32)
            alpha32 = alpha.astype(np.float32)
            threshold = np.asarray(node.v_threshold, np.float32).ravel()
            v_reset = np.asarray(node.v_reset, np.float32).ravel()
            subtract = nmeta.get("reset", "reset_to_v_reset") == "reset_by_subtraction"
            v = np.full((n_batch, threshold.size), nmeta.get("v_init", 0.0), np.float32)
            out = np.zeros((n_batch, ticks, threshold.size), np.float32)
            for t in range(ticks):
                v = (alpha32 * v + i_syn[:, t]) + i_offset
                fired = v > threshold
                if subtract:
                    v = np.where(fired, v - threshold, v)
                else:
                    v = np.where(fired, v_reset, v)
                out[:, t] = fired
            series = out
            spikes_by_node.append(out)
            names.append(name)
        elif isinstance(node, nir.Output):
            break
        else:
            raise ValueError(f"{name}: unsupported node type {type(node).__name__}")
    readout = meta["readout"]
    if not names or readout["node"] != names[-1]:
        raise ValueError("the readout node is not the last neuron node")
    counts = spikes_by_node[-1].sum(axis=1).astype(np.int32)
    v_final = v.astype(np.float32)
    if readout["kind"] == "membrane":
        raw = v_final
    elif readout["kind"] == "count_membrane":
        raw = counts.astype(np.float32) * np.float32(readout["threshold"]) + v_final
    else:
        raise ValueError(f"unknown readout kind {readout['kind']!r}")
    q = raw / np.float32(readout["scale"])
    record = np.concatenate(spikes_by_node, axis=2).astype(np.uint8)
    layer_spikes = np.stack([s.sum(axis=(1, 2)) for s in spikes_by_node], axis=1)
    return NIRRunResult(
        q_values=q.astype(np.float32),
        actions=np.argmax(q, axis=1).astype(np.int64),
        v_final=v_final,
        counts=counts,
        layer_spikes=layer_spikes.astype(np.int64),
        record=record,
    )
