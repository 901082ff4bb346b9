"""The float reference backend's static path (fixed buffers per model and batch bucket,
captured as CUDA graphs on a GPU) gives the eager path's answers.

This machine has no GPU: the static path runs here on the CPU with the capture left out
(the same buffers, buckets, padding and copies); the graph capture itself runs in
``test_cuda_graphs_equal_the_cpu_reference``, which skips where torch sees no GPU."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.reference import ReferenceBackend, _bucket  # noqa: E402
from hw.artifact import load_artifact  # noqa: E402
from hw.synthetic import random_artifact  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "models"


def _observations(n: int, size: int, seed: int = 0) -> np.ndarray:
    scale = np.array([1.0, 1.5, 0.15, 1.5, 1.0, 1.0][:size], np.float32)
    return (np.random.default_rng(seed).normal(size=(n, size)) * scale).astype(np.float32)


def _artifacts():
    """A random deterministic-encoder network and the shipped Poisson one (seeded)."""
    return [random_artifact(seed=3, name="rand"), load_artifact("cartpole-dsqn", SHIPPED)]


def _same(a, b) -> None:
    np.testing.assert_allclose(a.q_values, b.q_values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.spikes_per_layer, b.spikes_per_layer)
    np.testing.assert_array_equal(a.synaptic_events, b.synaptic_events)


def test_batch_buckets_are_powers_of_two():
    assert [_bucket(b) for b in (1, 2, 3, 4, 5, 63, 64, 65, 4096)] == [
        1, 2, 4, 4, 8, 64, 64, 128, 4096,
    ]  # fmt: skip


@pytest.mark.parametrize("art", _artifacts(), ids=lambda a: a.name)
def test_static_path_gives_the_eager_answers_at_every_batch_size(art):
    """Odd batch sizes run padded in their bucket; the padding never shows, and a later
    call never changes an earlier call's arrays (the buffers are reused)."""
    obs = _observations(70, art.observation_size)
    seeds = np.arange(70, dtype=np.uint64) + 11
    with ReferenceBackend(static=True) as static, ReferenceBackend() as eager:
        static.load(art)
        eager.load(art)
        kept = []
        for b in (1, 3, 1, 64, 70, 5):
            got = static.infer(art.name, obs[:b], seeds[:b])
            want = eager.infer(art.name, obs[:b], seeds[:b])
            _same(got, want)
            kept.append((got, got.q_values.copy()))
        for got, q in kept:
            np.testing.assert_array_equal(got.q_values, q)
        assert sorted(static.static_forwards()) == [
            (art.name, 1), (art.name, 4), (art.name, 8), (art.name, 64), (art.name, 128),
        ]  # fmt: skip
        assert eager.static_forwards() == []


def test_reload_drops_the_old_static_forwards():
    old, new = random_artifact(seed=3, name="m"), random_artifact(seed=4, name="m")
    obs = _observations(2, old.observation_size)
    with ReferenceBackend(static=True) as static, ReferenceBackend() as eager:
        static.load(old)
        static.infer("m", obs)
        static.load(new)
        assert static.static_forwards() == []
        eager.load(new)
        _same(static.infer("m", obs), eager.infer("m", obs))


def test_static_forwards_are_bounded_least_recently_used_first():
    art = random_artifact(seed=3, name="m")
    obs = _observations(8, art.observation_size)
    with ReferenceBackend(static=True, max_graphs=2) as static:
        static.load(art)
        for b in (1, 2, 1, 4):
            static.infer("m", obs[:b])
        assert static.static_forwards() == [("m", 1), ("m", 4)]


def test_concurrent_calls_on_one_bucket_each_get_their_own_answer():
    art = random_artifact(seed=3, name="m")
    obs = _observations(64, art.observation_size)
    with ReferenceBackend(static=True) as static, ReferenceBackend() as eager:
        static.load(art)
        eager.load(art)
        want = [eager.infer("m", obs[i : i + 1]).q_values for i in range(64)]
        got: dict[int, np.ndarray] = {}

        def worker(start: int) -> None:
            for i in range(start, 64, 4):
                got[i] = static.infer("m", obs[i : i + 1]).q_values

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i in range(64):
        np.testing.assert_allclose(got[i], want[i], rtol=1e-5, atol=1e-5)


def test_traced_requests_take_the_eager_path_with_the_same_answer():
    art = random_artifact(seed=3, name="m")
    obs = _observations(3, art.observation_size)
    with ReferenceBackend(static=True) as static:
        static.load(art)
        plain = static.infer("m", obs)
        traced = static.infer("m", obs, trace=True)
    _same(plain, traced)
    assert traced.traces is not None and plain.traces is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch here")
@pytest.mark.parametrize("art", _artifacts(), ids=lambda a: a.name)
def test_cuda_graphs_equal_the_cpu_reference(art):
    obs = _observations(300, art.observation_size)
    seeds = np.arange(300, dtype=np.uint64)
    with ReferenceBackend("cuda") as gpu, ReferenceBackend() as cpu:
        assert gpu.describe()["cuda_graphs"] is True
        gpu.load(art)
        cpu.load(art)
        for b in (1, 1, 7, 300):
            a, c = gpu.infer(art.name, obs[:b], seeds[:b]), cpu.infer(art.name, obs[:b], seeds[:b])
            np.testing.assert_allclose(a.q_values, c.q_values, rtol=1e-4, atol=1e-4)
            assert (a.actions == c.actions).mean() >= 0.99
        assert (art.name, 1) in gpu.static_forwards()
