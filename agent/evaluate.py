"""Greedy evaluation of an artifact over seeded episodes, and the decision agreement
between its float master network and its 8-bit form.

Backends: ``emulator`` (hw.emulator, the 8-bit network), ``torch`` (the same 8-bit
network in torch, bit-identical to the emulator), ``float`` (the float masters,
``agent.reference``). Agreement is measured on the states the evaluated backend
visits: the share where the float reference picks the same action.
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
) -> dict[str, Any]:
    """Mean/std/min return over ``episodes`` episodes with seeds ``seed .. seed+episodes-1``.

    ``compare``: other policies (name -> policy) whose agreement with the evaluated
    backend is measured on the same visited states (``agreement_with``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_float = all(lay.float_weight is not None for lay in artifact.layers)
    check = agreement and has_float
    emu = EmulatorBackend()
    ref = ReferenceBackend()
    if backend == "emulator" or (check and backend == "float"):
        emu.load(artifact)
    if has_float:
        ref.load(artifact)
    same = total = 0
    compare = compare or {}
    same_with = dict.fromkeys(compare, 0)

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal same, total
        if backend == "emulator":
            actions = emu.infer(artifact.name, obs).actions
        elif backend == "torch":
            actions = greedy(run_artifact(artifact, obs).q_values)
        else:
            actions = ref.infer(artifact.name, obs).actions
        if check:
            other = (ref if backend != "float" else emu).infer(artifact.name, obs).actions
            same += int((other == actions).sum())
        total += len(actions)
        for name, pol in compare.items():
            same_with[name] += int((np.asarray(pol(obs)) == actions).sum())
        return actions

    seeds = list(range(seed, seed + episodes))
    ep = run_episodes(artifact.env_id, act, seeds)
    emu.close()
    ref.close()
    out: dict[str, Any] = {"backend": backend, "seed": seed, **ep.summary()}
    out["returns"] = [float(r) for r in ep.returns]
    if check and total:
        out["agreement"] = same / total
        out["agreement_states"] = total
    if compare and total:
        out["agreement_with"] = {k: v / total for k, v in same_with.items()}
    return out
