"""Float MLP Double-DQN: the teacher the spiking network is distilled from, trained
by the one DQN loop (:mod:`agent.dqn`); the checkpoint kept is the one with the best
greedy return over ``eval_episodes`` episodes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agent.lookahead import Lookahead
from agent.options import TeacherArgs
from agent.rollout import Episodes, run_episodes


class MLP(nn.Module):
    def __init__(self, n_obs: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_obs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def q(self, observations: np.ndarray) -> np.ndarray:
        return self(torch.as_tensor(np.asarray(observations, np.float32))).numpy()

    @torch.no_grad()
    def act(self, observations: np.ndarray) -> np.ndarray:
        return np.argmax(self.q(observations), axis=1)


class Teacher(Protocol):
    """What distillation asks of a teacher: Q-values and greedy actions for observations
    [N, obs] (the MLP, the MLP looked ahead, a dsqn network's own float self)."""

    def q(self, observations: np.ndarray) -> np.ndarray: ...

    def act(self, observations: np.ndarray) -> np.ndarray: ...


def planned(net: MLP, env_id: str, args: TeacherArgs) -> Teacher:
    """The teacher as evaluation and distillation see it: ``net`` itself, or ``net``
    looked ahead ``args.lookahead`` steps through the environment's dynamics."""
    return net if args.lookahead == 0 else Lookahead(net, env_id, args.lookahead, args.gamma)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Seeds of episodes used while training (evaluation during training, DAgger rollouts)
# live in [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1e6); `s2loop eval` defaults far from them.
TRAIN_SEED_BASE = 10_000


def train_teacher(
    env_id: str,
    args: TeacherArgs,
    out_dir: Path,
    *,
    seed: int,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Teacher, dict]:
    """Train by the DQN loop (:mod:`agent.dqn`), write ``teacher.pt`` and the TensorBoard
    curves in ``out_dir``, return the best net by greedy evaluation (of the net looked
    ahead, with ``args.lookahead``), as :func:`planned` makes it."""
    from agent.dqn import train_dqn

    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    n_obs = int(np.prod(env.observation_space.shape))  # type: ignore[arg-type]
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    env.close()
    q = MLP(n_obs, n_actions, args.hidden)
    teacher = planned(q, env_id, args)  # refuses a lookahead the environment cannot take
    eval_seed = TRAIN_SEED_BASE + 1000 * (seed % 100)

    def evaluate(net: nn.Module, k: int) -> Episodes:
        first = eval_seed + (k % 40) * args.eval_episodes
        return run_episodes(env_id, teacher.act, range(first, first + args.eval_episodes))

    writer = SummaryWriter(str(out_dir))
    q, _, info = train_dqn(
        env_id, args, q, lambda net, obs, rng: torch.from_numpy(obs),
        lambda net, x: net(x.to(next(net.parameters()).device)), evaluate,
        seed=seed, writer=writer, tag="teacher", progress=progress, device=device,
    )  # fmt: skip
    writer.close()
    torch.save(
        {
            "state_dict": q.state_dict(),
            "n_obs": n_obs,
            "n_actions": n_actions,
            "hidden": args.hidden,
            "env_id": env_id,
            "lookahead": args.lookahead,
            "gamma": args.gamma,
        },
        out_dir / "teacher.pt",
    )
    return planned(q, env_id, args), info


def load_teacher(path: Path) -> Teacher:
    """The teacher ``train_teacher`` returned, from its ``teacher.pt``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = MLP(ckpt["n_obs"], ckpt["n_actions"], ckpt["hidden"])
    net.load_state_dict(ckpt["state_dict"])
    depth = int(ckpt.get("lookahead", 0))  # files written before lookahead have none
    return net if depth == 0 else Lookahead(net, ckpt["env_id"], depth, float(ckpt["gamma"]))
