"""Many robots, many boards: request coalescing on the (fake) board, replicas behind a
real load balancer (HAProxy from Debian's package), Kubernetes manifests."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from hw.artifact import load_artifact
from hw.emulator import EmulatorBackend
from service.app import create_app
from tests.test_service import make_settings

OBS_SCALE = np.array([1.0, 1.5, 0.15, 1.5], np.float32)


async def _burst(app, bodies, stagger_s: float = 0.0):
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client,
    ):
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.02)
        import spinnaker2.hardware as hardware

        hardware.RUN_LOG.clear()

        async def one(i, body):
            await asyncio.sleep(i * stagger_s)
            t = time.perf_counter()
            r = await client.post("/v1/act", json=body)
            return r.status_code, r.json(), time.perf_counter() - t

        out = await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        return out, len(hardware.RUN_LOG)


@pytest.mark.parametrize("window_ms", [None, 0.0])
def test_concurrent_requests_share_board_runs_and_each_gets_its_own_answer(
    fake_sdk, models_dir, monkeypatch, window_ms
):
    monkeypatch.setattr(fake_sdk.hardware, "RUN_OVERHEAD_S", 0.02)
    settings = make_settings(
        models_dir, backend="spinnaker2", fallback="none", deadline_ms=10_000,
        batch_window_ms=window_ms, queue_size=64,
    )  # fmt: skip
    app = create_app(settings)
    rng = np.random.default_rng(3)
    obs = (rng.normal(size=(32, 4)) * OBS_SCALE).astype(np.float32)
    bodies = [{"model": "cartpole", "observation": o.tolist()} for o in obs]
    out, runs = asyncio.run(_burst(app, bodies))
    with EmulatorBackend() as emu:
        emu.load(load_artifact(models_dir / "cartpole.s2l"))
        expected = emu.infer("cartpole", obs)
    for (status, answer, _), action, q in zip(
        out, expected.actions, expected.q_values, strict=True
    ):
        assert status == 200 and answer["backend"] == "spinnaker2"
        assert answer["action"] == action  # its own row, not a neighbour's
        np.testing.assert_allclose(answer["q_values"], q, rtol=1e-6)
    metrics = app.state.metrics.render().decode()
    if window_ms is None:  # the board's default: coalescing on
        assert runs <= 4, runs  # 32 requests, 37 copies fit one run
        assert "s2loop_coalesce_batch_size_count" in metrics
    else:
        assert runs == 32


def test_nobody_waits_for_a_batch_past_their_deadline(fake_sdk, models_dir, monkeypatch):
    """A window longer than the deadline: the batch leaves early enough to answer."""
    monkeypatch.setattr(fake_sdk.hardware, "RUN_OVERHEAD_S", 0.02)
    settings = make_settings(
        models_dir, backend="spinnaker2", fallback="none", deadline_ms=150, batch_window_ms=1000
    )
    body = {"model": "cartpole", "observation": [0, 0, 0, 0]}
    out, runs = asyncio.run(_burst(create_app(settings), [body] * 3))
    assert [s for s, _, _ in out] == [200, 200, 200] and runs == 1
    assert max(t for _, _, t in out) < 0.15
