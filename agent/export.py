"""One export: a :class:`~agent.network.SpikingQNet` -> the model artifact, and back.

The artifact is also the training checkpoint (a run folder holds ``student.s2l``):
the int8 network the chip runs, the float masters, per-layer leaks and
thresholds, and in ``provenance['snn']`` the options it was built with.
Export is bit-identical to ``mode='quant'`` of the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from agent.network import EnvSpec, SNNConfig, SpikingQNet
from hw.artifact import Layer, ModelArtifact, Readout


def to_artifact(
    net: SpikingQNet, name: str, provenance: dict[str, Any] | None = None
) -> ModelArtifact:
    """The quantized artifact of ``net`` (float masters included)."""
    cfg, env = net.config, net.env
    prov = dict(provenance or {})
    prov["snn"] = {**dataclasses.asdict(cfg), "obs_scale": [float(x) for x in env.obs_scale]}
    prov["scale_percentile"] = net.scale_percentile
    layers = []
    n = len(net.weights)
    with torch.no_grad():
        floats = net.layer_params("float")
        for i, (p, f) in enumerate(zip(net.layer_params("quant"), floats, strict=True)):
            last = i == n - 1
            layers.append(
                Layer(
                    name="out" if last else f"fc{i + 1}",
                    weight=p.weight.numpy().astype(np.int8),
                    i_offset=p.i_offset.numpy().astype(np.float32),
                    threshold=float(p.threshold),
                    alpha_decay=float(p.alpha_decay),
                    reset=cfg.reset,
                    v_reset=float(p.v_reset),
                    v_init=float(p.v_init),
                    weight_scale=float(p.scale),
                    float_weight=f.weight.detach().numpy().astype(np.float32).copy(),
                    float_i_offset=f.i_offset.detach().numpy().astype(np.float32).copy(),
                    float_threshold=float(f.threshold),
                )
            )
    art = ModelArtifact(
        name=name,
        env_id=env.env_id,
        action_names=tuple(env.action_names),
        obs_offset=np.asarray(env.obs_offset, np.float32),
        obs_scale=np.asarray(env.obs_scale, np.float32),
        encoder=env.encoder,
        layers=tuple(layers),
        ticks=cfg.ticks,
        readout=Readout(kind=cfg.readout),
        provenance=prov,
    )
    art.validate()
    return art


def _config_of(artifact: ModelArtifact) -> SNNConfig:
    """The network options: from ``provenance['snn']`` when the artifact has it,
    else read off the artifact (files exported before it was recorded)."""
    recorded = artifact.provenance.get("snn")
    fields = {f.name for f in dataclasses.fields(SNNConfig)}
    if isinstance(recorded, dict):
        kw = {k: v for k, v in recorded.items() if k in fields}
        kw["hidden"] = tuple(kw.get("hidden", ()))
        kw["obs_scale"] = None
        kw["dueling"] = False  # the artifact holds the output layer as the one it is
        return SNNConfig(**kw)
    hidden = artifact.layers[:-1]
    enc = artifact.encoder
    first = artifact.layers[0]
    return SNNConfig(
        hidden=tuple(lay.size for lay in hidden),
        encoder=enc.kind,  # type: ignore[arg-type]
        channels=enc.channels,  # type: ignore[arg-type]
        bins=enc.bins,
        copies=enc.copies,
        input_ticks=enc.input_ticks,
        phase=enc.phase,
        alpha_decay=first.alpha_decay if hidden else 1.0,
        threshold=float(first.float_threshold or 1.0) if hidden else 1.0,
        reset=first.reset,  # type: ignore[arg-type]
        readout=artifact.readout.kind,  # type: ignore[arg-type]
    )


def from_artifact(artifact: ModelArtifact, seed: int | None = None) -> SpikingQNet:
    """The float master network stored in an artifact (needs its float_* fields)."""
    cfg = _config_of(artifact)
    if cfg.ticks != artifact.ticks:
        raise ValueError(f"artifact ticks {artifact.ticks} != input_ticks + layers")
    env = EnvSpec(
        env_id=artifact.env_id,
        obs_offset=np.asarray(artifact.obs_offset, np.float32),
        obs_scale=np.asarray(artifact.obs_scale, np.float32),
        action_names=tuple(artifact.action_names),
        encoder=artifact.encoder,
    )
    net = SpikingQNet(cfg, env, seed=seed)
    net.scale_percentile = float(artifact.provenance.get("scale_percentile", 100.0))
    with torch.no_grad():
        for i, lay in enumerate(artifact.layers):
            if lay.float_weight is None or lay.float_i_offset is None:
                raise ValueError(f"layer {lay.name} has no float master weights")
            net.weights[i].copy_(torch.from_numpy(np.asarray(lay.float_weight, np.float32)))
            net.biases[i].copy_(torch.from_numpy(np.asarray(lay.float_i_offset, np.float32)))
    hidden = artifact.layers[:-1]
    net.set_hidden(
        [lay.alpha_decay for lay in hidden],
        [
            float(lay.float_threshold)
            if lay.float_threshold is not None
            else lay.threshold / lay.weight_scale
            for lay in hidden
        ],
    )
    return net
