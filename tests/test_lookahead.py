"""The planning teacher: Acrobot's batched step is gymnasium's, a lookahead is the Bellman
backup it names, and a run's teacher.pt brings the same planning teacher back."""

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.lookahead import AcrobotDynamics, Lookahead  # noqa: E402
from agent.options import TeacherArgs  # noqa: E402
from agent.teacher import MLP, load_teacher, train_teacher  # noqa: E402


def _states(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-np.pi, np.pi, (n, 2))
    speeds = rng.uniform(-1, 1, (n, 2)) * [4 * np.pi, 9 * np.pi]  # the env's bounds
    return np.column_stack([angles, speeds])


def _gym_step(env, state: np.ndarray, action: int):
    env.unwrapped.state = state.copy()
    _, reward, terminated, _, _ = env.step(action)
    return env.unwrapped.state.copy(), reward, terminated


def test_a_batched_acrobot_step_is_gymnasiums_bit_for_bit():
    env = gym.make("Acrobot-v1")
    env.reset(seed=0)
    dyn = AcrobotDynamics()
    states = _states(300)
    actions = np.random.default_rng(1).integers(0, 3, len(states))
    nxt, rewards, terminated = dyn.step(states, actions)
    for i, (s, a) in enumerate(zip(states, actions, strict=True)):
        want, r, term = _gym_step(env, s, int(a))
        assert np.array_equal(nxt[i], want) and rewards[i] == r and terminated[i] == term
    # an observation gives its state back (float32 rounding only)
    np.testing.assert_allclose(dyn.states(dyn.observations(states)), states, atol=1e-5)


def test_a_one_step_lookahead_is_the_bellman_backup_on_the_network():
    torch.manual_seed(0)
    net = MLP(6, 3, 16)
    env = gym.make("Acrobot-v1")
    env.reset(seed=0)
    dyn = AcrobotDynamics()
    states = _states(20, seed=2)
    got = Lookahead(net, "Acrobot-v1", 1, 0.9).q(dyn.observations(states))
    for i, s in enumerate(dyn.states(dyn.observations(states))):
        for a in range(3):
            nxt, r, term = _gym_step(env, s, a)
            v = 0.0 if term else float(net.q(dyn.observations(nxt[None])).max())
            assert got[i, a] == pytest.approx(r + 0.9 * v, rel=1e-5, abs=1e-5)


def test_deeper_lookahead_backs_up_the_shallower_one():
    torch.manual_seed(0)
    net = MLP(6, 3, 16)
    dyn = AcrobotDynamics()
    obs = dyn.observations(_states(10, seed=3))
    one, two = Lookahead(net, "Acrobot-v1", 1, 0.9), Lookahead(net, "Acrobot-v1", 2, 0.9)
    for o in obs:
        s = dyn.states(o[None])
        for a in range(3):
            nxt, r, term = dyn.step(s, np.array([a]))
            v = 0.0 if term[0] else float(one.q(dyn.observations(nxt)).max())
            assert two.q(o[None])[0, a] == pytest.approx(r[0] + 0.9 * v, rel=1e-5, abs=1e-5)
    assert np.array_equal(two.act(obs), two.q(obs).argmax(axis=1))


def test_lookahead_is_refused_where_it_cannot_plan():
    with pytest.raises(ValueError, match="CartPole-v1 is not one of Acrobot-v1"):
        Lookahead(MLP(4, 2, 8), "CartPole-v1", 2, 0.99)
    with pytest.raises(ValueError, match="lookahead counts steps"):
        TeacherArgs(lookahead=-1)


def test_a_run_teacher_file_brings_the_planning_teacher_back(tmp_path):
    args = TeacherArgs(
        total_steps=300, learning_starts=100, train_every=4, eval_every=150, eval_episodes=1,
        hidden=16, lookahead=2,
    )  # fmt: skip
    teacher, info = train_teacher("Acrobot-v1", args, tmp_path, seed=0, progress=False)
    back = load_teacher(tmp_path / "teacher.pt")
    assert isinstance(teacher, Lookahead) and isinstance(back, Lookahead) and back.depth == 2
    obs = AcrobotDynamics.observations(_states(8, seed=4))
    assert np.array_equal(back.q(obs), teacher.q(obs))
    assert info["steps_run"] == 300


def test_an_improved_teacher_is_fitted_to_its_lookahead_and_acts_alone(tmp_path):
    args = TeacherArgs(
        total_steps=300, learning_starts=100, train_every=4, eval_every=150, eval_episodes=1,
        hidden=16, lookahead=1, improve_rounds=2, improve_steps=20,
    )  # fmt: skip
    teacher, info = train_teacher("Acrobot-v1", args, tmp_path, seed=0, progress=False)
    back = load_teacher(tmp_path / "teacher.pt")
    assert isinstance(teacher, MLP) and isinstance(back, MLP)
    assert back.name == teacher.name == "float MLP teacher fitted to its own 1-step lookahead"
    obs = AcrobotDynamics.observations(_states(8, seed=5))
    assert np.array_equal(back.q(obs), teacher.q(obs))
    assert info["improve"]["round"] in (0, 1, 2) and -500 <= info["improve"]["eval_mean"] <= 0
    with pytest.raises(ValueError, match="improve_rounds fits the teacher to its lookahead"):
        TeacherArgs(improve_rounds=2)


def test_the_card_names_the_teacher():
    from agent.card import _evaluation_lines

    row = {"mean": -70.0, "std": 5.0, "min": -90.0}
    ev = {"episodes": 2, "seeds": [0, 1], "emulator": row, "torch": row, "float": row}
    ev |= {"teacher_float_mlp": row, "agreement_teacher_vs_8bit": 0.9}
    assert "| float MLP teacher (not shipped) | -70.00 " in "\n".join(_evaluation_lines(ev))
    name = Lookahead(MLP(6, 3, 8), "Acrobot-v1", 3, 0.99).name
    text = "\n".join(_evaluation_lines({**ev, "teacher_name": name}))
    assert f"| {name} (not shipped) |" in text and f"Agreement with the {name} on" in text
    assert name == "float MLP teacher, looked ahead 3 steps through the environment's dynamics"
