"""Hardware-aware fine-tuning to 8 bits, for both recipes.

Each pipeline of :class:`~agent.options.QATArgs` turns the trained float network
into an 8-bit candidate; the candidate with the best greedy return of its exported
artifact on the emulator (episodes from the training seed range) is kept. The
pipelines follow the two of arXiv 2504.06748, in our chip's terms:

- ``ptq-percentile``: post-training quantization with percentile-based scaling.
  No training: each layer's scale is ``127 / percentile(|W|, p)`` instead of the
  SDK's ``127 / max|W|``, the few weights above clip to +-127, and the threshold
  and ``i_offset`` are scaled by the same factor (so firing stays where it was up
  to rounding); ``p`` is chosen among ``percentiles`` on the emulator.
- ``qat-adaptive-threshold``: quantization-aware training in which the hidden
  thresholds are learned along with the weights (their chip value is the learned
  float threshold times the layer's scale).
- ``qat``: quantization-aware training with the SDK's scale and fixed thresholds.

Both QAT pipelines run the fake-quantized network forward (straight-through
rounding) with a ramped pull of the float masters toward their 8-bit grid, and
distil into it: from the MLP teacher (``distill``) or from the network's own float
self, its Q-values averaged over Poisson draws (``dsqn``; :class:`SelfTeacher`).

The chosen candidate has the best return on the emulator over ``select_episodes``
validation episodes, or, among the candidates whose mean is within one standard error
of the difference from that best (tied on the evidence), the highest float-vs-8-bit
agreement on the states it visits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.export import to_artifact
from agent.network import SpikingQNet
from agent.options import DistillArgs, QATArgs, Recipe
from agent.rollout import run_episodes
from agent.snn import greedy
from agent.teacher import TRAIN_SEED_BASE, Teacher
from hw.emulator import EmulatorBackend
from hw.encoding import encode


@dataclass(frozen=True)
class Validation:
    """A candidate's greedy episodes on the emulator (8-bit) and how often its float
    masters pick the same action on the same input spikes."""

    mean: float
    min: float
    se: float  # standard error of the mean
    agreement: float


def emulator_return(
    net: SpikingQNet, env_id: str, episodes: int, seed: int, seed_offset: int = 400_000
) -> Validation:
    """Greedy returns of ``net``'s exported artifact on the emulator, over episodes of
    the training seed range (Poisson draws seeded from ``seed``), and the agreement of
    its float masters on the states it visits."""
    rng = np.random.default_rng(seed)
    first = TRAIN_SEED_BASE + seed_offset + 1000 * (seed % 100)
    seeds = [first + i for i in range(episodes)]
    art = to_artifact(net, "candidate")
    same = total = 0
    with EmulatorBackend() as emu:
        emu.load(art)

        def act(obs: np.ndarray) -> np.ndarray:
            nonlocal same, total
            draws = rng.integers(0, 2**53, len(obs))
            actions = emu.infer("candidate", obs, draws).actions
            raster = torch.from_numpy(encode(art, obs, seeds=draws).astype(np.float32))
            with torch.no_grad():
                same += int((greedy(net(raster, "float").q_values) == actions).sum())
            total += len(obs)
            return actions

        ev = run_episodes(env_id, act, seeds)
    se = float(ev.returns.std() / np.sqrt(len(ev.returns)))
    return Validation(ev.mean, float(ev.returns.min()), se, same / max(total, 1))


def with_options(net: SpikingQNet, **changes: Any) -> SpikingQNet:
    """A copy of ``net`` with other network options (e.g. learned thresholds)."""
    new = SpikingQNet(dataclasses.replace(net.config, **changes), net.env)
    new.load_state_dict(net.state_dict())
    new.scale_percentile = net.scale_percentile
    return new


def ptq_percentile(
    net: SpikingQNet, env_id: str, qat: QATArgs, seed: int
) -> tuple[SpikingQNet, dict[str, Any]]:
    tried = {}
    best_p, best = 100.0, (-np.inf, -np.inf)
    for p in sorted(qat.percentiles, reverse=True):
        cand = with_options(net)
        cand.scale_percentile = float(p)
        v = emulator_return(cand, env_id, qat.select_episodes, seed)
        score = (v.mean, v.min)
        tried[str(p)] = v.mean
        if score > best:  # ties keep the larger percentile (closest to the SDK's rule)
            best_p, best = float(p), score
    out = with_options(net)
    out.scale_percentile = best_p
    return out, {"percentile": best_p, "tried": tried}


class SelfTeacher:
    """A dsqn network's own float self as the teacher of its 8-bit version: its
    Q-values averaged over ``draws`` Poisson draws (the Q estimate without the input
    noise), the greedy action of that average."""

    name = "the network's own float self"

    def __init__(self, net: SpikingQNet, draws: int, seed: int) -> None:
        self.net = with_options(net)
        self.draws = draws
        self.rng = np.random.default_rng(seed + 11)

    @torch.no_grad()
    def q(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, np.float32)
        draws = self.draws if self.net.config.encoder == "poisson" else 1
        total = np.zeros((len(obs), len(self.net.env.action_names)), np.float64)
        # about 4096 rows per forward: larger batches run out of cache and glibc maps
        # them fresh every time (16 draws x 4096 observations took 5x longer a row)
        step = max(1, 4096 // draws)
        for chunk in range(0, len(obs), step):
            o = np.repeat(obs[chunk : chunk + step], draws, axis=0)
            q = self.net(self.net.encode(o, self.rng), "float").q_values.numpy()
            total[chunk : chunk + step] = q.reshape(-1, draws, q.shape[1]).mean(axis=1)
        return total.astype(np.float32)

    def act(self, observations: np.ndarray) -> np.ndarray:
        return np.argmax(self.q(observations), axis=1)


def finetune(
    net: SpikingQNet,
    recipe: Recipe,
    env_id: str,
    qat: QATArgs,
    *,
    distill: DistillArgs,
    teacher: Teacher | None,
    out_dir: Path,
    seed: int,
    progress: bool = True,
) -> tuple[SpikingQNet, dict[str, Any]]:
    """Run each pipeline on ``net``; return the best 8-bit candidate and a report.

    The QAT pipelines distil into the fake-quantized network: from the run's teacher
    (distill: the MLP, maybe looked ahead) or from the network's own float self
    (:class:`SelfTeacher`, dsqn: the policy still comes from Q-learning on the spiking
    network)."""
    from agent.distill import distill as run_distill

    if recipe == "dsqn":
        teacher = SelfTeacher(net, distill.teacher_draws, seed)
    assert teacher is not None, "the distill recipe fine-tunes with its teacher"
    candidates: dict[str, SpikingQNet] = {}
    report: dict[str, Any] = {"pipelines": {}}
    for pipeline in qat.pipelines:
        if pipeline == "ptq-percentile":
            cand, info = ptq_percentile(net, env_id, qat, seed)
        else:
            start = with_options(net, learn_threshold=pipeline == "qat-adaptive-threshold")
            cand, info = run_distill(
                start, teacher, env_id, distill, out_dir, seed=seed, mode="quant",
                tag=f"finetune-{pipeline}", progress=progress,
            )  # fmt: skip
            info = {k: v for k, v in info.items() if k != "score"}
        v = emulator_return(cand, env_id, qat.select_episodes, seed)
        report["pipelines"][pipeline] = {
            **info, "select_mean": v.mean, "select_min": v.min, "select_se": v.se,
            "select_agreement": v.agreement,
        }  # fmt: skip
        candidates[pipeline] = cand
    # the best return, and among the candidates whose mean is within one standard error
    # of the difference from it (a tie, given the episodes) the one that decides most
    # like its float self
    sel = report["pipelines"]
    top = max(sel, key=lambda k: (sel[k]["select_mean"], sel[k]["select_min"]))

    def tied(k: str) -> bool:
        se = float(np.hypot(sel[top]["select_se"], sel[k]["select_se"]))
        return sel[top]["select_mean"] - sel[k]["select_mean"] <= se

    chosen = max(
        filter(tied, sel), key=lambda k: (sel[k]["select_agreement"], sel[k]["select_mean"])
    )
    report["chosen"] = chosen
    report["select_episodes"] = qat.select_episodes
    return candidates[chosen], report
