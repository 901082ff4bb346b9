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

import ctypes
import sys
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from hw.artifact import ModelArtifact
from hw.emulator import pack_layers, run_layers
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
    per_layer = torch.stack([c.detach().sum(dim=1) for c in counts], dim=1)
    return _output(
        layers[-1], v[-1], counts[-1], per_layer, readout, torch.stack(rec, 1) if record else None
    )


def _output(
    out: LayerParams,
    v: torch.Tensor,
    counts: torch.Tensor,
    spikes_per_layer: torch.Tensor,
    readout: str,
    record: torch.Tensor | None,
) -> SimOutput:
    """The output layer's final membrane (and spike ``counts``) read out as Q-values."""
    raw = v if readout == "membrane" else counts * out.threshold + v
    return SimOutput(
        q_values=raw / out.scale,
        v_final=v,
        counts=counts,
        spikes_per_layer=spikes_per_layer,
        record=record,
    )


# ---------------------------------------------------------------- the fast forward
#
# Each layer's synaptic input over all ticks is one matmul; its membrane then runs
# over the ticks in one compiled loop (numba on the CPU; a torch loop elsewhere).
# ``cur[:, j]`` is the input a layer hears at tick ``j + 1`` (the one-tick hop), for
# ``j + 1 < ticks``; ticks with no input add nothing, as in :func:`simulate`.


# the compiled loops on the CPU; off, the torch loops (what other devices run) everywhere
CPU_KERNELS = True


def keep_freed_memory() -> bool:
    """Keep freed blocks of a few MiB in the process's heap for reuse (glibc only;
    returns whether it took).

    Every forward makes fresh ``[rows, ticks, neurons]`` tensors of a few MiB. By
    default glibc serves such blocks by ``mmap`` (or trims them off the top of the
    heap when freed), so the next forward's tensors fault in and zero their pages
    again: on this project's 2-core machine that was half of a dsqn gradient step
    (targets over 4 draws: 37.9 -> 18.5 ms; a 1024-row no-grad forward 31 -> 7 ms).
    An mmap threshold at glibc's maximum (32 MiB) and a 1 GiB trim threshold keep the
    blocks; the heap then holds what the peak forward needed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


@njit(cache=True, nogil=True)
def _lif_forward_kernel(cur, ioff, alpha, thr, v_init, v_reset, sub, ticks, u_all, s_all, v):
    n_b, n_cur, n = cur.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for b in range(n_b):
        vb = v[b]
        vb[:] = v_init
        for t in range(ticks):
            u_t = u_all[b, t]
            s_t = s_all[b, t]
            has_input = 1 <= t <= n_cur
            for i in range(n):  # contiguous: the compiler vectorizes it
                u = alpha * vb[i]
                if has_input:
                    u = u + cur[b, t - 1, i]
                u = u + ioff[i]
                u_t[i] = u
                fired = u > thr
                s_t[i] = one if fired else zero
                if sub:
                    vb[i] = u - thr if fired else u
                else:
                    vb[i] = v_reset if fired else u


@njit(cache=True, nogil=True, fastmath=True)
def _lif_backward_kernel(
    g_s, g_v, u_all, s_all, alpha, thr, v_init, v_reset, sub, slope, g_cur, g_ioff, red
):
    """Backprop through time; ``red``: d/d (alpha, threshold, v_reset, v_init).
    (fastmath only here: gradients need no bit-exactness, the forward pass does.)"""
    n_b, ticks, n = u_all.shape
    n_cur = g_cur.shape[1]
    thr_abs = np.float32(max(abs(thr), 1e-6))
    inv_thr = np.float32(1.0) / thr_abs
    one = np.float32(1.0)
    # per row: d/d alpha, threshold, v_reset, v_init, i_offset (summed over rows below)
    part = np.zeros((n_b, 5, n), np.float32)
    for b in range(n_b):
        acc = part[b]
        gv = g_v[b].copy()
        for t in range(ticks - 1, -1, -1):
            s_t = s_all[b, t]
            u_t = u_all[b, t]
            gs_t = g_s[b, t]
            for i in range(n):
                s = s_t[i]
                if sub:
                    acc[1, i] -= gv[i] * s
                    gu = gv[i]
                else:
                    acc[2, i] += gv[i] * s
                    gu = gv[i] * (one - s)
                d = one + slope * abs(u_t[i] - thr) * inv_thr
                gu += gs_t[i] * inv_thr / (d * d)
                if t > 0:
                    up = u_all[b, t - 1, i]
                    if sub:
                        vp = up - s_all[b, t - 1, i] * thr
                    else:
                        vp = v_reset if s_all[b, t - 1, i] > 0 else up
                else:
                    vp = v_init
                acc[0, i] += gu * vp
                acc[4, i] += gu
                gv[i] = alpha * gu
                if 1 <= t <= n_cur:
                    g_cur[b, t - 1, i] = gu
        acc[3] += gv
    total = part.sum(axis=0)
    g_ioff[:] = total[4]
    for k in range(4):
        red[k] = total[k].sum()


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _torch_forward(cur, ioff, alpha, thr, v_init, v_reset, sub, ticks):
    """The same loop as :func:`_lif_forward_kernel` in torch ops (any device)."""
    n_b, n_cur, n = cur.shape
    v = v_init.expand(n_b, n).clone()
    u_all = cur.new_empty(n_b, ticks, n)
    s_all = cur.new_empty(n_b, ticks, n)
    for t in range(ticks):
        u = alpha * v
        if 1 <= t <= n_cur:
            u = u + cur[:, t - 1]
        u = u + ioff
        s = (u > thr).to(u.dtype)
        u_all[:, t] = u
        s_all[:, t] = s
        v = u - s * thr if sub else torch.where(s > 0, v_reset, u)
    return u_all, s_all, v


def _torch_backward(g_s, g_v, u_all, s_all, alpha, thr, v_init, v_reset, sub, slope, n_cur):
    """The same backward as :func:`_lif_backward_kernel` in torch ops (any device)."""
    ticks = u_all.shape[1]
    thr_abs = thr.abs().clamp_min(1e-6)
    sg = g_s / ((1.0 + slope * ((u_all - thr).abs() / thr_abs)) ** 2 * thr_abs)
    g_u = torch.empty_like(u_all)
    gv = g_v
    for t in range(ticks - 1, -1, -1):
        s = s_all[:, t]
        gu = gv if sub else gv * (1.0 - s)
        g_u[:, t] = gu + sg[:, t]
        gv = alpha * g_u[:, t]
    v_after = u_all - s_all * thr if sub else torch.where(s_all > 0, v_reset, u_all)
    v_prev = torch.cat([v_init.expand_as(u_all[:, :1]), v_after[:, :-1]], dim=1)
    g_post = torch.cat([alpha * g_u[:, 1:], g_v[:, None]], dim=1)  # gradient reaching v_t
    red = torch.stack(
        [
            (g_u * v_prev).sum(),
            -(g_post * s_all).sum() if sub else thr.new_zeros(()),
            thr.new_zeros(()) if sub else (g_post * s_all).sum(),
            gv.sum(),
        ]
    )
    g_cur = g_u[:, 1 : n_cur + 1]
    if g_cur.shape[1] < n_cur:  # input for every tick: the last one is never heard
        g_cur = torch.cat([g_cur, torch.zeros_like(g_u[:, : n_cur - g_cur.shape[1]])], dim=1)
    return g_cur, g_u.sum(dim=(0, 1)), red


class _LIFOverTicks(torch.autograd.Function):
    """One population over all ticks, given the synaptic input of every tick.

    Per tick ``t`` (float32, the order of :func:`simulate`, so the 8-bit path is
    bit-identical)::

        u_t = alpha * v_{t-1} + cur[:, t-1] + i_offset
        s_t = u_t > threshold
        v_t = u_t - s_t * threshold    or    where(s_t, v_reset, u_t)

    The backward pass is what autograd does through :func:`simulate`, by hand: the
    spike's gradient is the fast-sigmoid surrogate of ``u_t``, the reset's spike is
    detached, the threshold gets no gradient through the spike (:class:`_SpikeFn`).
    """

    @staticmethod
    def forward(ctx, cur, ioff, alpha, thr, v_init, v_reset, sub, slope, ticks):  # type: ignore[override]
        ioff_n = ioff.expand(cur.shape[2])
        if cur.device.type == "cpu" and CPU_KERNELS:
            n_b, _, n = cur.shape
            u_all, s_all = cur.new_empty(n_b, ticks, n), cur.new_empty(n_b, ticks, n)
            v = cur.new_empty(n_b, n)
            _lif_forward_kernel(
                _np(cur), _np(ioff_n), np.float32(alpha.item()), np.float32(thr.item()),
                np.float32(v_init.item()), np.float32(v_reset.item()), bool(sub), ticks,
                u_all.numpy(), s_all.numpy(), v.numpy(),
            )  # fmt: skip
        else:
            u_all, s_all, v = _torch_forward(cur, ioff_n, alpha, thr, v_init, v_reset, sub, ticks)
        ctx.save_for_backward(u_all, s_all, alpha, thr, v_init, v_reset)
        ctx.sub, ctx.slope, ctx.n_cur, ctx.ioff_shape = sub, slope, cur.shape[1], ioff.shape
        return s_all, v

    @staticmethod
    def backward(ctx, g_s, g_v):  # type: ignore[override]
        u_all, s_all, alpha, thr, v_init, v_reset = ctx.saved_tensors
        g_s = torch.zeros_like(u_all) if g_s is None else g_s
        g_v = torch.zeros_like(u_all[:, 0]) if g_v is None else g_v
        if u_all.device.type == "cpu" and CPU_KERNELS:
            n_b, _, n = u_all.shape
            g_cur = u_all.new_zeros(n_b, ctx.n_cur, n)
            g_ioff = np.zeros(n, np.float32)
            red = np.zeros(4, np.float64)
            _lif_backward_kernel(
                _np(g_s), _np(g_v), _np(u_all), _np(s_all), np.float32(alpha.item()),
                np.float32(thr.item()), np.float32(v_init.item()), np.float32(v_reset.item()),
                bool(ctx.sub), np.float32(ctx.slope),
                g_cur.numpy(), g_ioff, red,
            )  # fmt: skip
            g_ioff_t = torch.from_numpy(g_ioff.astype(np.float32))
            red_t = torch.from_numpy(red.astype(np.float32))
        else:
            g_cur, g_ioff_t, red_t = _torch_backward(
                g_s, g_v, u_all, s_all, alpha, thr, v_init, v_reset, ctx.sub, ctx.slope,
                ctx.n_cur,
            )  # fmt: skip
        g_ioff_t = g_ioff_t.sum() if len(ctx.ioff_shape) == 0 else g_ioff_t
        return (
            g_cur,
            g_ioff_t.reshape(ctx.ioff_shape),
            red_t[0].reshape(alpha.shape),
            red_t[1].reshape(thr.shape),
            red_t[3].reshape(v_init.shape),
            red_t[2].reshape(v_reset.shape),
            None,
            None,
            None,
        )


def simulate_fast(
    raster: torch.Tensor,
    layers: list[LayerParams],
    ticks: int,
    readout: str = "membrane",
    *,
    record: bool = False,
    slope: float = 5.0,
) -> SimOutput:
    """:func:`simulate`, layer by layer: a layer's input over all ticks is one matmul
    and its membrane runs over the ticks in :class:`_LIFOverTicks`. Without gradients
    (and without a record) on the CPU it runs spike by spike instead
    (:func:`_event_forward`). Equal to :func:`simulate` bit for bit on the 8-bit path
    (integer weights and 0/1 spikes make every sum exact in any order), to float
    rounding on the float path."""
    if not (record or torch.is_grad_enabled()) and raster.device.type == "cpu" and CPU_KERNELS:
        return _event_forward(raster, layers, ticks, readout)
    pre = raster
    spikes: list[torch.Tensor] = []
    v = raster.new_zeros(0)
    for lay in layers:
        s, v = _LIFOverTicks.apply(
            pre @ lay.weight.T, lay.i_offset, lay.alpha_decay, lay.threshold, lay.v_init,
            lay.v_reset, lay.reset_by_subtraction, slope, ticks,
        )  # fmt: skip
        spikes.append(s)
        # heard by the next layer one tick later: its loop reads cur[:, t - 1] for
        # 1 <= t < ticks, so the last tick's spikes are multiplied but never heard
        # (cheaper than copying all the others out of the way)
        pre = s
    rec = torch.cat([s.detach() for s in spikes], dim=2).to(torch.uint8) if record else None
    counts = [s.sum(dim=1) for s in spikes]
    per_layer = torch.stack([c.detach().sum(dim=1) for c in counts], dim=1)
    return _output(layers[-1], v, counts[-1], per_layer, readout, rec)


# ------------------------------------------------------ the forward without gradients
#
# Targets, acting, evaluation and fine-tuning labels need no gradient; there the
# emulator's own kernel (:func:`hw.emulator.run_layers`, float32 weights) runs
# the network event by event: a spike adds its weight row, so the work follows the
# 7-15 % of neurons that fire in a tick instead of the dense matmuls.


def _event_forward(
    raster: torch.Tensor, layers: list[LayerParams], ticks: int, readout: str
) -> SimOutput:
    w, i_offset, layer_i, layer_f = pack_layers(
        [lay.weight.detach().numpy() for lay in layers],
        [lay.i_offset.detach().expand(lay.weight.shape[0]).numpy() for lay in layers],
        [
            [float(lay.threshold), float(lay.alpha_decay), float(lay.v_reset), float(lay.v_init)]
            for lay in layers
        ],
        [lay.reset_by_subtraction for lay in layers],
    )
    out = run_layers(raster.detach().numpy(), ticks, w, i_offset, layer_i, layer_f, layer_f[0])
    return _output(
        layers[-1],
        torch.from_numpy(out.v_final),
        torch.from_numpy(out.counts.astype(np.float32)),
        torch.from_numpy(out.layer_spikes.astype(np.float32)),
        readout,
        None,
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
