"""Distil a float teacher into the spiking Q-network through the exact tick semantics,
DAgger-style, in float (``train``) or fake-quantized 8-bit (``finetune``) mode.

Each round trains on a growing set of states labelled with the teacher's Q-values:
first the teacher's own episodes, then the states the student visits when it drives
(so it learns to recover from its own mistakes). The loss, with ``g`` the typical
action gap of the teacher (std of its advantages ``A = q - mean_a q``), ``V = mean_a q``
and ``sv`` the std of the teacher's ``V``::

    adv_weight    * mean(((A_student - A_teacher) / g)^2)
  + value_weight  * mean(((V_student - V_teacher) / sv)^2)
  + ce_weight     * CE(sharpness * q_student / g, argmax q_teacher)
  + margin_weight * mean(relu(margin - (q_student[a*] - max_other q_student) / g))

In ``quant`` mode the loss is taken on the fake-quantized network (straight-through
rounding) plus ``float_weight`` times the same loss on the float masters, plus a
pull of the float masters toward their 8-bit grid points (``grid_weight``, the
"bin regularisation" idea, ramped up over the first half of the rounds and then held,
so the later rounds run with masters within a few hundredths of an LSB of the grid).
Without it the float reference and the 8-bit network disagree on 3-4% of CartPole
states: a weight error of a fraction of an LSB moves a hidden neuron's charge across a
threshold, and CartPole's chattering policy keeps the state next to its decision boundary.
The kept checkpoint is the one with the best greedy return (float mode: torch float
network, any round; quant mode: the exported artifact on the emulator, from the rounds
with the full grid pull).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from agent.network import Mode, SpikingQNet, env_spec
from agent.options import DistillArgs, SNNConfig
from agent.rollout import Episodes, run_episodes
from agent.snn import grid_distance
from agent.teacher import TRAIN_SEED_BASE, Teacher
from hw.emulator import EmulatorBackend


@dataclass
class StateSet:
    """Observations and the teacher's Q-values for them."""

    obs: list[np.ndarray] = field(default_factory=list)
    q: list[np.ndarray] = field(default_factory=list)

    def add(self, obs: np.ndarray, teacher: Teacher) -> None:
        obs = np.asarray(obs, np.float32)
        self.obs.append(obs)
        self.q.append(teacher.q(obs).astype(np.float32))

    def arrays(self, max_states: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.obs)[-max_states:], np.concatenate(self.q)[-max_states:]

    def scales(self, max_states: int) -> tuple[float, float]:
        """The loss's units: the teacher's typical action gap (std of its advantages) and
        the std of its state value, over the labelled states."""
        _, q = self.arrays(max_states)
        gap = float(max((q - q.mean(axis=1, keepdims=True)).std(), 1e-3))
        return gap, float(max(q.mean(axis=1).std(), 1e-3))


def make_student(
    env_id: str, teacher: Teacher, states: np.ndarray, seed: int, snn: SNNConfig
) -> SpikingQNet:
    """A new network whose observation scale comes from the teacher's states (unless
    ``snn`` sets one) and whose output starts at the teacher's mean Q."""
    net = SpikingQNet(snn, env_spec(env_id, snn, states), seed=seed)
    with torch.no_grad():
        # the output layer integrates its bias every tick: start at the teacher's mean Q
        bias = net.value_bias if snn.dueling else net.biases[-1]
        bias.fill_(float(teacher.q(states).mean()) / snn.ticks)
    return net


def _loss(
    q_s: torch.Tensor, q_t: torch.Tensor, gap: float, vstd: float, args: DistillArgs
) -> torch.Tensor:
    target = q_t.argmax(dim=1)
    # advantages and the state value apart: the value varies far more than the action
    # gaps, and fitting it tightly would spend the output layer's 8-bit range on it
    v_s, v_t = q_s.mean(dim=1, keepdim=True), q_t.mean(dim=1, keepdim=True)
    adv = ((q_s - v_s - (q_t - v_t)) / gap).pow(2).mean()
    value = ((v_s - v_t) / vstd).pow(2).mean()
    ce = nn.functional.cross_entropy(q_s * (args.sharpness / gap), target)
    # decisiveness: the teacher's action leads every other by a margin, so that small
    # perturbations (8-bit weights, spike timing) do not flip near-tie decisions
    hinge = _hinge(q_s, target, gap, args.margin)
    return (
        args.adv_weight * adv
        + args.value_weight * value
        + args.ce_weight * ce
        + args.margin_weight * hinge
    )


def _hinge(q: torch.Tensor, target: torch.Tensor, gap: float, margin: float) -> torch.Tensor:
    """mean(relu(margin - (q[target] - max_other q) / gap))"""
    chosen = q.gather(1, target[:, None]).squeeze(1)
    others = q.masked_fill(nn.functional.one_hot(target, q.shape[1]).bool(), -torch.inf)
    return torch.relu(margin - (chosen - others.max(dim=1).values) / gap).mean()


def distill(
    student: SpikingQNet,
    teacher: Teacher,
    env_id: str,
    args: DistillArgs,
    out_dir: Path,
    *,
    seed: int,
    mode: Mode = "float",
    initial_states: np.ndarray | None = None,
    tag: str = "distill",
    progress: bool = True,
) -> tuple[SpikingQNet, dict]:
    """Run DAgger rounds; return the best student (by greedy return) and a summary."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 7)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seed_base = TRAIN_SEED_BASE + 100_000 + 10_000 * (seed % 50) + (0 if mode == "float" else 5000)

    data = StateSet()
    if initial_states is not None:
        data.add(initial_states, teacher)
    seeds = [seed_base + i for i in range(args.teacher_episodes)]
    # teacher episodes, half of them with some random actions to widen the state cover
    half = args.teacher_episodes // 2
    for eps, ss in ((0.0, seeds[:half]), (0.1, seeds[half:])):
        ep = run_episodes(env_id, teacher.act, ss, keep_states=True, epsilon=eps, rng=rng)
        data.add(ep.all_states(), teacher)
    gap, vstd = data.scales(args.max_states)

    opt = torch.optim.Adam(student.parameters(), lr=args.lr)
    total_steps = args.rounds * args.steps_per_round
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps, eta_min=args.lr_final)
    emulator = EmulatorBackend() if mode == "quant" else None

    # TensorBoard: training curves beside the teacher's; fine-tuning in its own folder
    writer = SummaryWriter(str(out_dir if mode == "float" else out_dir / tag))
    best: dict = {"eval_mean": -np.inf, "score": -np.inf}
    best_state = copy.deepcopy(student.state_dict())
    bar = tqdm(range(args.rounds), desc=f"{tag} {env_id} ({mode})", disable=not progress)
    deterministic = student.config.encoder == "deterministic"
    for rnd in bar:
        obs_all, q_t = data.arrays(args.max_states)
        # deterministic spikes are computed once per round; Poisson ones fresh per batch
        rasters = student.encode(obs_all).numpy().astype(np.uint8) if deterministic else None
        # the grid pull ramps up over the first half of the rounds, then holds: a checkpoint
        # is chosen from those rounds only (quant mode), where the masters sit on the grid
        ramp = max(1, args.rounds // 2)
        grid = args.grid_weight * min(1.0, (rnd + 1) / ramp) ** 2
        eligible = mode == "float" or rnd + 1 >= ramp
        losses = []
        student.train()
        for _ in range(args.steps_per_round):
            idx = rng.integers(0, len(q_t), args.batch_size)
            if rasters is not None:
                x = torch.from_numpy(rasters[idx].astype(np.float32))
            else:
                x = student.encode(obs_all[idx], rng)
            qt = torch.from_numpy(q_t[idx])
            out = student(x, mode)
            loss = _loss(out.q_values, qt, gap, vstd, args)
            if mode != "float":
                if args.float_weight > 0:
                    out_f = student(x, "float")
                    loss = loss + args.float_weight * _loss(out_f.q_values, qt, gap, vstd, args)
                if grid > 0:
                    weights = [p.weight for p in student.layer_params("float")]
                    loss = loss + grid * grid_distance(weights, student.scale_percentile)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))

        # the student drives; its states get teacher labels
        student.eval()
        policy = _policy(student, mode, emulator, rng)
        ss = [seed_base + 1000 + rnd * 100 + i for i in range(args.rollout_episodes)]
        roll = run_episodes(
            env_id, policy, ss, keep_states=True, epsilon=args.rollout_epsilon, rng=rng
        )
        data.add(roll.all_states(), teacher)

        ev_seeds = [seed_base + 3000 + rnd * 100 + i for i in range(args.eval_episodes)]
        ev: Episodes = run_episodes(env_id, policy, ev_seeds)
        score = ev.mean + 0.1 * float(ev.returns.min()) / max(len(ev.returns), 1)
        writer.add_scalar("losses/distill_loss", float(np.mean(losses)), rnd)
        writer.add_scalar("charts/labelled_states", sum(len(q) for q in data.q), rnd)
        writer.add_scalar("charts/rollout_return", roll.mean, rnd)
        writer.add_scalar(f"eval/return_{'float' if mode == 'float' else '8bit'}", ev.mean, rnd)
        if eligible and score >= best["score"]:
            best = {
                "round": rnd,
                "score": score,
                "eval_mean": ev.mean,
                "eval_min": float(ev.returns.min()),
            }
            best_state = copy.deepcopy(student.state_dict())
        bar.set_postfix(
            loss=f"{np.mean(losses):.3f}", eval=f"{ev.mean:.1f}", best=f"{best['eval_mean']:.1f}"
        )
    writer.close()
    if emulator is not None:
        emulator.close()
    student.load_state_dict(best_state)
    best["seconds"] = time.perf_counter() - start
    best["action_gap_std"] = gap
    return student, best


def _policy(
    student: SpikingQNet, mode: Mode, emulator: EmulatorBackend | None, rng: np.random.Generator
):
    """The student's greedy policy: the torch float network, or (quant mode) its
    exported artifact on the emulator; Poisson draws seeded from ``rng``."""
    if mode == "float" or emulator is None:
        return lambda obs: student.predict(obs, "float", rng)
    from agent.export import to_artifact

    emulator.load(to_artifact(student, "candidate"))
    if student.config.encoder != "poisson":  # nothing to seed: leave rng's stream alone
        return lambda obs: emulator.infer("candidate", obs).actions
    return lambda obs: emulator.infer("candidate", obs, rng.integers(0, 2**53, len(obs))).actions
