"""The one off-policy DQN loop: the float MLP teacher and the paper's recipe (dsqn)
both train here.

One linear loop (CleanRL's ``dqn.py`` is the model): ``num_envs`` Gymnasium
environments stepped together (``SAME_STEP`` autoreset, so a finished episode's
last observation is the one stored), epsilon-greedy acting through the network,
a replay of observations (a Poisson network draws fresh input spikes for every
forward), a target network updated by Polyak averaging every ``target_every`` steps
(``tau`` = 1 is a hard copy), Double-DQN targets, bootstrapping on ``terminated``
only, Huber loss, gradient clipping, a cosine-decayed learning rate.

With ``advantage_alpha`` > 0 the target is advantage learning (Bellemare et al.
2016): ``y = r + gamma Q'(s', a*) - alpha (max_b Q'(s, b) - Q'(s, a))``. Its fixed
point keeps the greedy action's value and lowers every other action's by a
``1 / (1 - alpha)``-times larger gap, so decisions survive input noise and 8-bit
rounding. ``target_draws`` > 1 averages the target network over several forwards
(fresh Poisson spikes each): a lower-variance target.

Curves go to TensorBoard under CleanRL's and SB3's names (``charts/episodic_return``,
``losses/td_loss``, ``charts/epsilon``, ``charts/learning_rate``, ``eval/return``,
``charts/action_gap``). Checkpoints: the ``keep_best`` best by greedy evaluation.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agent.options import DQNArgs
from agent.rollout import Episodes

# observations float32 [B, obs], a generator for Poisson draws -> Q-values [B, A]
QFn = Callable[[nn.Module, np.ndarray, np.random.Generator], torch.Tensor]
# the network, the env step -> greedy episodes (checkpoint selection)
EvalFn = Callable[[nn.Module, int], Episodes]


class Replay:
    """Transitions as numpy arrays: observations, not spikes."""

    def __init__(self, size: int, n_obs: int) -> None:
        self.obs = np.zeros((size, n_obs), np.float32)
        self.next_obs = np.zeros((size, n_obs), np.float32)
        self.action = np.zeros(size, np.int64)
        self.reward = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, np.float32)
        self.size = self.ptr = 0

    def add(self, obs, next_obs, action, reward, terminated) -> None:
        """Add a batch of transitions (arrays with a leading batch dimension)."""
        for j in range(len(action)):
            i = self.ptr
            self.obs[i], self.next_obs[i], self.action[i] = obs[j], next_obs[j], action[j]
            self.reward[i], self.terminated[i] = reward[j], float(terminated[j])
            self.ptr = (i + 1) % len(self.obs)
            self.size = min(self.size + 1, len(self.obs))


@dataclass
class Checkpoints:
    """The ``keep`` best network states by evaluation score, best first."""

    keep: int
    kept: list[tuple[float, int, dict]] = field(default_factory=list)  # (score, step, state)

    def offer(self, score: float, step: int, net: nn.Module) -> bool:
        if len(self.kept) >= self.keep and score < self.kept[-1][0]:
            return False
        self.kept.append((score, step, copy.deepcopy(net.state_dict())))
        self.kept.sort(key=lambda k: (-k[0], -k[1]))  # ties: the later one first
        del self.kept[self.keep :]
        return True

    @property
    def best(self) -> tuple[float, int, dict]:
        return self.kept[0]


def score(ev: Episodes) -> float:
    """Mean return, the worst episode breaking ties."""
    return ev.mean + 0.1 * float(ev.returns.min()) / len(ev.returns)


def td_loss(
    q_fn: QFn,
    net: nn.Module,
    target: nn.Module,
    replay: Replay,
    idx: np.ndarray,
    args: DQNArgs,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber loss against the (advantage-learning) Double-DQN target; also the mean
    action gap (best minus second best) of the online Q-values on ``s``."""
    n = len(idx)
    obs, nxt = replay.obs[idx], replay.next_obs[idx]
    q_both = q_fn(net, np.concatenate([obs, nxt]), rng)
    act = torch.from_numpy(replay.action[idx])[:, None]
    q_sa = q_both[:n].gather(1, act).squeeze(1)
    with torch.no_grad():
        a_next = q_both[n:].argmax(dim=1, keepdim=True)
        both = np.concatenate([obs, nxt]) if args.advantage_alpha > 0 else nxt
        qt = torch.stack([q_fn(target, both, rng) for _ in range(args.target_draws)]).mean(0)
        qt_next = qt[-n:]
        y = args.reward_scale * torch.from_numpy(replay.reward[idx]) + args.gamma * (
            1.0 - torch.from_numpy(replay.terminated[idx])
        ) * qt_next.gather(1, a_next).squeeze(1)
        if args.advantage_alpha > 0:
            qt_s = qt[:n]
            y = y - args.advantage_alpha * (qt_s.max(dim=1).values - qt_s.gather(1, act).squeeze(1))
        top2 = q_both[:n].detach().topk(2, dim=1).values
        gap = (top2[:, 0] - top2[:, 1]).mean()
    return nn.functional.smooth_l1_loss(q_sa, y), gap


def train_dqn(
    env_id: str,
    args: DQNArgs,
    net: nn.Module | Callable[[np.ndarray], nn.Module],
    q_fn: QFn,
    evaluate: EvalFn,
    *,
    seed: int,
    writer: SummaryWriter,
    tag: str = "dqn",
    progress: bool = True,
) -> tuple[nn.Module, Checkpoints, dict]:
    """Train ``net`` (or build it from the warm-up states with ``net(states)``).

    Returns the network loaded with its best checkpoint, the kept checkpoints and a
    summary."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    from agent.teacher import TRAIN_SEED_BASE  # the seed ranges live with the teacher

    envs = gym.make_vec(
        env_id,
        num_envs=args.num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    n_actions = int(envs.single_action_space.n)  # type: ignore[attr-defined]
    n_obs = int(np.prod(envs.single_observation_space.shape))  # type: ignore[arg-type]
    obs, _ = envs.reset(seed=[TRAIN_SEED_BASE + seed * 100 + i for i in range(args.num_envs)])
    replay = Replay(args.buffer_size, n_obs)
    start = time.perf_counter()
    ep_ret = np.zeros(args.num_envs)
    ep_len = np.zeros(args.num_envs, np.int64)
    step = 0

    def env_step(actions: np.ndarray) -> None:
        nonlocal obs, step
        nxt, r, term, trunc, info = envs.step(actions)
        done = term | trunc
        stored = nxt.copy()
        for i in np.flatnonzero(done):  # SAME_STEP: nxt already holds the new episode's start
            stored[i] = info["final_obs"][i]
        replay.add(obs, stored, actions, r, term)
        ep_ret[:] += r
        ep_len[:] += 1
        for i in np.flatnonzero(done):
            writer.add_scalar("charts/episodic_return", ep_ret[i], step + i + 1)
            writer.add_scalar("charts/episodic_length", ep_len[i], step + i + 1)
        ep_ret[done], ep_len[done] = 0.0, 0
        obs = nxt.astype(np.float32)
        step += args.num_envs

    # warm-up with random actions: fills the replay and (a new network) fixes its input scale
    while step < args.learning_starts:
        env_step(rng.integers(0, n_actions, args.num_envs))
    if not isinstance(net, nn.Module):
        net = net(replay.obs[: replay.size])
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_updates = max(1, (args.total_steps - args.learning_starts) // args.train_every)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, n_updates * args.gradient_steps, eta_min=args.lr_final
    )
    kept = Checkpoints(args.keep_best)
    history: dict[int, tuple[float, float]] = {}  # step -> (mean, min) of its evaluation

    td = gap = float("nan")
    evals = 0
    bar = tqdm(total=args.total_steps, initial=step, desc=f"{tag} {env_id}", disable=not progress)
    while step < args.total_steps:
        before = step
        eps = args.eps_start + (args.eps_end - args.eps_start) * min(1.0, step / args.eps_steps)
        with torch.no_grad():
            greedy = q_fn(net, obs, rng).argmax(dim=1).numpy()
        explore = rng.random(args.num_envs) < eps
        env_step(np.where(explore, rng.integers(0, n_actions, args.num_envs), greedy))
        bar.update(step - before)

        phases = step // args.train_every - before // args.train_every
        for _ in range(phases * args.gradient_steps):
            idx = rng.integers(0, replay.size, args.batch_size)
            loss, g = td_loss(q_fn, net, target, replay, idx, args, rng)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
            opt.step()
            sched.step()
            td, gap = float(loss.detach()), float(g) / args.reward_scale
        if step // args.target_every > before // args.target_every:
            with torch.no_grad():
                for t_p, p in zip(target.parameters(), net.parameters(), strict=True):
                    t_p.lerp_(p, args.tau)
        if step // 250 > before // 250:
            writer.add_scalar("losses/td_loss", td, step)
            writer.add_scalar("charts/action_gap", gap, step)
            writer.add_scalar("charts/epsilon", eps, step)
            writer.add_scalar("charts/learning_rate", sched.get_last_lr()[0], step)
            writer.add_scalar("charts/SPS", step / (time.perf_counter() - start), step)

        if step // args.eval_every > before // args.eval_every or step >= args.total_steps:
            evals += 1
            ev = evaluate(net, 2 * evals)
            if args.stop_at is not None and ev.mean >= args.stop_at:
                more = evaluate(net, 2 * evals + 1)  # confirm on as many other episodes
                ev = Episodes(
                    np.concatenate([ev.returns, more.returns]),
                    np.concatenate([ev.lengths, more.lengths]),
                )
            writer.add_scalar("eval/return", ev.mean, step)
            history[step] = (ev.mean, float(ev.returns.min()))
            kept.offer(score(ev), step, net)
            bar.set_postfix(eval=f"{ev.mean:.1f}", gap=f"{gap:.3f}")
            if args.stop_at is not None and ev.mean >= args.stop_at:
                break
    bar.close()
    envs.close()
    writer.flush()
    best_score, best_step, best_state = kept.best
    net.load_state_dict(best_state)
    info = {
        "step": best_step,
        "score": best_score,
        "eval_mean": history[best_step][0],
        "eval_min": history[best_step][1],
        "steps_run": step,
        "evaluations": evals,
        "seconds": time.perf_counter() - start,
        "env_steps_per_s": step / (time.perf_counter() - start),
        "final_action_gap": gap,
    }
    return net, kept, info
