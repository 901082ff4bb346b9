"""The paper's recipe: a deep spiking Q-network trained directly by Q-learning.

DQN on the spiking network itself (no float MLP anywhere): epsilon-greedy acting
through the network, a replay buffer, a target network, Double-DQN targets,
bootstrapping on ``terminated`` only (a ``truncated`` episode was cut by the time
limit: its last state still has a future), a Huber TD loss back-propagated
through the exact tick semantics the emulator runs (:func:`agent.snn.simulate`)
with a surrogate gradient, gradient clipping, a cosine-decayed learning rate.

Poisson-coded networks draw fresh input spikes for every forward: when acting,
when computing targets and for each replayed sample.

The same loop is the TD-driven hardware-aware fine-tuning (``mode='quant'``):
the forward runs the fake-quantized 8-bit network, the float masters are pulled
toward their 8-bit grid (ramped up), and checkpoints are chosen by greedy return
of the exported artifact on the emulator.
"""

from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.network import Mode, SpikingQNet, env_spec
from agent.options import DSQNArgs, SNNConfig
from agent.rollout import Episodes, run_episodes
from agent.snn import grid_distance
from agent.teacher import TRAIN_SEED_BASE


class Replay:
    """Transitions as numpy arrays; observations, not spikes, so each replay draws
    fresh input spikes."""

    def __init__(self, size: int, n_obs: int) -> None:
        self.obs = np.zeros((size, n_obs), np.float32)
        self.next_obs = np.zeros((size, n_obs), np.float32)
        self.action = np.zeros(size, np.int64)
        self.reward = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, np.float32)
        self.size = self.ptr = 0

    def add(self, obs, next_obs, action, reward, terminated) -> None:
        i = self.ptr
        self.obs[i], self.next_obs[i], self.action[i] = obs, next_obs, action
        self.reward[i], self.terminated[i] = reward, float(terminated)
        self.ptr = (i + 1) % len(self.obs)
        self.size = min(self.size + 1, len(self.obs))


def td_loss(
    q: SpikingQNet,
    target: SpikingQNet,
    replay: Replay,
    idx: np.ndarray,
    gamma: float,
    mode: Mode,
    rng: np.random.Generator,
    reward_scale: float = 1.0,
) -> torch.Tensor:
    """Huber loss of Q(s, a) against c r + gamma (1 - terminated) Q_target(s', argmax Q(s'))
    (``c``: the reward scale)."""
    n = len(idx)
    both = q(q.encode(np.concatenate([replay.obs[idx], replay.next_obs[idx]]), rng), mode)
    q_sa = both.q_values[:n].gather(1, torch.from_numpy(replay.action[idx])[:, None]).squeeze(1)
    with torch.no_grad():
        a_next = both.q_values[n:].argmax(dim=1, keepdim=True)
        q_next = target(target.encode(replay.next_obs[idx], rng), mode).q_values
        y = reward_scale * torch.from_numpy(replay.reward[idx]) + gamma * (
            1.0 - torch.from_numpy(replay.terminated[idx])
        ) * q_next.gather(1, a_next).squeeze(1)
    return nn.functional.smooth_l1_loss(q_sa, y)


def scale_output(net: SpikingQNet, factor: float) -> None:
    """Multiply the Q-values by ``factor``: the output layer is a linear integrator, so
    scaling its weights and bias scales its final membrane exactly as much."""
    if factor != 1.0:
        with torch.no_grad():
            for p in net.output_parameters():
                p.mul_(factor)


def new_network(env_id: str, snn: SNNConfig, seed: int, states: np.ndarray | None) -> SpikingQNet:
    return SpikingQNet(snn, env_spec(env_id, snn, states), seed=seed)


def train_dsqn(
    env_id: str,
    args: DSQNArgs,
    out_dir: Path,
    *,
    seed: int,
    snn: SNNConfig | None = None,
    net: SpikingQNet | None = None,
    mode: Mode = "float",
    tag: str = "dsqn",
    progress: bool = True,
) -> tuple[SpikingQNet, dict]:
    """Train a new network (``snn``) or go on training ``net``; return the best
    checkpoint by greedy evaluation and a summary. Writes ``<tag>.csv``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    obs, _ = env.reset(seed=TRAIN_SEED_BASE + seed)
    replay = Replay(args.buffer_size, int(np.prod(env.observation_space.shape)))  # type: ignore[arg-type]
    start = time.perf_counter()

    # warm-up with random actions: fills the replay and, for a new network, fixes the
    # observation scale (unless the options set one)
    for _ in range(args.learning_starts):
        a = int(rng.integers(n_actions))
        nxt, r, term, trunc, _ = env.step(a)
        replay.add(obs, nxt, a, r, term)
        obs = nxt if not (term or trunc) else env.reset()[0]
    if net is None:
        assert snn is not None, "give a network or its options"
        net = new_network(env_id, snn, seed, replay.obs[: replay.size])
    scale_output(net, args.reward_scale)  # learn in scaled units (undone at the end)
    target = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_updates = max(1, (args.total_steps - args.learning_starts) // args.train_every)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, n_updates * args.gradient_steps, eta_min=args.lr_final
    )
    evaluator = _Evaluator(env_id, mode, seed, args.eval_episodes)

    log_f = open(out_dir / f"{tag}.csv", "w", newline="")  # noqa: SIM115
    log = csv.writer(log_f)
    log.writerow(["step", "seconds", "episodic_return", "eval_mean", "eval_min", "td_loss", "eps"])
    best = {"eval_mean": -np.inf, "eval_min": -np.inf, "step": 0, "score": -np.inf}
    best_state = copy.deepcopy(net.state_dict())
    if mode == "quant":  # the network as it came in is a candidate too: QAT keeps it or betters it
        ev = evaluator(net, args.learning_starts)
        score = ev.mean + 0.1 * float(ev.returns.min()) / len(ev.returns)
        best = {"eval_mean": ev.mean, "eval_min": float(ev.returns.min()),
                "step": args.learning_starts, "score": score}  # fmt: skip
    ep_ret, td = 0.0, float("nan")
    steps = range(args.learning_starts + 1, args.total_steps + 1)
    bar = tqdm(steps, desc=f"{tag} {env_id} ({mode})", disable=not progress)
    step = args.learning_starts
    for step in bar:
        frac = min(1.0, step / max(1, args.eps_steps))
        eps = args.eps_start + (args.eps_end - args.eps_start) * frac
        if rng.random() < eps:
            a = int(rng.integers(n_actions))
        else:
            a = int(net.predict(obs[None], mode, rng)[0])
        nxt, r, term, trunc, _ = env.step(a)
        replay.add(obs, nxt, a, r, term)
        ep_ret += float(r)
        obs = nxt
        if term or trunc:
            log.writerow([step, f"{time.perf_counter() - start:.1f}", ep_ret, "", "", td, eps])
            obs, _ = env.reset()
            ep_ret = 0.0

        if step % args.train_every == 0:
            grid = args.grid_weight * (step / args.total_steps) ** 2 if mode == "quant" else 0.0
            for _ in range(args.gradient_steps):
                idx = rng.integers(0, replay.size, args.batch_size)
                loss = td_loss(net, target, replay, idx, args.gamma, mode, rng, args.reward_scale)
                if grid > 0:
                    weights = [p.weight for p in net.layer_params("float")]
                    loss = loss + grid * grid_distance(weights, net.scale_percentile)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
                opt.step()
                sched.step()
                td = float(loss.detach())
        if step % args.target_every == 0:
            with torch.no_grad():
                for t_p, p in zip(target.parameters(), net.parameters(), strict=True):
                    t_p.lerp_(p, args.tau)

        if step % args.eval_every == 0 or step == args.total_steps:
            ev = evaluator(net, step)
            if args.stop_at is not None and ev.mean >= args.stop_at:
                ev = evaluator(net, step, more=ev)  # confirm on as many other episodes
            score = ev.mean + 0.1 * float(ev.returns.min()) / len(ev.returns)
            log.writerow(
                [step, f"{time.perf_counter() - start:.1f}", "", ev.mean, ev.returns.min(), td, eps]
            )
            log_f.flush()
            if score >= best["score"]:
                best = {
                    "eval_mean": ev.mean,
                    "eval_min": float(ev.returns.min()),
                    "step": step,
                    "score": score,
                }
                best_state = copy.deepcopy(net.state_dict())
            bar.set_postfix(eval=f"{ev.mean:.1f}", best=f"{best['eval_mean']:.1f}")
            if args.stop_at is not None and ev.mean >= args.stop_at:
                break
    log_f.close()
    env.close()
    evaluator.close()
    net.load_state_dict(best_state)
    scale_output(net, 1.0 / args.reward_scale)
    best.pop("score")
    return net, {**best, "steps_run": step, "seconds": time.perf_counter() - start}


class _Evaluator:
    """Greedy episodes on seeds of the training range: the torch network (float mode)
    or its exported artifact on the emulator (quant mode)."""

    def __init__(self, env_id: str, mode: Mode, seed: int, episodes: int) -> None:
        self.env_id, self.mode, self.episodes = env_id, mode, episodes
        self.seed_base = TRAIN_SEED_BASE + 200_000 + 10_000 * (seed % 50)
        self.rng = np.random.default_rng(seed + 1)
        self.emulator = None
        if mode == "quant":
            from hw.emulator import EmulatorBackend

            self.emulator = EmulatorBackend()

    def __call__(self, net: SpikingQNet, step: int, more: Episodes | None = None) -> Episodes:
        """Greedy episodes; ``more``: a first evaluation to pool with as many new ones."""
        first = self.seed_base + (step // 100) % 5000 + (self.episodes if more else 0)
        seeds = [first + i for i in range(self.episodes)]
        ev = self._run(net, seeds)
        if more is None:
            return ev
        return Episodes(
            np.concatenate([more.returns, ev.returns]), np.concatenate([more.lengths, ev.lengths])
        )

    def _run(self, net: SpikingQNet, seeds: list[int]) -> Episodes:
        if self.emulator is None:
            return run_episodes(self.env_id, lambda o: net.predict(o, "float", self.rng), seeds)
        from agent.export import to_artifact

        self.emulator.load(to_artifact(net, "candidate"))
        emu, rng = self.emulator, self.rng

        def act(obs: np.ndarray) -> np.ndarray:
            # seeded Poisson draws keep training reproducible (ignored if deterministic)
            return emu.infer("candidate", obs, rng.integers(0, 2**53, len(obs))).actions

        return run_episodes(self.env_id, act, seeds)

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.close()
