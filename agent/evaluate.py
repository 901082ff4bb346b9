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


def decision_margin(
    artifact: ModelArtifact,
    *,
    episodes: int = 10,
    draws: int = 16,
    seed: int = DEFAULT_EVAL_SEED,
) -> dict[str, Any]:
    """How far the 8-bit network's decisions are from flipping, on the states its greedy
    policy visits (emulator, ``episodes`` episodes from ``seed``).

    Each state runs ``draws`` times with different input spikes. Per state: the gap
    between the best and second-best mean Q-value, and the std across draws of that
    difference (the Q noise of the Poisson code); the margin is their ratio. Reported:
    medians over states, the 10th percentile of the margin, and the share of draws whose
    greedy action differs from that of the mean Q-values. A deterministic encoder has
    no draw noise: its margin is not defined (None), its gap is still reported."""
    rng = np.random.default_rng(seed + 5)
    stochastic = artifact.encoder.kind == "poisson"
    with EmulatorBackend() as emu:
        emu.load(artifact)

        def act(obs: np.ndarray) -> np.ndarray:
            seeds = rng.integers(0, 2**53, len(obs)) if stochastic else None
            return emu.infer(artifact.name, obs, seeds).actions

        states = run_episodes(
            artifact.env_id, act, list(range(seed, seed + episodes)), keep_states=True
        ).all_states()
        k = draws if stochastic else 1
        q = []
        for chunk in range(0, len(states), 512):
            obs = np.repeat(states[chunk : chunk + 512], k, axis=0)
            seeds = rng.integers(0, 2**53, len(obs)) if stochastic else None
            n_act = len(artifact.action_names)
            q.append(emu.infer(artifact.name, obs, seeds).q_values.reshape(-1, k, n_act))
    qv = np.concatenate(q).astype(np.float64)  # [S, K, A]
    mean = qv.mean(axis=1)
    order = np.argsort(-mean, axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(qv))
    diff = qv[rows, :, best] - qv[rows, :, second]  # [S, K]
    gap = diff.mean(axis=1)
    out: dict[str, Any] = {
        "states": len(qv),
        "draws": k,
        "median_gap": float(np.median(gap)),
    }
    if stochastic:
        noise = diff.std(axis=1)
        margin = gap / np.maximum(noise, 1e-12)
        out["median_noise_std"] = float(np.median(noise))
        out["median_margin"] = float(np.median(margin))
        out["p10_margin"] = float(np.quantile(margin, 0.1))
        out["flip_rate"] = float((qv.argmax(axis=2) != best[:, None]).mean())
    else:
        out["median_margin"] = None
    return out
