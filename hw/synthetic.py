"""Small random artifacts for tests, benchmarks and the bare demo: the right
shapes and value ranges, no training. Not a policy."""

from __future__ import annotations

import numpy as np

from hw.artifact import Encoder, Layer, ModelArtifact, Readout

CARTPOLE_SCALE = np.array([2.4, 3.0, 0.21, 3.0], dtype=np.float32)


def random_artifact(
    *,
    seed: int = 0,
    name: str = "random",
    env_id: str = "CartPole-v1",
    obs_scale: np.ndarray | None = None,
    hidden: tuple[int, ...] = (64, 64),
    actions: int = 2,
    ticks: int = 16,
    encoder: Encoder | None = None,
    readout: str = "membrane",
    reset: str = "reset_by_subtraction",
    alpha_decay: float = 0.9,
) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    scale = CARTPOLE_SCALE if obs_scale is None else np.asarray(obs_scale, np.float32)
    n_obs = scale.shape[0]
    n_layers = len(hidden) + 1
    enc = encoder or Encoder(
        kind="deterministic", channels="tent", bins=5, input_ticks=max(1, ticks - n_layers)
    )
    fan_in = n_obs * enc.channels_per_dim()
    layers = []
    for i, size in enumerate((*hidden, actions)):
        w_float = rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=(size, fan_in)).astype(np.float32)
        scale_w = 127.0 / float(np.abs(w_float).max())
        w_int = np.clip(np.round(w_float * scale_w), -127, 127).astype(np.int8)
        out = i == len(hidden)
        theta = 1e9 if out else 0.5
        bias = rng.normal(0.0, 0.05, size=size).astype(np.float32)
        layers.append(
            Layer(
                name=f"fc{i + 1}" if not out else "out",
                weight=w_int,
                i_offset=(bias * np.float32(scale_w)).astype(np.float32),
                threshold=float(np.float32(theta * scale_w)),
                alpha_decay=1.0 if out else alpha_decay,
                reset=reset,
                weight_scale=scale_w,
                float_weight=w_float,
                float_i_offset=bias,
                float_threshold=theta,
            )
        )
        fan_in = size
    return ModelArtifact(
        name=name,
        env_id=env_id,
        action_names=tuple(f"action{i}" for i in range(actions)),
        obs_offset=np.zeros(n_obs, np.float32),
        obs_scale=scale,
        encoder=enc,
        layers=tuple(layers),
        ticks=ticks,
        readout=Readout(kind=readout),
        provenance={"source": "hw.synthetic.random_artifact", "seed": seed},
    )
