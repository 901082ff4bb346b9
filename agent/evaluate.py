"""Greedy evaluation of an artifact over seeded episodes, and the decision agreement
between its float master network and its 8-bit form.

Backends: ``emulator`` (hw.emulator, the 8-bit network), ``torch`` (the same 8-bit
network in torch, bit-identical to the emulator), ``float`` (the float masters,
``agent.reference``). Agreement is measured on the states the evaluated backend
visits: the share where the float reference (or, evaluating ``float``, the
emulator) picks the same action on the same input spikes.

A Poisson-coded model draws fresh input spikes at every step; its evaluation is
repeated ``repeats`` times over the same episode seeds with different draws, and
reports the mean and std of the per-repeat means next to the pooled figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.reference import ReferenceBackend
from agent.rollout import Policy, run_episodes
from agent.snn import greedy, run_artifact
from hw.artifact import ModelArtifact
from hw.emulator import EmulatorBackend

# far from every seed used while training (agent.teacher.TRAIN_SEED_BASE + < 1e6)
DEFAULT_EVAL_SEED = 2_000_000
BACKENDS = ("emulator", "torch", "float")


def evaluate(
    artifact: ModelArtifact,
    *,
    episodes: int = 100,
    seed: int = DEFAULT_EVAL_SEED,
    backend: str = "emulator",
    agreement: bool = True,
    compare: dict[str, Policy] | None = None,
    repeats: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Mean/std/min return over ``episodes`` episodes with seeds ``seed .. seed+episodes-1``
    (times ``repeats`` for a Poisson model; a deterministic one runs once).

    ``compare``: other policies (name -> policy) whose agreement with the evaluated
    backend is measured on the same visited states (``agreement_with``). ``device``: where
    the float reference runs (``cuda`` for a GPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    stochastic = artifact.encoder.kind == "poisson"
    repeats = max(1, repeats) if stochastic else 1
    has_float = all(lay.float_weight is not None for lay in artifact.layers)
    check = agreement and has_float
    emu = EmulatorBackend()
    ref = ReferenceBackend(device)
    if backend == "emulator" or (check and backend == "float"):
        emu.load(artifact)
    if has_float:
        ref.load(artifact)
    same = total = 0
    compare = compare or {}
    same_with = dict.fromkeys(compare, 0)
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal same, total
        # one seed per observation, shared by every form of the model: same input spikes
        seeds = rng.integers(0, 2**53, len(obs)) if stochastic else None
        if backend == "emulator":
            actions = emu.infer(artifact.name, obs, seeds).actions
        elif backend == "torch":
            actions = greedy(run_artifact(artifact, obs, seeds=seeds).q_values)
        else:
            actions = ref.infer(artifact.name, obs, seeds).actions
        if check:
            other = (ref if backend != "float" else emu).infer(artifact.name, obs, seeds).actions
            same += int((other == actions).sum())
        total += len(actions)
        for name, pol in compare.items():
            same_with[name] += int((np.asarray(pol(obs)) == actions).sum())
        return actions

    seeds = list(range(seed, seed + episodes))
    runs = [run_episodes(artifact.env_id, act, seeds) for _ in range(repeats)]
    emu.close()
    ref.close()
    returns = np.concatenate([r.returns for r in runs])
    lengths = np.concatenate([r.lengths for r in runs])
    out: dict[str, Any] = {
        "backend": backend,
        "seed": seed,
        "episodes": episodes,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "mean_length": float(lengths.mean()),
    }
    if stochastic:
        means = np.array([r.mean for r in runs])
        out["encoder"] = "poisson"
        out["repeats"] = repeats
        out["repeat_means"] = [float(m) for m in means]
        out["repeat_std"] = float(means.std())
    out["returns"] = [float(r) for r in returns]
    if check and total:
        out["agreement"] = same / total
        out["agreement_states"] = total
    if compare and total:
        out["agreement_with"] = {k: v / total for k, v in same_with.items()}
    return out
