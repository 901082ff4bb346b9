"""Float MLP Double-DQN: the teacher the spiking network is distilled from, trained
by the one DQN loop (:mod:`agent.dqn`); the checkpoint kept is the one with the best
greedy return over ``eval_episodes`` episodes. With ``lookahead`` the teacher plans
through the environment's dynamics (:mod:`agent.lookahead`), and with ``improve_rounds``
it is then fitted to that plan (:func:`improve`) and acts alone."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from agent.lookahead import Lookahead
from agent.options import DistillArgs, TeacherArgs
from agent.rollout import Episodes, run_episodes


class MLP(nn.Module):
    name = "float MLP teacher"  # what evaluations and cards call it

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

    name: str

    def q(self, observations: np.ndarray) -> np.ndarray: ...

    def act(self, observations: np.ndarray) -> np.ndarray: ...


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
    curves in ``out_dir``; return the teacher: the best net by greedy evaluation, looked
    ahead ``args.lookahead`` steps, or with ``args.improve_rounds`` fitted to that
    lookahead (:func:`improve`) and acting alone."""
    from agent.dqn import train_dqn

    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    n_obs = int(np.prod(env.observation_space.shape))  # type: ignore[arg-type]
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    env.close()
    q = MLP(n_obs, n_actions, args.hidden)
    # the checkpoint is chosen by the return of the teacher the run distils: looked ahead
    # (which refuses an environment it cannot plan in) when there is a lookahead
    judge = Lookahead(q, env_id, args.lookahead, args.gamma) if args.lookahead else q
    eval_seed = TRAIN_SEED_BASE + 1000 * (seed % 100)

    def evaluate(net: nn.Module, k: int) -> Episodes:
        first = eval_seed + (k % 40) * args.eval_episodes
        return run_episodes(env_id, judge.act, range(first, first + args.eval_episodes))

    writer = SummaryWriter(str(out_dir))
    q, _, info = train_dqn(
        env_id, args, q, lambda net, obs, rng: torch.from_numpy(obs),
        lambda net, x: net(x.to(next(net.parameters()).device)), evaluate,
        seed=seed, writer=writer, tag="teacher", progress=progress, device=device,
    )  # fmt: skip
    if args.improve_rounds:
        q, info["improve"] = improve(q, env_id, args, seed=seed, writer=writer)
    writer.close()
    # improved, the network acts alone; otherwise the run's teacher is the judge above
    teacher: Teacher = q if args.improve_rounds else judge
    torch.save(
        {
            "state_dict": q.state_dict(),
            "n_obs": n_obs,
            "n_actions": n_actions,
            "hidden": args.hidden,
            "env_id": env_id,
            "lookahead": getattr(teacher, "depth", 0),
            "gamma": args.gamma,
            "name": q.name,
        },
        out_dir / "teacher.pt",
    )
    return teacher, info


# the improvement's choice of round: its greedy return on this many training-range episodes
IMPROVE_EVAL_EPISODES = 100


def improve(
    net: MLP, env_id: str, args: TeacherArgs, *, seed: int, writer: SummaryWriter
) -> tuple[MLP, dict]:
    """Policy improvement learned by the network (expert iteration): ``args.improve_rounds``
    DAgger rounds fit ``net`` to its own lookahead (``args.lookahead`` steps) on the states
    of its own episodes, with the distillation's loss; the round whose network scores best
    on ``IMPROVE_EVAL_EPISODES`` training-range episodes is kept, and acts alone."""
    from agent.distill import StateSet, _loss

    planner = Lookahead(copy.deepcopy(net), env_id, args.lookahead, args.gamma)
    rng = np.random.default_rng(seed + 13)
    base = TRAIN_SEED_BASE + 700_000 + 1000 * (seed % 100)
    data = StateSet()
    for eps, first in ((0.0, base), (0.1, base + 50)):  # the planner's own episodes
        ep = run_episodes(env_id, planner.act, range(first, first + 50), keep_states=True,
                          epsilon=eps, rng=rng)  # fmt: skip
        data.add(ep.all_states(), planner)
    gap, vstd = data.scales(10**9)
    loss_args = DistillArgs()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr_final)
    eval_seeds = range(base + 900, base + 900 + IMPROVE_EVAL_EPISODES)
    best = {"round": 0, "eval_mean": run_episodes(env_id, net.act, eval_seeds).mean}
    best_state = copy.deepcopy(net.state_dict())
    for rnd in range(1, args.improve_rounds + 1):
        obs, q_t = (torch.from_numpy(a) for a in data.arrays(10**9))
        for _ in range(args.improve_steps):
            idx = torch.from_numpy(rng.integers(0, len(obs), args.batch_size))
            loss = _loss(net(obs[idx]), q_t[idx], gap, vstd, loss_args)
            opt.zero_grad()
            loss.backward()
            opt.step()
        first = base + 100 + 30 * rnd  # the network drives; the planner labels its states
        roll = run_episodes(env_id, net.act, range(first, first + 30), keep_states=True,
                            epsilon=0.05, rng=rng)  # fmt: skip
        data.add(roll.all_states(), planner)
        mean = run_episodes(env_id, net.act, eval_seeds).mean
        writer.add_scalar("teacher/improve_loss", float(loss.detach()), rnd)
        writer.add_scalar("teacher/improve_return", mean, rnd)
        if mean > best["eval_mean"]:
            best = {"round": rnd, "eval_mean": mean}
            best_state = copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.name = f"float MLP teacher fitted to its own {args.lookahead}-step lookahead"
    return net, best


def load_teacher(path: Path) -> Teacher:
    """The teacher ``train_teacher`` returned, from its ``teacher.pt``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = MLP(ckpt["n_obs"], ckpt["n_actions"], ckpt["hidden"])
    net.load_state_dict(ckpt["state_dict"])
    net.name = ckpt.get("name", MLP.name)
    depth = int(ckpt.get("lookahead", 0))  # files written before lookahead have none
    return net if depth == 0 else Lookahead(net, ckpt["env_id"], depth, float(ckpt["gamma"]))
