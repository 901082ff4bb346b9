"""Training pipeline smoke test (a few hundred steps), evaluation, CLI import hygiene,
and the shipped models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.evaluate import evaluate  # noqa: E402
from agent.snn import SpikingQNet, run_artifact  # noqa: E402
from hw.artifact import load_artifact  # noqa: E402
from hw.emulator import EmulatorBackend  # noqa: E402
from hw.synthetic import random_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


TINY_TEACHER = {
    "total_steps": 400,
    "learning_starts": 100,
    "train_every": 4,
    "gradient_steps": 1,
    "eval_every": 200,
    "eval_episodes": 2,
    "hidden": 32,
}
TINY_DISTILL = {
    "rounds": 1,
    "steps_per_round": 5,
    "batch_size": 32,
    "teacher_episodes": 2,
    "rollout_episodes": 2,
    "eval_episodes": 2,
}


def _tiny_train(run: Path, seed: int = 3) -> dict:
    from agent.pipeline import train_run

    return train_run(
        "CartPole-v1",
        seed,
        run,
        teacher_overrides=TINY_TEACHER,
        distill_overrides=TINY_DISTILL,
        snn_overrides={"hidden": (16,), "input_ticks": 4, "bins": 5},
        threads=1,
        progress=False,
        command="smoke",
    )


def test_train_and_finetune_smoke(tmp_path):
    from agent.card import card_text
    from agent.pipeline import finetune_run

    run = tmp_path / "run"
    summary = _tiny_train(run)
    for f in ("teacher.pt", "student.pt", "teacher.csv", "distill.csv", "train.json"):
        assert (run / f).exists(), f
    assert summary["teacher"]["steps_run"] == 400
    assert json.loads((run / "train.json").read_text())["seed"] == 3

    out = tmp_path / "tiny.s2l"
    prov = finetune_run(
        run, out, distill_overrides=TINY_DISTILL, eval_episodes=2, threads=1, progress=False
    )
    art = load_artifact(out)
    assert art.name == "tiny" and art.env_id == "CartPole-v1"
    assert art.layer_sizes == [16, 2] and art.ticks == 4 + 2
    assert art.provenance["seed"] == 3 and art.provenance["commands"][0] == "smoke"
    ev = art.provenance["evaluation"]
    assert ev["episodes"] == 2 and 0.0 <= ev["agreement_float_vs_8bit"] <= 1.0
    # the torch fake-quant model and the emulator run the same exported network
    assert ev["emulator"]["mean"] == ev["torch"]["mean"]
    assert prov["evaluation"] == ev

    # the saved QAT student exports exactly the shipped weights
    student, _ = SpikingQNet.load(run / "student_quant.pt")
    again = student.export("tiny")
    for a, b in zip(again.layers, art.layers, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.i_offset, b.i_offset)
    text = card_text(art)
    assert "Decision agreement" in text and "smoke" in text
    assert len(art.provenance["float_master_grid_rms_lsb"]) == 2


def test_training_is_reproducible_for_a_seed(tmp_path):
    _tiny_train(tmp_path / "a", seed=4)
    _tiny_train(tmp_path / "b", seed=4)
    a, _ = SpikingQNet.load(tmp_path / "a" / "student.pt")
    b, _ = SpikingQNet.load(tmp_path / "b" / "student.pt")
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert torch.equal(wa, wb)
    rows_a = (tmp_path / "a" / "teacher.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "teacher.csv").read_text().splitlines()
    # same episodes, same losses (the seconds column differs)
    strip = [[c for i, c in enumerate(r.split(",")) if i != 1] for r in rows_a]
    assert strip == [[c for i, c in enumerate(r.split(",")) if i != 1] for r in rows_b]


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
    "name,env_id,steps", [("cartpole", "CartPole-v1", 60), ("acrobot", "Acrobot-v1", 60)]
)
def test_shipped_model_loads_and_drives_a_short_episode(name, env_id, steps):
    import gymnasium as gym

    art = load_artifact(ROOT / "models" / f"{name}.s2l")
    assert art.env_id == env_id and art.name == name
    assert "evaluation" in art.provenance and "commands" in art.provenance
    assert (ROOT / "models" / f"{name}.md").exists()
    env = gym.make(env_id)
    obs, _ = env.reset(seed=123)
    total = 0.0
    with EmulatorBackend() as emu:
        emu.load(art)
        for _ in range(steps):
            res = emu.infer(name, obs[None].astype(np.float32))
            # the torch run of the same int8 network picks the same action
            ref = run_artifact(art, obs[None])
            assert int(ref.q_values.argmax()) == int(res.actions[0])
            obs, r, term, trunc, _ = env.step(int(res.actions[0]))
            total += float(r)
            if term or trunc:
                break
    env.close()
    if env_id == "CartPole-v1":
        assert total == steps  # a trained policy keeps the pole up
