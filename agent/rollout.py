"""Greedy episodes of many Gymnasium environments in lockstep, one batched policy call
per step (so an emulator or torch policy sees a batch, not one observation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

# observations float32 [B, obs] -> actions int [B]
Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class Episodes:
    returns: np.ndarray  # float64 [episodes]
    lengths: np.ndarray  # int64 [episodes]
    states: list[np.ndarray] = field(default_factory=list)  # visited observations, per step

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    def summary(self) -> dict[str, float]:
        r = self.returns
        return {
            "episodes": len(r),
            "mean": float(r.mean()),
            "std": float(r.std()),
            "min": float(r.min()),
            "max": float(r.max()),
            "mean_length": float(self.lengths.mean()),
        }

    def all_states(self) -> np.ndarray:
        return np.concatenate(self.states) if self.states else np.zeros((0, 0), np.float32)


def run_episodes(
    env_id: str,
    policy: Policy,
    seeds: Sequence[int],
    *,
    keep_states: bool = False,
    epsilon: float = 0.0,
    rng: np.random.Generator | None = None,
) -> Episodes:
    """One episode per seed (``env.reset(seed=seed)``), all stepped together.

    ``epsilon`` > 0 replaces that share of actions by uniform random ones (``rng``)."""
    envs = [gym.make(env_id) for _ in seeds]
    try:
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)])
        obs = obs.astype(np.float32)
        n_actions = int(envs[0].action_space.n)  # type: ignore[attr-defined]
        active = np.ones(len(envs), bool)
        returns = np.zeros(len(envs))
        lengths = np.zeros(len(envs), np.int64)
        states: list[np.ndarray] = []
        while active.any():
            idx = np.flatnonzero(active)
            batch = obs[idx]
            if keep_states:
                states.append(batch.copy())
            actions = np.asarray(policy(batch)).astype(np.int64)
            if epsilon > 0:
                assert rng is not None
                flip = rng.random(len(idx)) < epsilon
                actions = np.where(flip, rng.integers(0, n_actions, len(idx)), actions)
            for j, i in enumerate(idx):
                o, r, term, trunc, _ = envs[i].step(int(actions[j]))
                obs[i] = o
                returns[i] += float(r)
                lengths[i] += 1
                if term or trunc:
                    active[i] = False
        return Episodes(returns, lengths, states)
    finally:
        for env in envs:
            env.close()
