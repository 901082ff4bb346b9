"""The spiking Q-network in torch, with the emulator's tick semantics exactly.

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
- ``quant``: fake-quantized, as export does: per layer ``s = 127 / max|W|``,
  ``W_q = round(W * s)`` (straight-through gradient), ``threshold * s`` and
  ``i_offset * s``; the readout divides by ``s``. Bit-identical to the emulator
  running the exported artifact;
- from an artifact's int8 weights (:func:`artifact_params`).

Spikes use a surrogate gradient (fast sigmoid) in the backward pass only.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hw.artifact import Encoder, Layer, ModelArtifact, Readout
from hw.encoding import encode

# Output layer: a non-spiking integrator (alpha 1, threshold never reached).
OUTPUT_THRESHOLD = 1e9


@dataclass(frozen=True)
class SNNConfig:
    """Everything but the learned tensors; JSON-able."""

    env_id: str
    obs_offset: tuple[float, ...]
    obs_scale: tuple[float, ...]
    action_names: tuple[str, ...]
    hidden: tuple[int, ...] = (64, 64)
    channels: str = "tent"
    bins: int = 7
    input_ticks: int = 12
    encoder_kind: str = "deterministic"
    phase: float = 0.5
    alpha_decay: float = 1.0  # hidden layers
    threshold: float = 1.0  # hidden layers, float units
    reset: str = "reset_by_subtraction"
    readout: str = "membrane"
    surrogate_slope: float = 5.0

    @property
    def observation_size(self) -> int:
        return len(self.obs_offset)

    @property
    def action_count(self) -> int:
        return len(self.action_names)

    @property
    def encoder(self) -> Encoder:
        return Encoder(
            kind=self.encoder_kind,
            channels=self.channels,
            bins=self.bins,
            input_ticks=self.input_ticks,
            phase=self.phase,
        )

    @property
    def input_size(self) -> int:
        return self.observation_size * self.encoder.channels_per_dim()

    @property
    def ticks(self) -> int:
        # one tick per hop flushes the pipe: the last input spike reaches the output
        return self.input_ticks + len(self.hidden) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SNNConfig:
        d = dict(d)
        for k in ("obs_offset", "obs_scale", "action_names", "hidden"):
            d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class EncodingSpec:
    """The three fields :func:`hw.encoding.encode` reads from an artifact."""

    obs_offset: np.ndarray
    obs_scale: np.ndarray
    encoder: Encoder


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


def _f32(x: float) -> torch.Tensor:
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
    counts = [torch.zeros(n_b, lay.weight.shape[0]) for lay in layers]
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


class SpikingQNet(nn.Module):
    """Float master weights and biases of a feed-forward LIF Q-network."""

    def __init__(self, config: SNNConfig, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        sizes = [config.input_size, *config.hidden, config.action_count]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, size in itertools.pairwise(sizes):
            bound = 1.0 / np.sqrt(fan_in)
            w = (torch.rand(size, fan_in, generator=gen) * 2 - 1) * bound * 2.0
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(size)))
        self.encoding = EncodingSpec(
            obs_offset=np.asarray(config.obs_offset, np.float32),
            obs_scale=np.asarray(config.obs_scale, np.float32),
            encoder=config.encoder,
        )

    # ------------------------------------------------------------------ parameters

    def _thresholds(self) -> list[float]:
        n = len(self.weights)
        return [self.config.threshold] * (n - 1) + [OUTPUT_THRESHOLD]

    def _alphas(self) -> list[float]:
        n = len(self.weights)
        return [self.config.alpha_decay] * (n - 1) + [1.0]

    def layer_params(self, mode: str = "float") -> list[LayerParams]:
        """The layers in ``float`` units or fake-quantized (``quant``) chip units."""
        out = []
        sub = self.config.reset == "reset_by_subtraction"
        for w, b, thr, alpha in zip(
            self.weights, self.biases, self._thresholds(), self._alphas(), strict=True
        ):
            thr_t, alpha_t = _f32(thr), _f32(alpha)
            if mode == "float":
                out.append(LayerParams(w, b, thr_t, alpha_t, sub, _f32(0.0), _f32(0.0), _f32(1.0)))
            elif mode == "quant":
                s = quant_scale(w)
                w_q = torch.clamp(_RoundSTE.apply(w * s), -127.0, 127.0)
                out.append(
                    LayerParams(w_q, b * s, thr_t * s, alpha_t, sub, _f32(0.0), _f32(0.0), s)
                )
            else:
                raise ValueError(f"mode must be 'float' or 'quant', got {mode!r}")
        return out

    # ------------------------------------------------------------------ running

    def encode(self, observations: np.ndarray) -> torch.Tensor:
        """Observations [B, obs] -> float32 raster [B, input_ticks, n_in] via hw.encoding."""
        obs = np.asarray(observations, np.float32)
        return torch.from_numpy(encode(self.encoding, obs).astype(np.float32))  # type: ignore[arg-type]

    def forward(self, raster: torch.Tensor, mode: str = "float", record: bool = False) -> SimOutput:
        return simulate(
            raster,
            self.layer_params(mode),
            self.config.ticks,
            self.config.readout,
            record=record,
            slope=self.config.surrogate_slope,
        )

    @torch.no_grad()
    def act(self, observations: np.ndarray, mode: str = "float") -> np.ndarray:
        return greedy(self(self.encode(observations), mode).q_values)

    # ------------------------------------------------------------------ export

    def export(self, name: str, provenance: dict[str, Any] | None = None) -> ModelArtifact:
        """The quantized artifact (bit-identical to ``mode='quant'``), float masters included."""
        cfg = self.config
        layers = []
        n = len(self.weights)
        with torch.no_grad():
            qparams = self.layer_params("quant")
            for i, (p, w, b, thr) in enumerate(
                zip(qparams, self.weights, self.biases, self._thresholds(), strict=True)
            ):
                last = i == n - 1
                layers.append(
                    Layer(
                        name="out" if last else f"fc{i + 1}",
                        weight=p.weight.numpy().astype(np.int8),
                        i_offset=p.i_offset.numpy().astype(np.float32),
                        threshold=float(p.threshold),
                        alpha_decay=float(p.alpha_decay),
                        reset=cfg.reset,
                        v_reset=0.0,
                        v_init=0.0,
                        weight_scale=float(p.scale),
                        float_weight=w.detach().numpy().astype(np.float32).copy(),
                        float_i_offset=b.detach().numpy().astype(np.float32).copy(),
                        float_threshold=float(np.float32(thr)),
                    )
                )
        art = ModelArtifact(
            name=name,
            env_id=cfg.env_id,
            action_names=tuple(cfg.action_names),
            obs_offset=np.asarray(cfg.obs_offset, np.float32),
            obs_scale=np.asarray(cfg.obs_scale, np.float32),
            encoder=cfg.encoder,
            layers=tuple(layers),
            ticks=cfg.ticks,
            readout=Readout(kind=cfg.readout),
            provenance=dict(provenance or {}),
        )
        art.validate()
        return art

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        torch.save(
            {
                "config": json.dumps(self.config.to_json()),
                "state_dict": self.state_dict(),
                "extra": json.dumps(extra or {}),
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> tuple[SpikingQNet, dict[str, Any]]:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        net = cls(SNNConfig.from_json(json.loads(ckpt["config"])))
        net.load_state_dict(ckpt["state_dict"])
        return net, json.loads(ckpt["extra"])

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> SpikingQNet:
        """The float master network stored in an artifact (needs its float_* fields)."""
        hidden = artifact.layers[:-1]
        first = artifact.layers[0]
        enc = artifact.encoder
        cfg = SNNConfig(
            env_id=artifact.env_id,
            obs_offset=tuple(float(x) for x in artifact.obs_offset),
            obs_scale=tuple(float(x) for x in artifact.obs_scale),
            action_names=tuple(artifact.action_names),
            hidden=tuple(lay.size for lay in hidden),
            channels=enc.channels,
            bins=enc.bins,
            input_ticks=enc.input_ticks,
            encoder_kind=enc.kind,
            phase=enc.phase,
            alpha_decay=first.alpha_decay if hidden else 1.0,
            threshold=float(first.float_threshold or 1.0) if hidden else 1.0,
            reset=first.reset,
            readout=artifact.readout.kind,
        )
        if cfg.ticks != artifact.ticks:
            raise ValueError(f"artifact ticks {artifact.ticks} != input_ticks + layers")
        net = cls(cfg)
        with torch.no_grad():
            for i, lay in enumerate(artifact.layers):
                if lay.float_weight is None or lay.float_i_offset is None:
                    raise ValueError(f"layer {lay.name} has no float master weights")
                net.weights[i].copy_(torch.from_numpy(np.asarray(lay.float_weight, np.float32)))
                net.biases[i].copy_(torch.from_numpy(np.asarray(lay.float_i_offset, np.float32)))
        net.encoding = EncodingSpec(artifact.obs_offset, artifact.obs_scale, artifact.encoder)
        return net


def quant_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-layer scale ``127 / max|W|`` (float32, no gradient), as the SDK's NIR path."""
    m = weight.detach().abs().max().clamp_min(1e-8)
    return (torch.tensor(127.0, dtype=torch.float32) / m).to(torch.float32)


def artifact_params(artifact: ModelArtifact) -> list[LayerParams]:
    """An artifact's int8 layers as :class:`LayerParams` (chip units)."""
    return [
        LayerParams(
            weight=torch.from_numpy(lay.weight.astype(np.float32)),
            i_offset=torch.from_numpy(lay.i_offset.astype(np.float32)),
            threshold=_f32(lay.threshold),
            alpha_decay=_f32(lay.alpha_decay),
            reset_by_subtraction=lay.reset == "reset_by_subtraction",
            v_reset=_f32(lay.v_reset),
            v_init=_f32(lay.v_init),
            scale=_f32(lay.weight_scale),
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
                threshold=_f32(thr),
                alpha_decay=_f32(lay.alpha_decay),
                reset_by_subtraction=lay.reset == "reset_by_subtraction",
                v_reset=_f32(lay.v_reset / lay.weight_scale),
                v_init=_f32(lay.v_init / lay.weight_scale),
                scale=_f32(1.0),
            )
        )
    return out


def run_artifact(
    artifact: ModelArtifact,
    observations: np.ndarray,
    *,
    use_float: bool = False,
    record: bool = False,
) -> SimOutput:
    """Run an artifact in torch: its int8 layers (bit-identical to the emulator) or,
    with ``use_float``, its float master layers."""
    raster = torch.from_numpy(encode(artifact, np.asarray(observations, np.float32)))
    params = float_params(artifact) if use_float else artifact_params(artifact)
    with torch.no_grad():
        return simulate(
            raster.to(torch.float32), params, artifact.ticks, artifact.readout.kind, record=record
        )
