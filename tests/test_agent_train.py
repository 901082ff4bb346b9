"""Training pipeline smoke test (a few hundred steps), evaluation, CLI import hygiene,
and the shipped models."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.evaluate import evaluate  # noqa: E402
from agent.options import (  # noqa: E402
    DistillArgs,
    DQNArgs,
    FinetuneConfig,
    QATArgs,
    SNNConfig,
    TeacherArgs,
    TrainConfig,
)
from agent.snn import run_artifact  # noqa: E402
from hw.artifact import load_artifact  # noqa: E402
from hw.emulator import EmulatorBackend  # noqa: E402
from hw.synthetic import random_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


TINY_SNN = SNNConfig(hidden=(16,), input_ticks=4, bins=5)
TINY_TEACHER = TeacherArgs(
    total_steps=400, learning_starts=100, train_every=4, eval_every=200, eval_episodes=2, hidden=32
)
TINY_DISTILL = DistillArgs(
    rounds=1,
    steps_per_round=5,
    batch_size=32,
    teacher_episodes=2,
    rollout_episodes=2,
    eval_episodes=2,
)
TINY_DSQN = DQNArgs(
    total_steps=300, learning_starts=100, batch_size=16, eval_every=100, eval_episodes=2
)
TINY_QAT = QATArgs(
    pipelines=("qat", "qat-adaptive-threshold", "ptq-percentile"),
    percentiles=(100.0, 99.0),
    select_episodes=2,
)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars of a run folder: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _tiny_train(run: Path, recipe: str = "distill", seed: int = 3, **snn) -> dict:
    from agent.pipeline import train_run

    cfg = TrainConfig(
        out=run,
        env="CartPole-v1",
        recipe=recipe,
        seed=seed,
        threads=1,
        progress=False,
        snn=dataclasses.replace(TINY_SNN, **snn),
        dsqn=TINY_DSQN,
        teacher=TINY_TEACHER,
        distill=TINY_DISTILL,
    )
    return train_run(cfg, command="smoke")


def _tiny_finetune(run: Path, out: Path) -> dict:
    from agent.pipeline import finetune_run

    cfg = FinetuneConfig(
        run=run,
        out=out,
        eval_episodes=2,
        eval_repeats=2,
        threads=1,
        progress=False,
        qat=TINY_QAT,
        distill=TINY_DISTILL,
    )
    return finetune_run(cfg, command="smoke-finetune")


def test_distill_recipe_train_and_finetune_smoke(tmp_path):
    from agent.card import card_text

    run = tmp_path / "run"
    summary = _tiny_train(run)
    for f in ("teacher.pt", "student.s2l", "train.json"):
        assert (run / f).exists(), f
    tags = _scalars(run)
    assert {"charts/episodic_return", "losses/td_loss", "eval/return"} <= set(tags)
    assert {"losses/distill_loss", "eval/return_float"} <= set(tags)
    assert summary["teacher"]["steps_run"] == 400 and summary["recipe"] == "distill"
    assert json.loads((run / "train.json").read_text())["seed"] == 3

    out = tmp_path / "tiny.s2l"
    prov = _tiny_finetune(run, out)
    art = load_artifact(out)
    assert art.name == "tiny" and art.env_id == "CartPole-v1"
    assert art.layer_sizes == [16, 2] and art.ticks == 4 + 2
    assert art.provenance["recipe"] == "distill"
    assert art.provenance["seed"] == 3 and art.provenance["commands"] == ["smoke", "smoke-finetune"]
    ft = art.provenance["finetune"]
    assert set(ft["pipelines"]) == {"qat", "qat-adaptive-threshold", "ptq-percentile"}
    assert ft["chosen"] in ft["pipelines"]
    assert ft["pipelines"]["ptq-percentile"]["percentile"] in (100.0, 99.0)
    ev = art.provenance["evaluation"]
    assert ev["episodes"] == 2 and 0.0 <= ev["agreement_float_vs_8bit"] <= 1.0
    # the torch fake-quant model and the emulator run the same exported network
    assert ev["emulator"]["mean"] == ev["torch"]["mean"]
    assert prov["evaluation"] == ev
    text = card_text(art)
    assert "Decision agreement" in text and "smoke" in text and "**distill**" in text
    assert "fc1: IF (no leak)" in text
    assert len(art.provenance["float_master_grid_rms_lsb"]) == 2


def test_dsqn_recipe_poisson_lif_train_and_finetune_smoke(tmp_path):
    from agent.card import card_text

    run = tmp_path / "run"
    summary = _tiny_train(run, recipe="dsqn", encoder="poisson", alpha_decay=0.9)
    assert summary["recipe"] == "dsqn" and "teacher" not in summary
    assert not (run / "teacher.pt").exists()
    tags = _scalars(run)
    for tag in ("charts/episodic_return", "losses/td_loss", "charts/epsilon"):
        assert tag in tags, tag
    assert {"charts/learning_rate", "charts/action_gap", "eval/return"} <= set(tags)
    assert summary["dsqn"]["selection"]["chosen"] in summary["dsqn"]["selection"]["candidates"]
    out = tmp_path / "dsqn.s2l"
    _tiny_finetune(run, out)
    art = load_artifact(out)
    assert art.provenance["recipe"] == "dsqn" and art.encoder.kind == "poisson"
    assert art.layers[0].alpha_decay == pytest.approx(0.9) and art.layers[0].neuron == "LIF"
    ev = art.provenance["evaluation"]["emulator"]
    assert ev["repeats"] == 2 and len(ev["repeat_means"]) == 2
    # the torch fake-quant network runs the first draw only, a check of the emulator's
    torch_ev = art.provenance["evaluation"]["torch"]
    assert torch_ev["repeats"] == 1 and torch_ev["repeat_means"] == ev["repeat_means"][:1]
    assert torch_ev["equal_to_emulator"] is True
    # each QAT pipeline logs its own curves (self-distillation into the 8-bit network)
    assert "eval/return_8bit" in _scalars(run / "finetune-qat")
    summary = art.summary()
    assert summary["recipe"] == "dsqn"
    assert summary["layers"][0]["alpha_decay"] == pytest.approx(0.9)
    text = card_text(art)
    assert "**dsqn**" in text and "fc1: LIF (alpha_decay 0.9)" in text
    assert "std of repeat means" in text
    assert "| torch fake-quant 8-bit, first draw only |" in text and "equal to the emulator" in text


def test_a_card_says_when_the_torch_check_differs_from_the_emulator():
    from agent.card import _evaluation_lines

    row = {"mean": 9.0, "std": 1.0, "min": 8.0}
    ev = {
        "episodes": 2,
        "seeds": [0, 1],
        "emulator": {**row, "repeats": 5, "repeat_std": 0.5},
        "float": {**row, "repeats": 5, "repeat_std": 0.5},
    }
    for equal, said in ((True, "| equal to the emulator"), (False, "| NOT equal to the emulator")):
        ev["torch"] = {**row, "repeats": 1, "repeat_std": 0.0, "equal_to_emulator": equal}
        text = "\n".join(_evaluation_lines(ev))
        assert "| torch fake-quant 8-bit, first draw only | 9.00 " in text
        assert said in text


def test_training_is_reproducible_for_a_seed(tmp_path):
    for recipe in ("dsqn", "distill"):
        _tiny_train(tmp_path / f"a-{recipe}", recipe=recipe, seed=4, encoder="poisson")
        _tiny_train(tmp_path / f"b-{recipe}", recipe=recipe, seed=4, encoder="poisson")
        a = load_artifact(tmp_path / f"a-{recipe}" / "student.s2l")
        b = load_artifact(tmp_path / f"b-{recipe}" / "student.s2l")
        for la, lb in zip(a.layers, b.layers, strict=True):
            np.testing.assert_array_equal(la.float_weight, lb.float_weight)
        # same episodes, same losses
        a_curves, b_curves = _scalars(tmp_path / f"a-{recipe}"), _scalars(tmp_path / f"b-{recipe}")
        for tag in ("charts/episodic_return", "losses/td_loss"):
            assert a_curves[tag] and a_curves[tag] == b_curves[tag], tag


class SignBandit(gym.Env):
    """One-step task: observation x in [-1, 1], reward 1 for action (x > 0), else 0."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, size=1).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        return self.x.copy(), float(int(action) == int(self.x[0] > 0)), True, False, {}


def test_dsqn_learns_a_task_through_the_spikes(tmp_path):
    """TD learning through Poisson-coded LIF neurons, no teacher: a few hundred steps
    take the greedy policy from chance to nearly always right."""
    from agent.dsqn import train_dsqn

    gym.register("S2LoopSignBandit-v0", entry_point=SignBandit)
    args = DQNArgs(
        total_steps=1500,
        learning_starts=200,
        train_every=1,
        batch_size=32,
        lr=3e-3,
        lr_final=3e-4,
        eps_steps=500,
        eval_every=500,
        eval_episodes=50,
        target_every=50,
    )
    snn = SNNConfig(hidden=(16,), encoder="poisson", bins=5, input_ticks=8, alpha_decay=0.9)
    net, info = train_dsqn("S2LoopSignBandit-v0", args, tmp_path, seed=0, snn=snn, progress=False)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(400, 1)).astype(np.float32)
    x = x[np.abs(x[:, 0]) > 0.2]  # away from the boundary, where the rate code is clear
    accuracy = (net.predict(x, "float", rng) == (x[:, 0] > 0)).mean()
    assert accuracy > 0.9, accuracy
    assert info["eval_mean"] > 0.8


@pytest.mark.parametrize("confirmed", [True, False])
def test_an_early_stop_needs_its_confirmation(tmp_path, confirmed, monkeypatch):
    """An evaluation at ``stop_at`` stops training only when its confirmation (dsqn:
    the same episodes' count played by the 8-bit network) holds too."""
    import agent.dsqn as dsqn
    from agent.rollout import Episodes

    gym.register("S2LoopSignBandit-v0", entry_point=SignBandit)
    calls: list[str] = []
    real = dsqn.SpikingQNet.predict

    def predict(self, observations, mode="float", rng=None):
        calls.append(mode)
        return real(self, observations, mode, rng)

    monkeypatch.setattr(dsqn.SpikingQNet, "predict", predict)
    real_train = dsqn.train_dqn

    def train_dqn(*a, confirm, **kw):
        def failing(net, k):
            ep = confirm(net, k)  # plays the 8-bit network
            return ep if confirmed else Episodes(ep.returns - 1000.0, ep.lengths)

        return real_train(*a, confirm=failing, **kw)

    monkeypatch.setattr(dsqn, "train_dqn", train_dqn)
    args = DQNArgs(
        total_steps=800, learning_starts=100, train_every=4, batch_size=16,
        eval_every=200, eval_episodes=4, stop_at=-1.0, keep_best=1,
    )  # fmt: skip
    snn = SNNConfig(hidden=(8,), encoder="poisson", bins=5, input_ticks=4)
    _, info = dsqn.train_dsqn(
        "S2LoopSignBandit-v0", args, tmp_path, seed=0, snn=snn, validation_episodes=2,
        progress=False,
    )  # fmt: skip
    # every float evaluation reaches stop_at -1 (returns 0 or 1): the confirmation decides
    assert info["steps_run"] == (200 if confirmed else 800)
    # one-step episodes, played together: one float and one 8-bit call per evaluation
    assert calls == ["float", "quant"] * info["evaluations"]


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_evaluation_and_checkpoints_take_the_averaged_weights(tmp_path, decay, monkeypatch):
    """``eval_average``: what is evaluated and kept is the moving average of the online
    weights; a decay of 1 keeps it at the weights training started from, while the
    online network moves (0: the online network itself)."""
    import copy

    import torch

    import agent.dsqn as dsqn

    gym.register("S2LoopSignBandit-v0", entry_point=SignBandit)
    seen: dict[str, object] = {}
    real_train = dsqn.train_dqn

    def train_dqn(env_id, args, build, *a, **kw):
        def recorded(states):
            net = build(states)
            seen["start"] = copy.deepcopy(net.state_dict())
            return net

        out = real_train(env_id, args, recorded, *a, **kw)
        seen["kept"] = [state for _, _, state in out[1].kept]
        return out

    monkeypatch.setattr(dsqn, "train_dqn", train_dqn)
    args = DQNArgs(
        total_steps=600, learning_starts=100, train_every=4, batch_size=16,
        eval_every=200, eval_episodes=4, keep_best=3, eval_average=decay,
    )  # fmt: skip
    snn = SNNConfig(hidden=(8,), encoder="poisson", bins=5, input_ticks=4)
    dsqn.train_dsqn(
        "S2LoopSignBandit-v0", args, tmp_path, seed=0, snn=snn, validation_episodes=2,
        progress=False,
    )  # fmt: skip
    start, kept = seen["start"], seen["kept"]
    assert len(kept) == 3
    for state in kept:
        same = all(torch.equal(state[k], start[k]) for k in start)
        assert same == (decay > 0), "the kept weights are the average's (decay 1: the start)"


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_an_average_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=r"eval_average is a decay in \[0, 1\]"):
        DQNArgs(eval_average=decay)


def test_n_step_transitions_fold_rewards_and_end_with_the_episode():
    """Three-step returns over two environments: one transition once three steps have
    gathered, every pending one at an episode's end (terminated: no bootstrap;
    truncated: bootstrapped from the final observation after fewer steps)."""
    from agent.dqn import NStep, Replay, td_inputs

    fold = NStep(3, 0.5, 2)
    o = [np.full((2, 1), t, np.float32) for t in range(6)]
    no = np.zeros(2, bool)
    for t in range(2):  # two steps: nothing complete yet
        assert fold(o[t], o[t + 1], np.array([t, t]), np.array([1.0, 10.0]), no, no) == ()
    # step 3: both environments complete a three-step transition from o[0]
    obs, nxt, act, ret, term, steps = fold(o[2], o[3], np.array([2, 2]), np.ones(2), no, no)
    np.testing.assert_array_equal(steps, [3, 3])
    np.testing.assert_allclose(ret, [1 + 0.5 + 0.25, 10 + 5 + 0.25])
    np.testing.assert_array_equal(obs[:, 0], [0, 0])
    np.testing.assert_array_equal(act, [0, 0])
    # step 4: env 0 terminates, env 1 is truncated (done, not terminated)
    out = fold(o[3], o[4], np.array([3, 3]), np.array([4.0, 4.0]), np.array([True, False]),
               np.array([True, True]))  # fmt: skip
    obs, nxt, act, ret, term, steps = out
    # env 0's three pending starts (o1, o2, o3), then env 1's
    np.testing.assert_array_equal(obs[:, 0], [1, 2, 3, 1, 2, 3])
    np.testing.assert_array_equal(steps, [3, 2, 1, 3, 2, 1])
    np.testing.assert_allclose(ret[:3], [1 + 0.5 + 1.0, 1 + 2.0, 4.0])
    np.testing.assert_array_equal(term, [True] * 3 + [False] * 3)
    np.testing.assert_array_equal(nxt[:, 0], [4] * 6)
    # the episodes ended: the next step starts afresh
    assert fold(o[4], o[5], np.array([0, 0]), np.ones(2), no, no) == ()

    replay = Replay(8, 1)
    replay.add(*out)
    b = td_inputs(
        lambda net, x, rng: torch.from_numpy(x),
        None,
        replay.sample(8, np.random.default_rng(0)),
        DQNArgs(gamma=0.5),
        np.random.default_rng(0),
    )
    expected = np.where(replay.terminated[:6] > 0, 0.0, 0.5 ** replay.steps[:6])
    order = np.random.default_rng(0).integers(0, 6, 8)
    np.testing.assert_allclose(b["discount"].numpy(), expected[order])


def test_a_one_step_fold_passes_each_step_through():
    from agent.dqn import NStep

    fold = NStep(1, 0.99, 2)
    _, _, _, ret, term, steps = fold(
        np.zeros((2, 1)), np.ones((2, 1)), np.array([0, 1]), np.array([1.0, 2.0]),
        np.array([False, True]), np.array([False, True]),
    )  # fmt: skip
    np.testing.assert_array_equal(ret, [1.0, 2.0])
    np.testing.assert_array_equal(steps, [1, 1])
    np.testing.assert_array_equal(term, [False, True])


def test_n_step_below_one_is_refused():
    with pytest.raises(ValueError, match="n_step counts environment steps"):
        DQNArgs(n_step=0)


def test_plain_epsilon_greedy_draws_as_before():
    """``eps_hold`` 1: the same draws as the loop's epsilon-greedy always made (runs
    of the earlier code, the shipped models among them, stay reproducible)."""
    from agent.dqn import EpsGreedy

    policy, rng = EpsGreedy(4, 3, 1, np.random.default_rng(5)), np.random.default_rng(5)
    greedy = np.array([2, 2, 2, 2])
    for eps in (1.0, 0.5, 0.02):
        explore = rng.random(4) < eps
        expected = np.where(explore, rng.integers(0, 3, 4), greedy)
        np.testing.assert_array_equal(policy(eps, greedy), expected)
    np.testing.assert_array_equal(policy.random(), rng.integers(0, 3, 4))


def test_a_random_action_is_held_then_greedy_resumes():
    """``eps_hold`` 8: random actions come in runs of 1-8 steps of one action (longer
    on average than independent draws), a greedy step only between runs; at epsilon 0
    a run still going finishes, then every action is greedy; an episode's end drops
    its environment's run."""
    from agent.dqn import EpsGreedy

    policy = EpsGreedy(2, 3, 8, np.random.default_rng(0))
    greedy = np.array([-1, -1])  # no real action: a greedy step shows as -1
    runs: list[tuple[int, int]] = []  # (drawn length, distinct actions over it), env 0
    while len(runs) < 2000:
        assert policy.left[0] == 0
        first = policy(1.0, greedy)
        assert (first >= 0).all(), "at epsilon 1 every action is random"
        length, seen = int(policy.left[0]) + 1, {int(first[0])}
        while policy.left[0] > 0:
            seen.add(int(policy(1.0, greedy)[0]))
        runs.append((length, len(seen)))
    lengths = np.array([n for n, _ in runs])
    assert all(k == 1 for _, k in runs), "one action over a run"
    assert lengths.min() == 1 and lengths.max() == 8, "zeta(2) capped at 8"
    # zeta(2) capped at 8: P(1) = 0.61 and a mean of 2.2 steps
    assert 0.55 < (lengths == 1).mean() < 0.67 and 2.0 < lengths.mean() < 2.45
    policy(1.0, greedy)
    left = policy.left.copy()
    after = np.stack([policy(0.0, greedy) for _ in range(9)])
    for env in range(2):
        assert (after[: left[env], env] >= 0).all() and (after[left[env] :, env] == -1).all()
    policy(1.0, greedy)
    policy.end(np.array([True, False]))
    assert policy.left[0] == 0
    assert policy(0.0, greedy)[0] == -1


def test_eps_hold_below_one_is_refused():
    with pytest.raises(ValueError, match="eps_hold counts environment steps"):
        DQNArgs(eps_hold=0)


def _grad_steps(net, device: str, steps: int):
    """``steps`` gradient steps of ``net`` on ``device`` over the same seeded batches of
    random transitions; returns the losses and the trained weights (on the CPU)."""
    import copy

    from agent.dqn import GradStep, Replay, td_inputs
    from agent.dsqn import q_float, spikes

    net = copy.deepcopy(net).to(device)
    args = DQNArgs(batch_size=16, advantage_alpha=0.5, target_draws=2)
    grad_step = GradStep(q_float, net, copy.deepcopy(net), args, total=steps)
    rng = np.random.default_rng(0)
    replay = Replay(64, 1)
    for _ in range(64):
        x = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
        replay.add(x, -x, rng.integers(0, 2, 1), rng.random(1), rng.random(1) < 0.1)
    encoder = copy.deepcopy(net).cpu()  # Poisson draws are made on the host
    losses = [
        grad_step(td_inputs(spikes, encoder, replay.sample(16, rng), args, rng))[0]
        for _ in range(steps)
    ]
    return losses, [w.detach().cpu() for w in net.weights]


def test_prefetched_targets_are_the_serial_ones_and_follow_a_target_update():
    """The next step's inputs and target Q-values made on the second thread are what
    the same draws give made in line, and after a discard (a target update) the step's
    targets are the new target network's, not the old one's."""
    import copy

    from agent.dqn import Prefetch, Replay, target_q, td_inputs
    from agent.dsqn import q_float, spikes
    from agent.network import SpikingQNet, env_spec

    gym.register("S2LoopSignBandit-v0", entry_point=SignBandit)
    snn = SNNConfig(hidden=(16, 8), encoder="poisson", bins=5, input_ticks=6, alpha_decay=0.9)
    net = SpikingQNet(snn, env_spec("S2LoopSignBandit-v0", snn, np.ones((4, 1))), seed=0)
    target = copy.deepcopy(net)
    args = DQNArgs(batch_size=16, advantage_alpha=0.5, target_draws=2)
    rng = np.random.default_rng(0)
    replay = Replay(64, 1)
    for _ in range(64):
        x = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
        replay.add(x, -x, rng.integers(0, 2, 1), rng.random(1), rng.random(1) < 0.1)

    # the prefetch draws batches from `main` and spikes from its own generator; twins
    # of both make the same inputs in line
    main, twin = np.random.default_rng(1), np.random.default_rng(1)
    worker = np.random.default_rng(5)

    def in_line():
        b = td_inputs(spikes, net, replay.sample(16, twin), args, worker)
        return b, b["xt"]

    pre = Prefetch(spikes, q_float, net, target, args, np.random.default_rng(5))
    first = pre.next(replay, main)  # made now; the second batch starts on the worker
    b, xt = in_line()
    assert torch.equal(first["x"], b["x"]) and torch.equal(first["action"], b["action"])
    assert torch.equal(first["qt"], target_q(q_float, target, xt)) and "xt" not in first
    in_line()  # the second batch: dropped before a target update
    pre.discard()
    old_target = copy.deepcopy(target)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    third = pre.next(replay, main)
    b, xt = in_line()
    assert torch.equal(third["x"], b["x"])
    assert torch.equal(third["qt"], target_q(q_float, target, xt))
    assert not torch.equal(third["qt"], target_q(q_float, old_target, xt))
    pre.close()


def test_a_training_step_on_the_device_is_the_cpu_step():
    """On CUDA the gradient step is captured in a CUDA graph after three eager steps
    and replayed: the same losses and weights as the CPU's eager steps, to float
    rounding (``s2loop train --device cuda``)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible: the captured training step runs only on one")
    from agent.network import SpikingQNet, env_spec

    gym.register("S2LoopSignBandit-v0", entry_point=SignBandit)
    snn = SNNConfig(hidden=(16, 8), encoder="poisson", bins=5, input_ticks=6, alpha_decay=0.9)
    net = SpikingQNet(snn, env_spec("S2LoopSignBandit-v0", snn, np.ones((4, 1))), seed=0)
    cpu_losses, cpu_w = _grad_steps(net, "cpu", 8)
    gpu_losses, gpu_w = _grad_steps(net, "cuda", 8)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for a, b in zip(gpu_w, cpu_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_on_a_missing_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    from agent.pipeline import train_run

    cfg = TrainConfig(out=tmp_path / "r", env="CartPole-v1", device="cuda", snn=TINY_SNN)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_run(cfg)


def test_train_cli_options_come_from_the_dataclasses():
    from agent.cli import parse_options

    cfg = parse_options(
        TrainConfig,
        ["--out", "r", "--recipe", "dsqn", "--snn.alpha-decay", "0.95", "--dsqn.lr", "1e-3"],
        "s2loop train",
        ("out",),
    )
    assert cfg.recipe == "dsqn" and cfg.snn.alpha_decay == 0.95 and cfg.dsqn.lr == 1e-3
    cfg = parse_options(
        TrainConfig, ["--preset", "distill-acrobot", "--out", "r"], "s2loop train", ("out",)
    )
    assert cfg.env == "Acrobot-v1" and cfg.teacher.target_every == 250
    ft = parse_options(
        FinetuneConfig,
        ["--preset=distill-acrobot", "--run", "r", "--out", "m.s2l", "--qat.pipelines", "qat"],
        "s2loop finetune",
        ("run", "out"),
    )
    assert ft.distill.rounds == 6 and ft.qat.pipelines == ("qat",)


def test_train_cli_help_and_errors():
    cli = [sys.executable, "-m", "s2loop.cli", "train"]
    out = subprocess.run([*cli, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for group in ("snn", "dsqn", "teacher", "distill"):
        assert f"--{group}." in out.stdout
    assert "--preset" in out.stdout and "paper-cartpole" in out.stdout
    bad = subprocess.run(
        [*cli, "--preset", "nope", "--out", "x"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr
    missing = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "--out" in missing.stdout + missing.stderr


def test_evaluate_emulator_and_torch_agree_exactly():
    art = random_artifact(seed=5, name="rnd", ticks=10)
    emu = evaluate(art, episodes=4, seed=77, backend="emulator")
    tor = evaluate(art, episodes=4, seed=77, backend="torch")
    flt = evaluate(art, episodes=4, seed=77, backend="float")
    assert emu["returns"] == tor["returns"]
    assert emu["agreement"] == tor["agreement"]
    assert 0.5 <= emu["agreement"] <= 1.0 and emu["agreement_states"] == sum(emu["returns"])
    assert flt["backend"] == "float" and len(flt["returns"]) == 4
    with pytest.raises(ValueError, match="backend"):
        evaluate(art, episodes=1, backend="gpu")


def test_agent_cli_does_not_import_torch():
    code = "import sys, agent.cli; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "name,env_id,recipe",
    [
        ("cartpole", "CartPole-v1", "distill"),
        ("acrobot", "Acrobot-v1", "distill"),
        ("cartpole-dsqn", "CartPole-v1", "dsqn"),
        ("acrobot-dsqn", "Acrobot-v1", "dsqn"),
    ],
)
def test_shipped_model_loads_and_drives_a_short_episode(name, env_id, recipe):
    import gymnasium as gym

    art = load_artifact(ROOT / "models" / f"{name}.s2l")
    assert art.env_id == env_id and art.name == name
    assert art.provenance["recipe"] == recipe
    assert "evaluation" in art.provenance and "commands" in art.provenance
    assert (ROOT / "models" / f"{name}.md").exists()
    if recipe == "dsqn":  # the paper's setting: Poisson coding, leaky neurons, T <= 20
        assert art.encoder.kind == "poisson" and art.encoder.input_ticks <= 20
        assert all(layer.alpha_decay < 1.0 for layer in art.layers[:-1])
    env = gym.make(env_id)
    obs, _ = env.reset(seed=123)
    total, steps = 0.0, 60
    with EmulatorBackend() as emu:
        emu.load(art)
        for t in range(steps):
            seeds = np.array([t])  # the same input spikes for both runs of a Poisson model
            res = emu.infer(name, obs[None].astype(np.float32), seeds)
            # the torch run of the same int8 network picks the same action
            ref = run_artifact(art, obs[None], seeds=seeds)
            assert int(ref.q_values.argmax()) == int(res.actions[0])
            obs, r, term, trunc, _ = env.step(int(res.actions[0]))
            total += float(r)
            if term or trunc:
                break
    env.close()
    if env_id == "CartPole-v1":
        assert total == steps  # a trained policy keeps the pole up
