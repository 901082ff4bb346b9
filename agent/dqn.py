"""The one off-policy DQN loop: the float MLP teacher and the paper's recipe (dsqn)
both train here.

One linear loop (CleanRL's ``dqn.py`` is the model): ``num_envs`` Gymnasium
environments stepped together (``SAME_STEP`` autoreset, so a finished episode's
last observation is the one stored), epsilon-greedy acting through the network
(random actions optionally held for several steps, :class:`EpsGreedy`),
a replay of observations (a Poisson network draws fresh input spikes for every
forward), a target network updated by Polyak averaging every ``target_every`` steps
(``tau`` = 1 is a hard copy), Double-DQN targets, bootstrapping on ``terminated``
only, Huber loss, gradient clipping, a cosine-decayed learning rate.

With ``advantage_alpha`` > 0 the target is advantage learning (Bellemare et al.
2016): ``y = r + gamma Q'(s', a*) - alpha (max_b Q'(s, b) - Q'(s, a))``. Its fixed
point keeps the greedy action's value and lowers every other action's by a
``1 / (1 - alpha)``-times larger gap, so decisions survive input noise and 8-bit
rounding. ``target_draws`` > 1 averages the target network over several forwards
(fresh Poisson spikes each): a lower-variance target. On the CPU with two threads or
more, the next gradient step's batch is drawn, encoded and run through the target
network on a second thread while the current step runs (:class:`Prefetch`): half of a
dsqn step, done beside it (its own draws: a run at one thread is another, as
reproducible, run).

Curves go to TensorBoard under CleanRL's and SB3's names (``charts/episodic_return``,
``losses/td_loss``, ``charts/epsilon``, ``charts/learning_rate``, ``eval/return``,
``charts/action_gap``). Checkpoints: the ``keep_best`` best by greedy evaluation.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agent.options import DQNArgs
from agent.rollout import Episodes

# the network, observations float32 [B, obs], a generator for Poisson draws -> its
# input tensor on the host (a Poisson network's fresh input spikes; else the observations)
EncodeFn = Callable[[nn.Module, np.ndarray, np.random.Generator], torch.Tensor]
# the network, its input (on the network's device) -> Q-values [B, A]
QFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# the network, the env step -> greedy episodes (checkpoint selection)
EvalFn = Callable[[nn.Module, int], Episodes]


@dataclass
class Batch:
    """Transitions drawn from the replay."""

    obs: np.ndarray
    next_obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    steps: np.ndarray


class Replay:
    """Transitions as numpy arrays: observations, not spikes. A transition spans
    ``steps`` environment steps (n-step returns): ``reward`` is their discounted sum
    and ``next_obs`` the observation after the last of them."""

    def __init__(self, size: int, n_obs: int) -> None:
        self.obs = np.zeros((size, n_obs), np.float32)
        self.next_obs = np.zeros((size, n_obs), np.float32)
        self.action = np.zeros(size, np.int64)
        self.reward = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, np.float32)
        self.steps = np.ones(size, np.int64)
        self.size = self.ptr = 0

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """``n`` transitions drawn uniformly, copied out (the loop goes on adding)."""
        idx = rng.integers(0, self.size, n)
        return Batch(
            self.obs[idx], self.next_obs[idx], self.action[idx], self.reward[idx],
            self.terminated[idx], self.steps[idx],
        )  # fmt: skip

    def add(self, obs, next_obs, action, reward, terminated, steps=None) -> None:
        """Add a batch of transitions (arrays with a leading batch dimension)."""
        for j in range(len(action)):
            i = self.ptr
            self.obs[i], self.next_obs[i], self.action[i] = obs[j], next_obs[j], action[j]
            self.reward[i], self.terminated[i] = reward[j], float(terminated[j])
            self.steps[i] = 1 if steps is None else steps[j]
            self.ptr = (i + 1) % len(self.obs)
            self.size = min(self.size + 1, len(self.obs))


class EpsGreedy:
    """Epsilon-greedy actions for ``n_envs`` environments stepped together.

    With ``hold`` > 1 a random action, once chosen, is held for n steps, n drawn from a
    zeta(2) distribution capped at ``hold`` (temporally-extended epsilon-greedy, Dabney
    et al. 2021): runs of one action pump a pendulum up where independent random
    choices cancel out (Acrobot-v1, uniformly random: 2.5 % of episodes reach the goal;
    held up to 8 steps: 32 %). ``hold`` = 1 draws exactly as plain epsilon-greedy."""

    def __init__(self, n_envs: int, n_actions: int, hold: int, rng: np.random.Generator):
        self.n_envs, self.n_actions, self.hold, self.rng = n_envs, n_actions, hold, rng
        self.left = np.zeros(n_envs, np.int64)  # steps the held action still has to run
        self.held = np.zeros(n_envs, np.int64)

    def __call__(self, eps: float, greedy: np.ndarray) -> np.ndarray:
        n, rng = self.n_envs, self.rng
        if self.hold == 1:
            return np.where(rng.random(n) < eps, rng.integers(0, self.n_actions, n), greedy)
        new = (self.left == 0) & (rng.random(n) < eps)
        k = int(new.sum())
        self.held[new] = rng.integers(0, self.n_actions, k)
        self.left[new] = np.minimum(rng.zipf(2.0, k), self.hold)
        holding = self.left > 0
        self.left[holding] -= 1
        return np.where(holding, self.held, greedy)

    def random(self) -> np.ndarray:
        """Actions of the random warm-up (held runs as in exploration)."""
        if self.hold == 1:
            return self.rng.integers(0, self.n_actions, self.n_envs)
        return self(1.0, np.zeros(self.n_envs, np.int64))

    def end(self, done: np.ndarray) -> None:
        """A finished episode's held action does not carry into the next one."""
        self.left[done] = 0


class NStep:
    """Per environment, the last ``n`` steps, folded into n-step transitions: one when
    ``n`` steps have gathered, and at an episode's end every pending one (shorter,
    ending there: terminated, or truncated and bootstrapped from its final
    observation). ``n`` = 1 passes each step through."""

    def __init__(self, n: int, gamma: float, num_envs: int) -> None:
        self.n, self.gamma = n, gamma
        self.pending: list[list[tuple[np.ndarray, int, float]]] = [[] for _ in range(num_envs)]

    def __call__(self, obs, next_obs, action, reward, terminated, done) -> tuple:
        """One vector step in -> the transitions it completes (``Replay.add``'s
        arguments)."""
        out: list[tuple] = []
        for i, queue in enumerate(self.pending):
            queue.append((obs[i], int(action[i]), float(reward[i])))
            starts = range(len(queue)) if done[i] else range(len(queue) - self.n + 1)
            for j in starts:
                ret = sum(self.gamma**k * r for k, (_, _, r) in enumerate(queue[j:]))
                steps = len(queue) - j
                out.append((queue[j][0], next_obs[i], queue[j][1], ret, terminated[i], steps))
            if done[i]:
                queue.clear()
            elif len(queue) == self.n:
                queue.pop(0)
        return tuple(np.array(c) for c in zip(*out, strict=True)) if out else ()


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


def td_inputs(
    encode: EncodeFn, net: nn.Module, batch: Batch, args: DQNArgs, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """What one TD step needs, made on the host: the online network's input for ``s``
    and ``s'`` together, the target network's (``target_draws`` fresh draws; with
    advantage learning for ``s`` too), actions, rewards and terminations."""
    both = np.concatenate([batch.obs, batch.next_obs])
    x = encode(net, both, rng)
    t_obs = both if args.advantage_alpha > 0 else batch.next_obs
    xt = torch.stack([encode(net, t_obs, rng) for _ in range(args.target_draws)])
    return {
        "x": x,
        "xt": xt,
        "action": torch.from_numpy(batch.action),
        "reward": torch.from_numpy(batch.reward),
        # gamma^n of an n-step transition; 0 where it ended in a termination
        "discount": torch.from_numpy(
            (args.gamma**batch.steps * (1.0 - batch.terminated)).astype(np.float32)
        ),
    }


@torch.no_grad()
def target_q(q: QFn, target: nn.Module, xt: torch.Tensor) -> torch.Tensor:
    """The target network's Q-values averaged over its draws of input ``xt``."""
    return torch.stack([q(target, x) for x in xt]).mean(0)


class Prefetch:
    """The next gradient step's inputs and target Q-values, made on a second thread
    while this step's forward and backward run on the first (CPU only).

    The batch is drawn from the replay here; the worker encodes it (its
    own generator: a stream of its own, as deterministic) and runs the target network
    over its ``target_draws`` draws, which nothing else changes until the next target
    update: :meth:`discard` waits for the worker and drops its batch before one. The
    online network's part of the target (Double DQN's argmax on ``s'``) stays in the
    step itself, after the previous step's update."""

    def __init__(
        self, encode: EncodeFn, q: QFn, net: nn.Module, target: nn.Module, args: DQNArgs,
        rng: np.random.Generator,
    ) -> None:  # fmt: skip
        self.encode, self.q, self.net, self.target, self.args = encode, q, net, target, args
        self.rng = rng
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dqn-targets")
        self.pending: Future | None = None

    def _make(self, batch: Batch) -> dict[str, torch.Tensor]:
        b = td_inputs(self.encode, self.net, batch, self.args, self.rng)
        b["qt"] = target_q(self.q, self.target, b.pop("xt"))
        return b

    def next(self, replay: Replay, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """This step's inputs (made while the previous step ran, or now); starts the
        next step's."""
        n = self.args.batch_size
        b = self.pending.result() if self.pending else self._make(replay.sample(n, rng))
        self.pending = self.pool.submit(self._make, replay.sample(n, rng))
        return b

    def discard(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def close(self) -> None:
        self.discard()
        self.pool.shutdown()


def td_loss(
    q: QFn, net: nn.Module, target: nn.Module, b: dict[str, torch.Tensor], args: DQNArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber loss against the (advantage-learning) Double-DQN target; also the mean
    action gap (best minus second best) of the online Q-values on ``s``. The target
    network's Q-values come in ``b["qt"]`` (:class:`Prefetch`) or are made here from
    its input ``b["xt"]``."""
    n = len(b["action"])
    q_s = q(net, b["x"][:n])
    act = b["action"][:, None]
    q_sa = q_s.gather(1, act).squeeze(1)
    with torch.no_grad():  # s' without the graph: the backward runs over s alone
        a_next = q(net, b["x"][n:]).argmax(dim=1, keepdim=True)
        qt = b["qt"] if "qt" in b else target_q(q, target, b["xt"])
        q_next = qt[-n:].gather(1, a_next).squeeze(1)
        y = args.reward_scale * b["reward"] + b["discount"] * q_next
        if args.advantage_alpha > 0:
            qt_s = qt[:n]
            y = y - args.advantage_alpha * (qt_s.max(dim=1).values - qt_s.gather(1, act).squeeze(1))
        top2 = q_s.detach().topk(2, dim=1).values
        gap = (top2[:, 0] - top2[:, 1]).mean()
    return nn.functional.smooth_l1_loss(q_sa, y), gap


class GradStep:
    """One gradient step (TD loss, backward, clipping, Adam at the cosine-decayed
    learning rate) of ``net`` on its device.

    On CUDA the step is thousands of tiny kernels (a tick loop per layer), so after
    ``WARMUP`` eager steps on a side stream it is captured in one CUDA graph and
    replayed: the host copies each step's inputs into the graph's static buffers and
    sets the learning rate in a device tensor (Adam with ``capturable=True``). The
    target network's weights are read in place, so updating them needs no re-capture.
    Elsewhere the same step runs eagerly."""

    WARMUP = 3

    def __init__(
        self, q: QFn, net: nn.Module, target: nn.Module, args: DQNArgs, total: int
    ) -> None:
        self.q, self.net, self.target, self.args, self.total = q, net, target, args, total
        self.device = next(net.parameters()).device
        self.capture = self.device.type == "cuda"
        lr = torch.tensor(args.lr, device=self.device) if self.capture else args.lr
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, capturable=self.capture)
        self.done = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: dict[str, torch.Tensor] = {}
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def lr(self) -> float:
        """Cosine decay from ``lr`` to ``lr_final`` over the run's gradient steps."""
        a, frac = self.args, min(1.0, self.done / max(1, self.total))
        return a.lr_final + (a.lr - a.lr_final) * 0.5 * (1.0 + np.cos(np.pi * frac))

    def _eager(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, gap = td_loss(self.q, self.net, self.target, b, self.args)
        self.opt.zero_grad(set_to_none=not self.capture or self.graph is None)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.args.grad_clip)
        self.opt.step()
        return loss.detach(), gap

    def __call__(self, b: dict[str, torch.Tensor]) -> tuple[float, float]:
        group = self.opt.param_groups[0]
        if self.capture:
            group["lr"].fill_(self.lr())
        else:
            group["lr"] = self.lr()
        self.done += 1
        if not self.capture:
            loss, gap = self._eager(b)
        elif self.done <= self.WARMUP:  # eager on a side stream, as CUDA graphs want
            b = {k: v.to(self.device) for k, v in b.items()}
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss, gap = self._eager(b)
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            if self.graph is None:
                self.static = {k: v.to(self.device) for k, v in b.items()}
                self.opt.zero_grad(set_to_none=True)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.out = self._eager(self.static)
            else:
                for k, v in b.items():
                    self.static[k].copy_(v, non_blocking=True)
            self.graph.replay()
            assert self.out is not None
            loss, gap = self.out
        return float(loss), float(gap)


@torch.no_grad()
def polyak(average: nn.Module, net: nn.Module, weight: float) -> None:
    """``average <- weight * net + (1 - weight) * average``, parameter by parameter."""
    for a_p, p in zip(average.parameters(), net.parameters(), strict=True):
        a_p.lerp_(p, weight)


def train_dqn(
    env_id: str,
    args: DQNArgs,
    net: nn.Module | Callable[[np.ndarray], nn.Module],
    encode: EncodeFn,
    q: QFn,
    evaluate: EvalFn,
    *,
    seed: int,
    writer: SummaryWriter,
    tag: str = "dqn",
    progress: bool = True,
    device: str = "cpu",
    confirm: EvalFn | None = None,
) -> tuple[nn.Module, Checkpoints, dict]:
    """Train ``net`` (or build it from the warm-up states with ``net(states)``).

    ``args.stop_at``: an evaluation that reaches it is confirmed on as many more
    episodes by ``confirm`` (default ``evaluate``; dsqn's plays the 8-bit network), and
    training stops when both together still average ``stop_at``.

    With ``device`` other than the CPU, the gradient steps run there (a copy of the
    network and the target network live on it, :class:`GradStep`); acting, evaluation
    and checkpoints use the CPU network, refreshed after every training phase.

    Returns the (CPU) network loaded with its best checkpoint, the kept checkpoints and
    a summary."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
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
    policy = EpsGreedy(args.num_envs, n_actions, args.eps_hold, rng)
    nstep = NStep(args.n_step, args.gamma, args.num_envs)
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
        if done_steps := nstep(obs, stored, actions, r, term, done):
            replay.add(*done_steps)
        ep_ret[:] += r
        ep_len[:] += 1
        for i in np.flatnonzero(done):
            writer.add_scalar("charts/episodic_return", ep_ret[i], step + i + 1)
            writer.add_scalar("charts/episodic_length", ep_len[i], step + i + 1)
        ep_ret[done], ep_len[done] = 0.0, 0
        policy.end(done)
        obs = nxt.astype(np.float32)
        step += args.num_envs

    # warm-up with random actions: fills the replay and (a new network) fixes its input scale
    while step < args.learning_starts:
        env_step(policy.random())
    if not isinstance(net, nn.Module):
        net = net(replay.obs[: replay.size])
    learner = net if dev.type == "cpu" else copy.deepcopy(net).to(dev)
    target = copy.deepcopy(learner)
    n_updates = max(1, (args.total_steps - args.learning_starts) // args.train_every)
    grad_step = GradStep(q, learner, target, args, n_updates * args.gradient_steps)
    # on the CPU the next step's targets are made on a second thread during this one,
    # when the run may use more than one (torch's threads, `--threads`)
    prefetch = (
        Prefetch(encode, q, net, target, args, np.random.default_rng([seed, 1]))
        if dev.type == "cpu" and torch.get_num_threads() > 1 else None
    )  # fmt: skip
    kept = Checkpoints(args.keep_best)
    # what is evaluated and kept: the online network, or an average of its weights
    judged = copy.deepcopy(net) if args.eval_average > 0 else net
    history: dict[int, tuple[float, float]] = {}  # step -> (mean, min) of its evaluation

    td = gap = float("nan")
    evals = 0
    bar = tqdm(total=args.total_steps, initial=step, desc=f"{tag} {env_id}", disable=not progress)
    while step < args.total_steps:
        before = step
        eps = args.eps_start + (args.eps_end - args.eps_start) * min(1.0, step / args.eps_steps)
        with torch.no_grad():
            greedy = q(net, encode(net, obs, rng)).argmax(dim=1).numpy()
        env_step(policy(eps, greedy))
        bar.update(step - before)

        phases = step // args.train_every - before // args.train_every
        for _ in range(phases * args.gradient_steps):
            if prefetch is not None:
                b = prefetch.next(replay, rng)
            else:
                b = td_inputs(encode, net, replay.sample(args.batch_size, rng), args, rng)
            td, g = grad_step(b)
            gap = g / args.reward_scale
        if phases and learner is not net:
            net.load_state_dict(learner.state_dict())
        if phases and judged is not net:
            polyak(judged, net, 1.0 - args.eval_average**phases)
        if step // args.target_every > before // args.target_every:
            if prefetch is not None:
                prefetch.discard()  # its targets are the old network's
            polyak(target, learner, args.tau)
        if step // 250 > before // 250:
            writer.add_scalar("losses/td_loss", td, step)
            writer.add_scalar("charts/action_gap", gap, step)
            writer.add_scalar("charts/epsilon", eps, step)
            writer.add_scalar("charts/learning_rate", grad_step.lr(), step)
            writer.add_scalar("charts/SPS", step / (time.perf_counter() - start), step)

        if step // args.eval_every > before // args.eval_every or step >= args.total_steps:
            evals += 1
            ev = evaluate(judged, 2 * evals)
            if args.stop_at is not None and ev.mean >= args.stop_at:
                more = (confirm or evaluate)(judged, 2 * evals + 1)  # as many other episodes
                ev = Episodes(
                    np.concatenate([ev.returns, more.returns]),
                    np.concatenate([ev.lengths, more.lengths]),
                )
            writer.add_scalar("eval/return", ev.mean, step)
            history[step] = (ev.mean, float(ev.returns.min()))
            kept.offer(score(ev), step, judged)
            bar.set_postfix(eval=f"{ev.mean:.1f}", gap=f"{gap:.3f}")
            if args.stop_at is not None and ev.mean >= args.stop_at:
                break
    bar.close()
    envs.close()
    if prefetch is not None:
        prefetch.close()
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
