"""Float MLP Double-DQN: the teacher the spiking network is distilled from.

Replay buffer, target network (hard copy), Double-DQN targets, Huber loss,
bootstrap on ``terminated`` only (Gymnasium 1.x: a ``truncated`` episode was
cut by the time limit, its last state still has a future). The checkpoint
kept is the one with the best greedy return over ``eval_episodes`` episodes.
"""

from __future__ import annotations

import copy
import csv
import random
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.options import TeacherArgs
from agent.rollout import run_episodes


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Seeds of episodes used while training (evaluation during training, DAgger rollouts)
# live in [TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1e6); `s2loop eval` defaults far from them.
TRAIN_SEED_BASE = 10_000


def train_teacher(
    env_id: str, args: TeacherArgs, out_dir: Path, *, seed: int, progress: bool = True
) -> tuple[MLP, dict]:
    """Train, write ``teacher.pt`` and ``teacher.csv`` in ``out_dir``, return the best net."""
    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    n_obs = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    q = MLP(n_obs, n_actions, args.hidden)
    target = copy.deepcopy(q)
    opt = torch.optim.Adam(q.parameters(), lr=args.lr)
    rng = np.random.default_rng(seed)

    obs_buf = np.zeros((args.buffer_size, n_obs), np.float32)
    next_buf = np.zeros((args.buffer_size, n_obs), np.float32)
    act_buf = np.zeros(args.buffer_size, np.int64)
    rew_buf = np.zeros(args.buffer_size, np.float32)
    term_buf = np.zeros(args.buffer_size, np.float32)
    size = ptr = 0

    log_f = open(out_dir / "teacher.csv", "w", newline="")  # noqa: SIM115
    log = csv.writer(log_f)
    log.writerow(["step", "seconds", "episodic_return", "eval_mean", "eval_min", "td_loss", "eps"])
    best = {"eval_mean": -np.inf, "step": 0}
    best_state = copy.deepcopy(q.state_dict())
    eval_seed = TRAIN_SEED_BASE + 1000 * (seed % 100)
    start = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    ep_ret, td = 0.0, float("nan")
    bar = tqdm(range(1, args.total_steps + 1), desc=f"teacher {env_id}", disable=not progress)
    for step in bar:
        eps = max(
            args.eps_end,
            args.eps_start - (args.eps_start - args.eps_end) * step / args.eps_steps,
        )
        if rng.random() < eps:
            a = int(rng.integers(n_actions))
        else:
            a = int(q.act(obs[None])[0])
        nxt, r, term, trunc, _ = env.step(a)
        obs_buf[ptr], next_buf[ptr], act_buf[ptr] = obs, nxt, a
        rew_buf[ptr], term_buf[ptr] = r, float(term)
        ptr = (ptr + 1) % args.buffer_size
        size = min(size + 1, args.buffer_size)
        ep_ret += float(r)
        obs = nxt
        if term or trunc:
            log.writerow([step, f"{time.perf_counter() - start:.1f}", ep_ret, "", "", td, eps])
            obs, _ = env.reset()
            ep_ret = 0.0

        if step % args.target_every == 0:
            target.load_state_dict(q.state_dict())
        for _ in range(
            args.gradient_steps
            if step >= args.learning_starts and step % args.train_every == 0
            else 0
        ):
            idx = rng.integers(0, size, args.batch_size)
            o = torch.from_numpy(obs_buf[idx])
            o2 = torch.from_numpy(next_buf[idx])
            with torch.no_grad():
                a2 = q(o2).argmax(dim=1, keepdim=True)
                y = torch.from_numpy(rew_buf[idx]) + args.gamma * (
                    1.0 - torch.from_numpy(term_buf[idx])
                ) * target(o2).gather(1, a2).squeeze(1)
            pred = q(o).gather(1, torch.from_numpy(act_buf[idx])[:, None]).squeeze(1)
            loss = nn.functional.smooth_l1_loss(pred, y)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(q.parameters(), 10.0)
            opt.step()
            td = float(loss.detach())

        if step % args.eval_every == 0 and step >= args.learning_starts:
            seeds = [eval_seed + step + i for i in range(args.eval_episodes)]
            ev = run_episodes(env_id, q.act, seeds)
            if args.stop_at is not None and ev.mean >= args.stop_at:
                # confirm on more episodes before stopping early
                more = [eval_seed + step + 500 + i for i in range(args.eval_episodes)]
                ev2 = run_episodes(env_id, q.act, more)
                ev = type(ev)(np.concatenate([ev.returns, ev2.returns]), ev.lengths)
            log.writerow(
                [step, f"{time.perf_counter() - start:.1f}", "", ev.mean, ev.returns.min(), td, eps]
            )
            log_f.flush()
            bar.set_postfix(eval=f"{ev.mean:.1f}", best=f"{best['eval_mean']:.1f}")
            if ev.mean >= best["eval_mean"]:
                best = {"eval_mean": ev.mean, "eval_min": float(ev.returns.min()), "step": step}
                best_state = copy.deepcopy(q.state_dict())
            if args.stop_at is not None and ev.mean >= args.stop_at:
                break
    log_f.close()
    env.close()
    q.load_state_dict(best_state)
    info = {**best, "seconds": time.perf_counter() - start, "steps_run": step}
    torch.save(
        {
            "state_dict": q.state_dict(),
            "n_obs": n_obs,
            "n_actions": n_actions,
            "hidden": args.hidden,
        },
        out_dir / "teacher.pt",
    )
    return q, info


def load_teacher(path: Path) -> MLP:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = MLP(ckpt["n_obs"], ckpt["n_actions"], ckpt["hidden"])
    net.load_state_dict(ckpt["state_dict"])
    return net
