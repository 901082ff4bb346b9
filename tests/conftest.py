import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from hw.artifact import save_artifact
from hw.synthetic import random_artifact


@pytest.fixture(scope="session")
def small_artifact():
    return random_artifact(seed=3, name="small")


@pytest.fixture(scope="session")
def observations():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(64, 4)) * np.array([1.0, 1.5, 0.15, 1.5])).astype(np.float32)


ACROBOT_SCALE = [1.0, 1.0, 1.0, 1.0, 12.6, 28.3]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    save_artifact(random_artifact(seed=1, name="cartpole"), d / "cartpole.s2l")
    acrobot = random_artifact(
        seed=2, name="acrobot", env_id="Acrobot-v1", obs_scale=ACROBOT_SCALE, actions=3
    )
    card = {"evaluation": {"episodes": 10, "emulator": {"mean": -80.5}}}
    save_artifact(dataclasses.replace(acrobot, provenance=card), d / "acrobot.s2l")
    return d


FAKE_DIR = Path(__file__).parent / "fake_spinnaker2"


def _drop_sdk_modules() -> None:
    for name in [m for m in sys.modules if m == "spinnaker2" or m.startswith("spinnaker2.")]:
        del sys.modules[name]


@pytest.fixture
def fake_sdk(monkeypatch):
    _drop_sdk_modules()
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    import spinnaker2.hardware

    spinnaker2.hardware.RUN_LOG.clear()
    yield spinnaker2
    _drop_sdk_modules()
