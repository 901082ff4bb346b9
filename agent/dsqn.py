"""The paper's recipe: a deep spiking Q-network trained directly by Q-learning.

DQN on the spiking network itself (no float MLP anywhere), by the one DQN loop
(:mod:`agent.dqn`): the Q-values come from the fast forward of the exact tick
semantics (:func:`agent.snn.simulate_fast`) with a surrogate gradient; a
Poisson-coded network draws fresh input spikes for every forward.

Selection trusts the 8-bit model: the best few checkpoints of training (by greedy
float evaluation) and the average of their weights are each exported to 8 bits and
run on the emulator over ``validation_episodes`` episodes of their own seed range;
the best of them is the run's network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from agent.dqn import Checkpoints, train_dqn
from agent.network import Mode, SpikingQNet, env_spec
from agent.options import DQNArgs, SNNConfig
from agent.quantize import emulator_return
from agent.rollout import Episodes, run_episodes
from agent.teacher import TRAIN_SEED_BASE


def scale_output(net: SpikingQNet, factor: float) -> None:
    """Multiply the Q-values by ``factor``: the output layer is a linear integrator, so
    scaling its weights and bias scales its final membrane exactly as much."""
    if factor != 1.0:
        with torch.no_grad():
            for p in net.output_parameters():
                p.mul_(factor)


def spikes(net: SpikingQNet, obs: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Fresh input spikes for ``obs`` (made on the host, by the artifact's encoder)."""
    return net.encode(obs, rng)


def q_float(net: SpikingQNet, raster: torch.Tensor) -> torch.Tensor:
    """Q-values of the float network on input spikes (moved to the network's device)."""
    return net(raster.to(net.weights[0].device), "float").q_values


def train_dsqn(
    env_id: str,
    args: DQNArgs,
    out_dir: Path,
    *,
    seed: int,
    snn: SNNConfig,
    validation_episodes: int = 100,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[SpikingQNet, dict]:
    """Train a new network; return the one chosen on the 8-bit emulator and a summary.
    Writes the TensorBoard curves into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_rng = np.random.default_rng(seed + 1)
    eval_base = TRAIN_SEED_BASE + 200_000 + 10_000 * (seed % 50)

    def build(states: np.ndarray) -> SpikingQNet:
        net = SpikingQNet(snn, env_spec(env_id, snn, states), seed=seed)
        scale_output(net, args.reward_scale)  # learn in scaled units (undone at the end)
        return net

    def evaluate(net: SpikingQNet, k: int, mode: Mode = "float") -> Episodes:
        first = eval_base + (k % 400) * args.eval_episodes
        seeds = range(first, first + args.eval_episodes)
        return run_episodes(env_id, lambda o: net.predict(o, mode, eval_rng), seeds)

    def confirm(net: SpikingQNet, k: int) -> Episodes:
        # an early stop needs the 8-bit network to hold too: a float evaluation of 497.8
        # at 20,000 steps (seed 7) stopped a run whose 8-bit checkpoints then scored
        # 168-377 on validation
        return evaluate(net, k, "quant")

    writer = SummaryWriter(str(out_dir))
    net, kept, info = train_dqn(
        env_id, args, build, spikes, q_float, evaluate, seed=seed, writer=writer, tag="dsqn",
        progress=progress, device=device, confirm=confirm,
    )  # fmt: skip
    assert isinstance(net, SpikingQNet)
    net, selection = select_on_emulator(net, kept, args, env_id, seed, validation_episodes)
    for name, r in selection["candidates"].items():
        writer.add_text("selection", f"{name}: {r['mean']:.1f} (min {r['min']:.0f})")
    writer.add_scalar("eval/return_8bit", selection["candidates"][selection["chosen"]]["mean"])
    writer.close()
    return net, {**info, "selection": selection}


def select_on_emulator(
    net: SpikingQNet,
    kept: Checkpoints,
    args: DQNArgs,
    env_id: str,
    seed: int,
    episodes: int,
) -> tuple[SpikingQNet, dict]:
    """Each kept checkpoint and their weight average, exported to 8 bits (the SDK's
    scale) and scored on the emulator over ``episodes`` validation episodes; ``net``
    is loaded with the best and returned in reward units."""
    states = {f"step {step}": state for _, step, state in kept.kept}
    if len(kept.kept) > 1:
        states["average"] = {
            k: torch.stack([s[k].float() for _, _, s in kept.kept]).mean(0).to(v.dtype)
            for k, v in kept.best[2].items()
        }
    results: dict[str, dict] = {}
    for name, state in states.items():
        net.load_state_dict(state)
        scale_output(net, 1.0 / args.reward_scale)
        v = emulator_return(net, env_id, episodes, seed, seed_offset=600_000)
        scale_output(net, args.reward_scale)
        results[name] = {"mean": v.mean, "min": v.min, "agreement": v.agreement}
    chosen = max(results, key=lambda k: (results[k]["mean"], results[k]["min"]))
    net.load_state_dict(states[chosen])
    scale_output(net, 1.0 / args.reward_scale)
    return net, {"chosen": chosen, "episodes": episodes, "candidates": results}
