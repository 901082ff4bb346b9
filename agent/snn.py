"""The one forward of a spiking Q-network in torch, with the emulator's tick semantics
exactly; training, the float reference backend and the tests all run it.

The network is a stack of ``lif_no_delay`` populations fed by the artifact's
input encoder (:func:`hw.encoding.encode`, called on the host; the torch side
never re-implements it). One tick, per layer ``k`` (float32, ops in this order)::

    pre   = input raster of tick t-1 (k = 0, only for 1 <= t <= input_ticks)
            or the spikes of layer k-1 at tick t-1
    v     = alpha_decay * v + pre @ W.T
    v     = v + i_offset
    spike = v > threshold                       (strict)
    v     = v - threshold   or   v_reset        where spike

After ``ticks`` ticks the output layer becomes Q-values through the readout of
:func:`hw.emulator.readout` and actions are the argmax (lowest index on ties).

Three ways to run the same function (:class:`LayerParams` lists):

- ``float``: the float master parameters (training, the reference backend);
- ``quant``: fake-quantized by :func:`fake_quant`, as export does: per layer
  ``s = 127 / max|W|`` (the SDK's rule; or a percentile of ``|W|``, clipping the
  few largest weights), ``W_q = clip(round(W * s), -127, 127)`` (straight-through
  gradient), ``threshold * s`` and ``i_offset * s``; the readout divides by ``s``.
  Bit-identical to the emulator running the exported artifact;
- from an artifact's int8 weights (:func:`artifact_params`).

Spikes use a surrogate gradient (fast sigmoid) in the backward pass only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hw.artifact import ModelArtifact
from hw.encoding import encode

# Output layer: a non-spiking integrator (alpha 1, threshold never reached).
OUTPUT_THRESHOLD = 1e9


@dataclass
class LayerParams:
    """One population in the units the tick loop runs in (all float32 tensors)."""

    weight: torch.Tensor  # [size, fan_in]
    i_offset: torch.Tensor  # [size]
    threshold: torch.Tensor  # 0-d
    alpha_decay: torch.Tensor  # 0-d
    reset_by_subtraction: bool
    v_reset: torch.Tensor  # 0-d
    v_init: torch.Tensor  # 0-d
    scale: torch.Tensor  # 0-d; readout divides the output layer by it


@dataclass
class SimOutput:
    q_values: torch.Tensor  # float32 [B, A]
    v_final: torch.Tensor  # float32 [B, A]
    counts: torch.Tensor  # float32 [B, A]
    spikes_per_layer: torch.Tensor  # float32 [B, L]
    record: torch.Tensor | None = None  # uint8 [B, ticks, N] (all populations concatenated)
    rates: list[torch.Tensor] = field(default_factory=list)  # mean rate per layer, [B, size]


class _SpikeFn(torch.autograd.Function):
    """``v > threshold`` forward; fast-sigmoid surrogate ``1 / (1 + k|x|)^2`` backward,
    with ``x = (v - threshold) / threshold`` (so the slope is scale-free)."""

    @staticmethod
    def forward(ctx, v, threshold, slope):  # type: ignore[override]
        ctx.save_for_backward(v, threshold)
        ctx.slope = slope
        return (v > threshold).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        v, threshold = ctx.saved_tensors
        thr = threshold.abs().clamp_min(1e-6)
        x = (v - threshold) / thr
        sg = 1.0 / (1.0 + ctx.slope * x.abs()) ** 2 / thr
        return grad * sg, None, None


class _RoundSTE(torch.autograd.Function):
    """Round half to even forward (exact, as ``np.round``), identity backward."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad


def f32(x: float) -> torch.Tensor:
    return torch.tensor(np.float32(x), dtype=torch.float32)


def simulate(
    raster: torch.Tensor,
    layers: list[LayerParams],
    ticks: int,
    readout: str = "membrane",
    *,
    record: bool = False,
    slope: float = 5.0,
) -> SimOutput:
    """Run input rasters (float32 0/1 [B, input_ticks, n_in]) through ``layers``."""
    n_b, t_in = raster.shape[0], raster.shape[1]
    v = [lay.v_init.expand(n_b, lay.weight.shape[0]).clone() for lay in layers]
    prev: list[torch.Tensor | None] = [None] * len(layers)
    counts = [raster.new_zeros(n_b, lay.weight.shape[0]) for lay in layers]
    rec: list[torch.Tensor] = []
    for t in range(ticks):
        cur: list[torch.Tensor] = []
        for k, lay in enumerate(layers):
            pre = (raster[:, t - 1] if 1 <= t <= t_in else None) if k == 0 else prev[k - 1]
            x = lay.alpha_decay * v[k]
            if pre is not None:
                x = x + pre @ lay.weight.T
            x = x + lay.i_offset
            s = _SpikeFn.apply(x, lay.threshold, slope)
            if lay.reset_by_subtraction:
                x = x - s.detach() * lay.threshold
            else:
                x = torch.where(s.detach() > 0, lay.v_reset, x)
            v[k] = x
            counts[k] = counts[k] + s
            cur.append(s)
        if record:
            rec.append(torch.cat([c.detach() for c in cur], dim=1).to(torch.uint8))
        prev = cur
    out = layers[-1]
    if readout == "membrane":
        raw = v[-1]
    else:
        raw = counts[-1] * out.threshold + v[-1]
    q = raw / out.scale
    return SimOutput(
        q_values=q,
        v_final=v[-1],
        counts=counts[-1],
        spikes_per_layer=torch.stack([c.detach().sum(dim=1) for c in counts], dim=1),
        record=torch.stack(rec, dim=1) if record else None,
        rates=[c / ticks for c in counts[:-1]],
    )


def greedy(q_values: torch.Tensor | np.ndarray) -> np.ndarray:
    """argmax, lowest index on ties (as :func:`hw.emulator.greedy_actions`), int64 [B]."""
    q = q_values.detach().cpu().numpy() if isinstance(q_values, torch.Tensor) else q_values
    return np.argmax(q, axis=1).astype(np.int64)


def quant_scale(weight: torch.Tensor, percentile: float = 100.0) -> torch.Tensor:
    """Per-layer scale ``127 / max|W|`` (float32, no gradient), the SDK's NIR rule; with
    ``percentile`` < 100, ``127 / percentile(|W|)`` (weights above it are clipped)."""
    w = weight.detach().abs()
    m = w.max() if percentile >= 100.0 else torch.quantile(w.flatten(), percentile / 100.0)
    return (torch.tensor(127.0, dtype=torch.float32) / m.clamp_min(1e-8)).to(torch.float32)


def fake_quant(layers: list[LayerParams], percentile: float = 100.0) -> list[LayerParams]:
    """Float layers -> the 8-bit chip-unit layers export writes (straight-through
    rounding, so gradients reach the float masters)."""
    out = []
    for lay in layers:
        s = quant_scale(lay.weight, percentile)
        w_q = torch.clamp(_RoundSTE.apply(lay.weight * s), -127.0, 127.0)
        out.append(
            LayerParams(
                weight=w_q,
                i_offset=lay.i_offset * s,
                threshold=lay.threshold * s,
                alpha_decay=lay.alpha_decay,
                reset_by_subtraction=lay.reset_by_subtraction,
                v_reset=lay.v_reset * s,
                v_init=lay.v_init * s,
                scale=s,
            )
        )
    return out


def grid_distance(weights: list[torch.Tensor], percentile: float = 100.0) -> torch.Tensor:
    """Mean squared distance of float master weights to their 8-bit grid points, in
    LSBs (``(w*s - round(w*s))^2`` with ``s`` held fixed), averaged over layers."""
    total = torch.zeros(())
    for w in weights:
        ws = w * quant_scale(w, percentile)
        total = total + (ws - torch.round(ws.detach())).pow(2).mean()
    return total / len(weights)


def artifact_params(artifact: ModelArtifact) -> list[LayerParams]:
    """An artifact's int8 layers as :class:`LayerParams` (chip units)."""
    return [
        LayerParams(
            weight=torch.from_numpy(lay.weight.astype(np.float32)),
            i_offset=torch.from_numpy(lay.i_offset.astype(np.float32)),
            threshold=f32(lay.threshold),
            alpha_decay=f32(lay.alpha_decay),
            reset_by_subtraction=lay.reset == "reset_by_subtraction",
            v_reset=f32(lay.v_reset),
            v_init=f32(lay.v_init),
            scale=f32(lay.weight_scale),
        )
        for lay in artifact.layers
    ]


def float_params(artifact: ModelArtifact) -> list[LayerParams]:
    """An artifact's float master layers (unscaled units; ``v_reset``/``v_init`` unscaled)."""
    out = []
    for lay in artifact.layers:
        if lay.float_weight is None or lay.float_i_offset is None:
            raise ValueError(f"layer {lay.name} has no float master weights")
        thr = lay.float_threshold
        if thr is None:
            thr = lay.threshold / lay.weight_scale
        out.append(
            LayerParams(
                weight=torch.from_numpy(np.asarray(lay.float_weight, np.float32)),
                i_offset=torch.from_numpy(np.asarray(lay.float_i_offset, np.float32)),
                threshold=f32(thr),
                alpha_decay=f32(lay.alpha_decay),
                reset_by_subtraction=lay.reset == "reset_by_subtraction",
                v_reset=f32(lay.v_reset / lay.weight_scale),
                v_init=f32(lay.v_init / lay.weight_scale),
                scale=f32(1.0),
            )
        )
    return out


def run_artifact(
    artifact: ModelArtifact,
    observations: np.ndarray,
    *,
    use_float: bool = False,
    record: bool = False,
    seeds: np.ndarray | None = None,
) -> SimOutput:
    """Run an artifact in torch: its int8 layers (bit-identical to the emulator) or,
    with ``use_float``, its float master layers. ``seeds``: Poisson encoders only."""
    obs = np.asarray(observations, np.float32)
    raster = torch.from_numpy(encode(artifact, obs, seeds=seeds))
    params = float_params(artifact) if use_float else artifact_params(artifact)
    with torch.no_grad():
        return simulate(
            raster.to(torch.float32), params, artifact.ticks, artifact.readout.kind, record=record
        )
