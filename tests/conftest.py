import numpy as np
import pytest

from hw.synthetic import random_artifact


@pytest.fixture(scope="session")
def small_artifact():
    return random_artifact(seed=3, name="small")


@pytest.fixture(scope="session")
def observations():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(64, 4)) * np.array([1.0, 1.5, 0.15, 1.5])).astype(np.float32)
