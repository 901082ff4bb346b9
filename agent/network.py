"""The spiking Q-network as a policy: trainable tensors, the one forward
(:func:`agent.snn.simulate_fast`, equal to the reference :func:`agent.snn.simulate`)
and one ``predict``. Training lives in the recipes
(:mod:`agent.dsqn`, :mod:`agent.distill`), export in :mod:`agent.export`.

Hidden layers are leaky integrate-and-fire (``alpha_decay`` < 1) or
integrate-and-fire (``alpha_decay`` = 1); the leak and the threshold are fixed or
learned per layer. The output layer is a non-spiking integrator whose final
membrane potential (or spike count plus membrane) is read out as the Q-values.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agent.options import SNNConfig
from agent.snn import (
    OUTPUT_THRESHOLD,
    LayerParams,
    SimOutput,
    f32,
    fake_quant,
    greedy,
    simulate_fast,
)
from hw.artifact import Encoder
from hw.encoding import encode

Mode = Literal["float", "quant"]


@dataclass(frozen=True)
class EnvSpec:
    """What the network needs to know of its environment (and what hw.encoding reads)."""

    env_id: str
    obs_offset: np.ndarray  # float32 [obs]
    obs_scale: np.ndarray  # float32 [obs]
    action_names: tuple[str, ...]
    encoder: Encoder = field(default_factory=Encoder)

    @property
    def observation_size(self) -> int:
        return int(self.obs_offset.shape[0])


ACTION_NAMES = {
    "CartPole-v1": ("push_left", "push_right"),
    "Acrobot-v1": ("torque_neg", "torque_zero", "torque_pos"),
}


def observation_scale(env_id: str, states: np.ndarray) -> np.ndarray:
    """Per-dimension normalisation scale: 1.2 x the 99.9th percentile of |observation|
    over ``states``, never above the observation-space bound (where finite)."""
    env = gym.make(env_id)
    high = np.asarray(env.observation_space.high, np.float64)  # type: ignore[attr-defined]
    env.close()
    q = np.quantile(np.abs(states), 0.999, axis=0) * 1.2
    q = np.where(np.isfinite(high) & (high < 1e6), np.minimum(q, high), q)
    return np.maximum(q, 1e-3).astype(np.float32)


def env_spec(env_id: str, config: SNNConfig, states: np.ndarray | None = None) -> EnvSpec:
    """The environment facts for ``config``: its ``obs_scale`` if set, else one
    estimated from ``states``."""
    env = gym.make(env_id)
    n_obs = int(np.prod(env.observation_space.shape))  # type: ignore[arg-type]
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    env.close()
    if config.obs_scale is not None:
        scale = np.asarray(config.obs_scale, np.float32)
        if scale.shape != (n_obs,) or not np.all(scale > 0):
            raise ValueError(f"obs_scale needs {n_obs} positive values for {env_id}")
    elif states is not None:
        scale = observation_scale(env_id, states)
    else:
        raise ValueError("obs_scale is not set and no states to estimate it from")
    names = ACTION_NAMES.get(env_id, tuple(f"action{i}" for i in range(n_actions)))
    return EnvSpec(env_id, np.zeros(n_obs, np.float32), scale, names, config.encoder_spec)


class SpikingQNet(nn.Module):
    """Float master weights, biases, leaks and thresholds of a feed-forward LIF Q-network.

    ``layer_params('float')`` gives them in float units, ``layer_params('quant')`` the
    8-bit chip units export writes (per-layer scale, see :func:`agent.snn.fake_quant`)."""

    def __init__(self, config: SNNConfig, env: EnvSpec, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.env = env
        self.scale_percentile = 100.0  # set by post-training quantization (agent.quantize)
        self.rng = np.random.default_rng(seed)  # Poisson draws when predict() gets no rng
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        input_size = env.observation_size * env.encoder.channels_per_dim()
        sizes = [input_size, *config.hidden, len(env.action_names)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, size in itertools.pairwise(sizes):
            bound = 1.0 / np.sqrt(fan_in)
            w = (torch.rand(size, fan_in, generator=gen) * 2 - 1) * bound * 2.0
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(size)))
        if config.dueling:  # Q = V + A - mean(A): the value row, the advantages in weights[-1]
            self.value_weight = nn.Parameter(torch.zeros(1, sizes[-2]))
            self.value_bias = nn.Parameter(torch.zeros(1))
        # the tick loop's constants, as buffers so that they live on the network's device
        # (a captured CUDA graph cannot copy them from the host); not in the state dict
        for name, value in (("zero", 0.0), ("one", 1.0), ("out_threshold", OUTPUT_THRESHOLD)):
            self.register_buffer(f"const_{name}", f32(value), persistent=False)
        n_hidden = len(config.hidden)
        if not 0.0 < config.alpha_decay <= 1.0:
            raise ValueError(f"alpha_decay must lie in (0, 1], got {config.alpha_decay}")
        # per hidden layer; learned ones are clamped where used, so that a value read
        # back from an artifact is the value exported, bit for bit
        alpha = torch.full((n_hidden,), float(config.alpha_decay))
        thr = torch.full((n_hidden,), float(config.threshold))
        for name, value, learned in (
            ("alpha", alpha, config.learn_alpha),
            ("threshold", thr, config.learn_threshold),
        ):
            if learned:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    # ------------------------------------------------------------------ parameters

    def alphas(self) -> torch.Tensor:
        """Hidden layers' alpha_decay, float32 [hidden layers] (learned: kept in [0.05, 1])."""
        return self.alpha.clamp(0.05, 1.0) if self.config.learn_alpha else self.alpha

    def thresholds(self) -> torch.Tensor:
        """Hidden layers' thresholds in float units (learned: kept >= 0.05)."""
        return self.threshold.clamp_min(0.05) if self.config.learn_threshold else self.threshold

    def output_parameters(self) -> list[torch.Tensor]:
        """Everything the output layer's Q-values are linear in."""
        out = [self.weights[-1], self.biases[-1]]
        return [*out, self.value_weight, self.value_bias] if self.config.dueling else out

    def set_hidden(self, alphas: list[float], thresholds: list[float]) -> None:
        """Load per-layer leaks and thresholds (from an artifact)."""
        with torch.no_grad():
            self.alpha.copy_(torch.tensor(alphas, dtype=torch.float32))
            self.threshold.copy_(torch.tensor(thresholds, dtype=torch.float32))

    def layer_params(self, mode: Mode = "float") -> list[LayerParams]:
        """The layers in ``float`` units or fake-quantized (``quant``) chip units."""
        sub = self.config.reset == "reset_by_subtraction"
        alphas, thresholds = self.alphas(), self.thresholds()
        zero = self.const_zero
        layers = []
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            hidden = k < len(self.weights) - 1
            if not hidden and self.config.dueling:
                w = self.value_weight + (w - w.mean(dim=0, keepdim=True))
                b = self.value_bias + (b - b.mean())
            layers.append(
                LayerParams(
                    weight=w,
                    i_offset=b,
                    threshold=thresholds[k] if hidden else self.const_out_threshold,
                    alpha_decay=alphas[k] if hidden else self.const_one,
                    reset_by_subtraction=sub,
                    v_reset=zero,
                    v_init=zero,
                    scale=self.const_one,
                )
            )
        if mode == "float":
            return layers
        if mode == "quant":
            return fake_quant(layers, self.scale_percentile)
        raise ValueError(f"mode must be 'float' or 'quant', got {mode!r}")

    # ------------------------------------------------------------------ running

    def encode(
        self, observations: np.ndarray, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        """Observations [B, obs] -> float32 raster [B, input_ticks, n_in] via hw.encoding
        (Poisson: fresh draws from ``rng``, else from the network's own generator)."""
        obs = np.asarray(observations, np.float32)
        raster = encode(self.env, obs, rng=rng if rng is not None else self.rng)  # type: ignore[arg-type]
        return torch.from_numpy(raster.astype(np.float32))

    def forward(
        self, raster: torch.Tensor, mode: Mode = "float", record: bool = False
    ) -> SimOutput:
        return simulate_fast(
            raster,
            self.layer_params(mode),
            self.config.ticks,
            self.config.readout,
            record=record,
            slope=self.config.surrogate_slope,
        )

    @torch.no_grad()
    def predict(
        self, observations: np.ndarray, mode: Mode = "float", rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Greedy actions, int64 [B], for observations float32 [B, obs]."""
        return greedy(self(self.encode(observations, rng), mode).q_values)
