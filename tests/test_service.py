"""The control server: routes, bad inputs, fallback, queue, deadline, reload.

Models are untrained random artifacts written to a temporary models folder.
Fake backends live here and are loaded by ``module:Class`` spec, as a user's
own backend would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

from hw.artifact import save_artifact
from hw.backend import Backend, BackendError, InferenceResult
from hw.emulator import EmulatorBackend
from hw.synthetic import random_artifact
from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings

ACROBOT_SCALE = [1.0, 1.0, 1.0, 1.0, 12.6, 28.3]
OBS = [0.01, -0.2, 0.03, 0.25]


# ----------------------------------------------------------------------------- fakes


def _result(art, obs: np.ndarray, name: str, us: float = 1.0) -> InferenceResult:
    """Q-values read straight off the observation, so an answer shows which request it is."""
    q = np.ascontiguousarray(obs[:, : art.action_count], dtype=np.float32)
    b = obs.shape[0]
    return InferenceResult(
        q_values=q,
        actions=np.argmax(q, axis=1).astype(np.int64),
        ticks=art.ticks,
        spikes_per_layer=np.zeros((b, len(art.layers)), np.int64),
        synaptic_events=np.zeros(b, np.int64),
        backend=name,
        compute_us=us,
    )


class SlowBackend(Backend):
    """A board-like backend: not thread-safe (one worker thread), ``delay`` s per call."""

    name = "slow"
    delay = 0.2

    def _prepare(self, artifact):
        return artifact

    def infer(self, model, observations, seeds=None):
        art = self._get(model)
        time.sleep(self.delay)
        return _result(art, observations, self.name, self.delay * 1e6)


class GatedBackend(SlowBackend):
    """A board-like backend whose calls wait until the test opens ``gate`` (open by
    default, so warm-up passes). "Answered while the backend was still busy" is then
    shown by order of events, never by a clock."""

    name = "gated"
    gate = threading.Event()
    entered = threading.Event()  # set by every call that reached the backend

    def infer(self, model, observations, seeds=None):
        art = self._get(model)
        type(self).entered.set()
        if not type(self).gate.wait(timeout=30):
            raise BackendError("the test never opened the gate")
        return _result(art, observations, self.name)


class FailingBackend(SlowBackend):
    """Loads fine, fails every inference (a board that went away)."""

    name = "failing"

    def infer(self, model, observations, seeds=None):
        raise BackendError("board unreachable (fake)")


class UnstartableBackend(SlowBackend):
    name = "unstartable"

    def __init__(self, **kwargs):
        raise BackendError("py-spinnaker2 is not installed (fake)")


class CountingBackend(EmulatorBackend):
    """The emulator, counting calls (to prove bad input never reaches a backend)."""

    name = "counting"
    inline_safe = True
    thread_safe = True
    calls = 0

    def infer(self, model, observations, seeds=None):
        type(self).calls += 1
        return super().infer(model, observations, seeds)


SPEC = "tests.test_service:"


# ----------------------------------------------------------------------------- fixtures


def make_settings(models_dir: Path, **kw) -> Settings:
    return Settings(models=models_dir, log_json=False, **kw)


@pytest.fixture(scope="module")
def client(models_dir):
    with TestClient(create_app(make_settings(models_dir))) as c:
        yield c


def wait_ready(client: TestClient, timeout: float = 5.0, status: str | None = None) -> dict:
    end = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        body = r.json()
        if r.status_code == 200 and (status is None or body["status"] == status):
            return body
        if time.monotonic() > end:
            raise AssertionError(f"not ready: {r.status_code} {body}")
        time.sleep(0.02)


def emulator_answer(models_dir: Path, name: str, obs) -> tuple[int, np.ndarray]:
    from hw.artifact import load_artifact

    b = EmulatorBackend()
    b.load(load_artifact(models_dir / f"{name}.s2l"))
    res = b.infer(name, np.asarray([obs], np.float32))
    return int(res.actions[0]), res.q_values[0]


# ----------------------------------------------------------------------------- routes


def test_act_answers_what_the_emulator_computes(client, models_dir):
    r = client.post("/v1/act", json={"model": "cartpole", "observation": OBS})
    assert r.status_code == 200, r.text
    body = r.json()
    action, q = emulator_answer(models_dir, "cartpole", OBS)
    assert body["action"] == action
    assert np.allclose(body["q_values"], q, rtol=1e-6)
    assert body["backend"] == "emulator"
    assert body["fallback"] is False
    t = body["timing"]
    assert t["ticks"] == 16
    assert 0 < t["compute_us"] <= t["server_us"]
    assert t["chip_time_s"] == pytest.approx(16e-3)  # 16 ticks of 1 ms (hw.mapping)
    assert t["energy_j"] > 0
    assert r.headers["x-request-id"]


def test_act_echoes_request_id_header_and_body_id(client):
    r = client.post(
        "/v1/act",
        json={"model": "acrobot", "observation": [0.1] * 6, "id": 42},
        headers={"X-Request-ID": "abc-123"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == 42
    assert len(r.json()["q_values"]) == 3


def test_fast_path_and_fastapi_route_give_the_same_answer(models_dir, client):
    body = {"model": "cartpole", "observation": OBS}
    fast = client.post("/v1/act", json=body).json()
    with TestClient(create_app(make_settings(models_dir, fast_path=False))) as slow_client:
        plain = slow_client.post("/v1/act", json=body).json()
        bad = slow_client.post("/v1/act", json={"model": "cartpole", "observation": [1.0]})
        batch = slow_client.post("/v1/act/batch", json={"model": "cartpole", "observations": [OBS]})
    assert plain["action"] == fast["action"]
    assert plain["q_values"] == fast["q_values"]
    assert bad.status_code == 422 and "expects 4" in bad.json()["error"]["message"]
    assert batch.json()["actions"] == [fast["action"]]


def test_batch_matches_single_requests_and_estimates_chip_cost(client):
    rng = np.random.default_rng(5)
    obs = (rng.normal(size=(40, 4)) * [1.0, 1.5, 0.15, 1.5]).tolist()
    r = client.post("/v1/act/batch", json={"model": "cartpole", "observations": obs})
    assert r.status_code == 200, r.text
    body = r.json()
    singles = [
        client.post("/v1/act", json={"model": "cartpole", "observation": o}).json() for o in obs
    ]
    assert body["actions"] == [s["action"] for s in singles]
    assert np.allclose(body["q_values"], [s["q_values"] for s in singles], rtol=1e-6)
    info = client.get("/v1/models/cartpole").json()["mapping"]
    runs = math.ceil(40 / info["copies_per_chip"])
    assert body["timing"]["batch_size"] == 40
    assert body["timing"]["chip_time_s"] == pytest.approx(runs * info["chip_time_s"])
    assert body["timing"]["energy_j"] > singles[0]["timing"]["energy_j"]


def test_batch_of_256_runs_in_a_worker_thread_and_agrees(models_dir):
    # inline_max_batch=0 sends every call through the thread pool
    obs = np.random.default_rng(1).normal(size=(256, 4)).tolist()
    with TestClient(create_app(make_settings(models_dir, inline_max_batch=0))) as c:
        threaded = c.post("/v1/act/batch", json={"model": "cartpole", "observations": obs})
    with TestClient(create_app(make_settings(models_dir, inline_max_batch=4096))) as c:
        inline = c.post("/v1/act/batch", json={"model": "cartpole", "observations": obs})
    assert threaded.status_code == inline.status_code == 200
    assert threaded.json()["actions"] == inline.json()["actions"]


def test_websocket_answers_and_stays_open_after_bad_messages(client):
    with client.websocket_connect("/v1/act/ws") as ws:
        ws.send_text(json.dumps({"model": "cartpole", "observation": OBS, "id": "a"}))
        first = json.loads(ws.receive_text())
        assert first["id"] == "a" and first["action"] in (0, 1)
        for bad, kind in [
            ("{not json", "malformed_json"),
            (json.dumps({"model": "cartpole", "observation": [1, 2]}), "validation_error"),
            (json.dumps({"model": "nope", "observation": OBS}), "unknown_model"),
            (json.dumps({"model": "cartpole", "observation": [1, 2, "x", 4]}), "validation_error"),
        ]:
            ws.send_text(bad)
            err = json.loads(ws.receive_text())["error"]
            assert err["kind"] == kind, err
            assert err["message"]
        # a binary frame holds msgpack and is answered in msgpack
        ws.send_bytes(msgpack.packb({"model": "cartpole", "observation": OBS}))
        again = msgpack.unpackb(ws.receive_bytes())
        assert again["action"] == first["action"]
        # the same float32 values (JSON writes their shortest repr, msgpack the exact one)
        np.testing.assert_array_equal(np.float32(again["q_values"]), np.float32(first["q_values"]))


def test_models_list_and_detail(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == {"cartpole", "acrobot"}
    acro = models["acrobot"]
    assert acro["env_id"] == "Acrobot-v1"
    assert acro["observation_size"] == 6 and acro["action_count"] == 3
    assert acro["weight_bits"] == 8 and acro["ticks"] == 16
    assert acro["mapping"]["pes_used"] >= 4 and acro["mapping"]["copies_per_chip"] >= 1
    assert acro["model_card"]["evaluation"]["emulator"]["mean"] == -80.5
    assert client.get("/v1/models/acrobot").json()["sha256"] == acro["sha256"]
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["kind"] == "unknown_model"


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["models"]["cartpole"] == {"primary": "warm"}
    client.post("/v1/act", json={"model": "cartpole", "observation": OBS})
    client.post("/v1/act", json={"model": "cartpole", "observation": [1.0]})
    text = client.get("/metrics").text
    assert 's2loop_request_seconds_count{model="cartpole",route="act"}' in text
    assert 's2loop_inferences_total{backend="emulator",model="cartpole"}' in text
    assert 's2loop_errors_total{kind="validation_error"}' in text
    assert 's2loop_queue_depth{role="primary"} 0.0' in text


def test_openapi_documents_bodies_with_examples(client):
    spec = client.get("/openapi.json").json()
    act = spec["paths"]["/v1/act"]["post"]
    media = act["requestBody"]["content"]["application/json"]
    assert media["example"]["model"] == "cartpole"
    assert set(media["schema"]["required"]) == {"model", "observation"}
    assert "429" in act["responses"] and "504" in act["responses"]
    assert "/v1/models/{name}/reload" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_readyz_is_503_without_models(tmp_path):
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "no models" in r.json()["reasons"][0]
        assert c.get("/healthz").status_code == 200


def test_a_corrupt_file_at_start_is_reported_and_the_rest_served(tmp_path):
    save_artifact(random_artifact(seed=1, name="cartpole"), tmp_path / "cartpole.s2l")
    (tmp_path / "broken.s2l").write_bytes(b"PK\x03\x04 truncated")
    with TestClient(create_app(make_settings(tmp_path))) as c:
        r = c.get("/readyz")
        assert r.status_code == 200
        assert "broken.s2l" in r.json()["load_errors"]
        assert c.post("/v1/act", json={"model": "cartpole", "observation": OBS}).status_code == 200


# ----------------------------------------------------------------------------- bad input

V = "validation_error"
BAD_ACT = [
    # (raw body, status, error kind, words the message must contain)
    (b'{"model": "cartpole", "observation": [1, 2, 3]}', 422, V, "expects 4"),
    (b'{"model": "cartpole", "observation": []}', 422, V, "observation"),
    (b'{"model": "cartpole", "observation": [NaN, 0, 0, 0]}', 422, V, "finite"),
    (b'{"model": "cartpole", "observation": [0, Infinity, 0, 0]}', 422, V, "finite"),
    (b'{"model": "cartpole", "observation": [0, 0, -Infinity, 0]}', 422, V, "finite"),
    (b'{"model": "cartpole", "observation": [0, 0, 0, 1e999]}', 422, V, "finite"),
    (b'{"model": "cartpole", "observation": [0, 0, 0, 1e39]}', 422, V, "float32"),
    (b'{"model": "cartpole", "observation": ["0.1", 0, 0, 0]}', 422, V, "observation[0]"),
    (b'{"model": "cartpole", "observation": [true, 0, 0, 0]}', 422, V, "valid number"),
    (b'{"model": "cartpole", "observation": [null, 0, 0, 0]}', 422, V, "valid number"),
    (b'{"model": "cartpole", "observation": [[0, 0, 0, 0]]}', 422, V, "observation[0]"),
    (b'{"model": "cartpole", "observation": "0,0,0,0"}', 422, V, "valid array"),
    (b'{"model": "cartpole", "observation": {"x": 1}}', 422, V, "valid array"),
    (b'{"model": "cartpole"}', 422, V, "observation: Field required"),
    (b'{"observation": [0, 0, 0, 0]}', 422, V, "model: Field required"),
    (b'{"model": 7, "observation": [0, 0, 0, 0]}', 422, V, "model: Input should be"),
    (b'{"model": "../etc/passwd", "observation": [0, 0, 0, 0]}', 422, V, "model"),
    (b'{"model": ".cartpole", "observation": [0, 0, 0, 0]}', 422, V, "model"),
    (b'{"model": "nope", "observation": [0, 0, 0, 0]}', 404, "unknown_model", "no model named"),
    (b"", 400, "malformed_json", "empty"),
    (b'{"model": "cartpole", "observation": [0, 0', 400, "malformed_json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", 400, "malformed_json", "not valid JSON"),
    (b"[0, 0, 0, 0]", 422, V, "object"),
    (b"null", 422, V, "object"),
]

BAD_BATCH = [
    # (raw body, status, error kind, words the message must contain)
    (b'{"model": "cartpole", "observations": [[0, 0, 0, 0], [0, 0]]}', 422, V, "observations[1]"),
    (b'{"model": "cartpole", "observations": []}', 422, V, "observations"),
    (b'{"model": "cartpole", "observations": [[0, 0, NaN, 0]]}', 422, V, "observations[0][2]"),
    (b'{"model": "cartpole", "observations": [0, 0, 0, 0]}', 422, V, "observations[0]"),
    (b'{"model": "cartpole", "observation": [0, 0, 0, 0]}', 422, V, "observations: Field required"),
    (b'{"model": "cartpole", "observations": [[0, 0, 0, 1e300]]}', 422, V, "float32"),
    (b'{"model": "acrobot", "observations": [[0, 0, 0, 0]]}', 422, V, "expects 6"),
]


@pytest.fixture(scope="module")
def counting_client(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "CountingBackend", fallback="none")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize(("body", "status", "kind", "words"), BAD_ACT)
def test_bad_act_body_is_a_clear_4xx_and_never_reaches_the_backend(
    counting_client, body, status, kind, words
):
    before = CountingBackend.calls
    r = counting_client.post("/v1/act", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["kind"] == kind, err
    assert words in err["message"], err["message"]
    assert CountingBackend.calls == before
    assert err["request_id"]
    assert CountingBackend.calls == before


@pytest.mark.parametrize(("body", "status", "kind", "words"), BAD_BATCH)
def test_bad_batch_body_is_a_clear_4xx(counting_client, body, status, kind, words):
    before = CountingBackend.calls
    r = counting_client.post("/v1/act/batch", content=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["kind"] == kind, err
    assert words in err["message"], err["message"]
    assert CountingBackend.calls == before
    assert CountingBackend.calls == before


def test_too_large_batch_and_bodies_are_refused(models_dir):
    settings = make_settings(models_dir, max_batch=8, max_body_bytes=2000)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/act/batch", json={"model": "cartpole", "observations": [OBS] * 9})
        assert r.status_code == 422 and "max_batch" in r.json()["error"]["message"]
        big = json.dumps({"model": "cartpole", "observation": [0.0] * 1000}).encode()
        r = c.post("/v1/act", content=big)
        assert r.status_code == 413
        assert r.json()["error"]["kind"] == "body_too_large"

        def chunks():  # no Content-Length: counted while read
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/act", content=chunks())
        assert r.status_code == 413
        with c.websocket_connect("/v1/act/ws") as ws:
            ws.send_text(big.decode())
            assert json.loads(ws.receive_text())["error"]["kind"] == "body_too_large"
        # and it still serves
        assert c.post("/v1/act", json={"model": "cartpole", "observation": OBS}).status_code == 200


def test_unknown_routes_and_methods_answer_in_the_error_format(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
    r = client.get("/v1/act")
    assert r.status_code == 405 and r.json()["error"]["kind"] == "method_not_allowed"


# ----------------------------------------------------------------------------- fallback


def test_failing_primary_falls_back_and_readyz_reports_degraded(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "FailingBackend", fallback="emulator")
    with TestClient(create_app(settings)) as c:
        ready = wait_ready(c, status="degraded")
        assert any("fallback serves" in reason for reason in ready["reasons"])
        r = c.post("/v1/act", json={"model": "cartpole", "observation": OBS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] is True and body["backend"] == "emulator"
        assert body["action"] == emulator_answer(models_dir, "cartpole", OBS)[0]
        assert 's2loop_fallbacks_total{model="cartpole"' in c.get("/metrics").text


def test_primary_error_after_the_breaker_expires_still_falls_back(models_dir, caplog):
    settings = make_settings(
        models_dir, backend=SPEC + "FailingBackend", fallback="emulator", primary_retry_s=0
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c, status="degraded")
        r = c.post(
            "/v1/act",
            json={"model": "cartpole", "observation": OBS},
            headers={"X-Request-ID": "rid-77"},
        )
        assert r.json()["fallback"] is True
        logged = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "rid-77"]
        assert logged and "board unreachable" in logged[0].error
        metrics = c.get("/metrics").text
        assert 's2loop_fallbacks_total{model="cartpole",reason="error"} 1.0' in metrics


def test_failing_primary_without_fallback_is_503(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "FailingBackend", fallback="none")
    with TestClient(create_app(settings)) as c:
        time.sleep(0.05)
        r = c.post("/v1/act", json={"model": "cartpole", "observation": OBS})
        assert r.status_code == 503
        assert "board unreachable" in r.json()["error"]["message"]
        assert c.get("/readyz").status_code == 503


def test_unstartable_primary_serves_from_fallback(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "UnstartableBackend")
    with TestClient(create_app(settings)) as c:
        ready = wait_ready(c, status="degraded")
        assert any("not installed" in reason for reason in ready["reasons"])
        r = c.post("/v1/act", json={"model": "cartpole", "observation": OBS})
        assert r.status_code == 200 and r.json()["fallback"] is True


def test_unstartable_primary_without_fallback_refuses_to_start(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "UnstartableBackend", fallback="none")
    with pytest.raises(RuntimeError, match="not installed"), TestClient(create_app(settings)):
        pass


def test_degraded_status_can_be_503(models_dir):
    settings = make_settings(models_dir, backend=SPEC + "UnstartableBackend", degraded_status=503)
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "degraded"


# ----------------------------------------------------------------------------- queue, deadline


@contextlib.asynccontextmanager
async def ready_client(app, timeout: float = 30.0):
    """An httpx client on ``app`` in this process (its lifespan running), once /readyz
    answers 200."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t", timeout=timeout) as client,
    ):
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.02)
        yield client


@pytest.fixture
def gated():
    """The GatedBackend's gate, open again (and its calls finished) after the test."""
    GatedBackend.gate.set()
    yield GatedBackend
    GatedBackend.gate.set()


async def _posts_while_busy(app, bodies, early, stagger_s=0.02):
    """Send ``bodies`` concurrently to ``app`` (a GatedBackend primary) with the gate
    closed; wait (up to 10 s) until ``early`` of them are answered, then open the gate
    and collect the rest. Returns ((status, json, headers) per body, the indices
    answered while the backend was still held)."""
    async with ready_client(app) as client:
        GatedBackend.gate.clear()

        async def one(i, body):
            await asyncio.sleep(i * stagger_s)
            r = await client.post("/v1/act", json=body)
            return r.status_code, r.json(), r.headers

        tasks = [asyncio.ensure_future(one(i, b)) for i, b in enumerate(bodies)]
        try:
            for done in asyncio.as_completed(tasks, timeout=10):
                await done
                if sum(t.done() for t in tasks) >= early:
                    break
            while_held = {i for i, t in enumerate(tasks) if t.done()}
        finally:
            GatedBackend.gate.set()
        return await asyncio.gather(*tasks), while_held


def test_full_queue_answers_429_with_retry_after_at_once(models_dir, gated):
    settings = make_settings(
        models_dir, backend=SPEC + "GatedBackend", fallback="none", queue_size=1, deadline_ms=5000
    )
    bodies = [{"model": "cartpole", "observation": [float(i), 0.0, 0.0, 0.0]} for i in range(4)]
    out, while_held = asyncio.run(_posts_while_busy(create_app(settings), bodies, early=2))
    statuses = [o[0] for o in out]
    assert statuses == [200, 200, 429, 429], statuses
    assert while_held == {2, 3}  # refused at once, not after the busy backend
    for status, body, headers in out:
        if status == 429:
            assert body["error"]["kind"] == "queue_full"
            assert int(headers["retry-after"]) >= 1
        else:  # each answer belongs to its own request
            assert body["q_values"][0] in (0.0, 1.0)
    assert out[0][1]["q_values"][0] == 0.0 and out[1][1]["q_values"][0] == 1.0


def test_deadline_gives_504_and_never_a_stale_answer(models_dir, gated):
    settings = make_settings(
        models_dir, backend=SPEC + "GatedBackend", fallback="none", deadline_ms=100
    )
    app = create_app(settings)
    late = [{"model": "cartpole", "observation": [float(i), 0.0, 0.0, 0.0]} for i in (1, 2)]
    first, while_held = asyncio.run(_posts_while_busy(app, late, early=2, stagger_s=0.0))
    assert while_held == {0, 1}  # at the deadline, while the backend still held them
    for status, body, _headers in first:
        assert status == 504, body
        assert body["error"]["kind"] == "deadline"

    async def after():  # the held calls finish now; the next answer must be its own
        body = {"model": "cartpole", "observation": [7.0, 0.0, 0.0, 0.0]}
        async with ready_client(app) as client:
            for _ in range(100):  # a 504 while the stale calls drain is no answer at all
                r = await client.post("/v1/act", json=body)
                if r.status_code != 504:
                    return r
                await asyncio.sleep(0.02)
            return r

    r = asyncio.run(after())
    assert r.status_code == 200 and r.json()["q_values"][0] == 7.0  # its own, not a stale one


def test_slow_primary_times_out_to_the_fallback(models_dir, gated):
    settings = make_settings(
        models_dir, backend=SPEC + "GatedBackend", deadline_ms=2000, primary_timeout_ms=50
    )
    app = create_app(settings)
    body = {"model": "cartpole", "observation": OBS}
    out, while_held = asyncio.run(_posts_while_busy(app, [body], early=1))
    status, answer, _h = out[0]
    assert status == 200 and answer["fallback"] is True and answer["backend"] == "emulator"
    assert while_held == {0}  # the fallback answered while the primary was still held
    assert 'reason="timeout"' in app.state.metrics.render().decode()


# ----------------------------------------------------------------------------- reload


def test_reload_is_off_without_a_token(client):
    r = client.post("/v1/models/cartpole/reload")
    assert r.status_code == 403 and r.json()["error"]["kind"] == "reload_disabled"


def test_reload_swaps_a_good_artifact_and_keeps_the_old_one_on_a_bad_one(tmp_path):
    path = tmp_path / "cartpole.s2l"
    save_artifact(random_artifact(seed=1, name="cartpole"), path)
    auth = {"Authorization": "Bearer s3cret"}
    body = {"model": "cartpole", "observation": OBS}
    with TestClient(create_app(make_settings(tmp_path, reload_token="s3cret"))) as c:
        before = c.post("/v1/act", json=body).json()
        sha_before = c.get("/v1/models/cartpole").json()["sha256"]
        assert c.post("/v1/models/cartpole/reload").status_code == 401
        wrong = c.post("/v1/models/cartpole/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

        save_artifact(random_artifact(seed=9, name="cartpole"), path)
        r = c.post("/v1/models/cartpole/reload", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["previous_sha256"] == sha_before
        sha_new = r.json()["sha256"]
        assert sha_new != sha_before
        after = c.post("/v1/act", json=body).json()
        assert after["q_values"] != before["q_values"]
        assert c.get("/v1/models/cartpole").json()["sha256"] == sha_new

        good_bytes = path.read_bytes()
        path.write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated
        r = c.post("/v1/models/cartpole/reload", headers=auth)
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["kind"] == "bad_artifact" and "previous model keeps serving" in err["message"]
        assert c.post("/v1/act", json=body).json()["q_values"] == after["q_values"]
        assert c.get("/v1/models/cartpole").json()["sha256"] == sha_new

        save_artifact(random_artifact(seed=3, name="other"), path)  # wrong name inside
        r = c.post("/v1/models/cartpole/reload", headers=auth)
        assert r.status_code == 422 and "'other'" in r.json()["error"]["message"]
        assert c.post("/v1/models/nope/reload", headers=auth).status_code == 404
        assert c.post("/v1/models/..%2Fx/reload", headers=auth).status_code == 404
        assert c.get("/readyz").status_code == 200
        assert 's2loop_reloads_total{outcome="bad_artifact"} 2.0' in c.get("/metrics").text


def test_reload_adds_a_new_model_from_the_folder(tmp_path):
    save_artifact(random_artifact(seed=1, name="cartpole"), tmp_path / "cartpole.s2l")
    with TestClient(create_app(make_settings(tmp_path, reload_token="t"))) as c:
        save_artifact(random_artifact(seed=4, name="fresh"), tmp_path / "fresh.s2l")
        r = c.post("/v1/models/fresh/reload", headers={"Authorization": "Bearer t"})
        assert r.status_code == 200 and r.json()["previous_sha256"] is None
        r = c.post("/v1/act", json={"model": "fresh", "observation": OBS})
        assert r.status_code == 200


# ----------------------------------------------------------------------------- misc


def test_inference_does_not_hold_the_event_loop_during_slow_calls(models_dir, gated):
    """While a board-like call is held in its thread, /healthz answers."""
    settings = make_settings(models_dir, backend=SPEC + "GatedBackend", fallback="none")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        gated.gate.clear()
        gated.entered.clear()
        done = threading.Event()

        def held():
            c.post("/v1/act", json={"model": "cartpole", "observation": OBS})
            done.set()

        worker = threading.Thread(target=held)
        worker.start()
        try:
            assert gated.entered.wait(10), "the call never reached the backend"
            assert c.get("/healthz").status_code == 200
            assert not done.is_set()  # answered while the inference was still held
        finally:
            gated.gate.set()
            worker.join(10)
        assert done.is_set()


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("S2LOOP_BACKEND", "spinnaker2")
    monkeypatch.setenv("S2LOOP_MODELS", str(tmp_path))
    monkeypatch.setenv("S2LOOP_PORT", "9001")
    monkeypatch.setenv("S2LOOP_HOST", "0.0.0.0")
    monkeypatch.setenv("S2LOOP_BOARD_ETH_IP", "192.168.1.17")
    monkeypatch.setenv("S2LOOP_SYS_TICK_IN_S", "0.002")
    s = Settings()
    assert (s.backend, s.models, s.port, s.host) == ("spinnaker2", tmp_path, 9001, "0.0.0.0")
    assert s.backend_kwargs() == {"eth_ip": "192.168.1.17", "sys_tick_in_s": 0.002}
    assert s.has_fallback and s.primary_timeout_s == pytest.approx(0.8)
    assert Settings(backend="reference").backend_spec() == "agent.reference:ReferenceBackend"
    with pytest.raises(ValueError):
        Settings(fallback="board")


def test_serve_cli_imports_nothing_heavy_and_service_never_imports_torch():
    code = (
        "import sys, service.cli; heavy = {'fastapi', 'numpy', 'torch'} & set(sys.modules);"
        "assert not heavy, heavy;"
        "import service.app; assert 'torch' not in sys.modules; assert 'gymnasium' not in "
        "sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_serve_help_lists_the_contract_options():
    from typer.testing import CliRunner

    from s2loop.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for option in ("--models", "--backend", "--fallback", "--host", "--port", "--workers"):
        assert option in out.output


def test_json_logs_carry_the_request_id():
    import logging

    record = logging.LogRecord("s2loop.service", logging.WARNING, "x", 1, "fallback", None, None)
    record.request_id = "abc-1"
    record.model = "cartpole"
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc-1" and line["model"] == "cartpole"
    assert line["level"] == "warning" and line["msg"] == "fallback"


# ----------------------------------------------------------------------------- seeds


@pytest.fixture(scope="module")
def poisson_dir(tmp_path_factory) -> Path:
    from hw.artifact import Encoder

    d = tmp_path_factory.mktemp("poisson")
    enc = Encoder(kind="poisson", channels="tent", bins=5, input_ticks=13)
    save_artifact(random_artifact(seed=4, name="rate", encoder=enc), d / "rate.s2l")
    save_artifact(random_artifact(seed=5, name="det"), d / "det.s2l")
    return d


def test_poisson_model_draws_fresh_spikes_per_request_and_reports_the_seed(poisson_dir):
    obs = [0.3, -0.4, 0.05, 0.6]
    with TestClient(create_app(make_settings(poisson_dir))) as client:
        answers = [client.post("/v1/act", json={"model": "rate", "observation": obs}).json()
                   for _ in range(8)]  # fmt: skip
        seeds = [a["seed"] for a in answers]
        assert len(set(seeds)) == 8 and all(0 <= s < 2**53 for s in seeds)
        assert len({tuple(a["q_values"]) for a in answers}) > 1  # not one fixed draw
        # the reported seed reproduces the answer, over HTTP, in a batch and over WebSocket
        again = client.post(
            "/v1/act", json={"model": "rate", "observation": obs, "seed": seeds[3]}
        ).json()
        assert again["seed"] == seeds[3] and again["q_values"] == answers[3]["q_values"]
        batch = client.post(
            "/v1/act/batch",
            json={"model": "rate", "observations": [obs, obs], "seeds": seeds[2:4]},
        ).json()
        assert batch["seeds"] == seeds[2:4]
        assert batch["q_values"] == [answers[2]["q_values"], answers[3]["q_values"]]
        fresh = client.post("/v1/act/batch", json={"model": "rate", "observations": [obs] * 3})
        assert len(set(fresh.json()["seeds"])) == 3
        with client.websocket_connect("/v1/act/ws") as ws:
            ws.send_text(json.dumps({"model": "rate", "observation": obs, "seed": seeds[5]}))
            assert json.loads(ws.receive_text())["q_values"] == answers[5]["q_values"]


@pytest.mark.parametrize(
    "body,where",
    [
        ({"model": "rate", "observation": OBS, "seed": -1}, "seed"),
        ({"model": "rate", "observation": OBS, "seed": 2**53}, "seed"),
        ({"model": "rate", "observation": OBS, "seed": True}, "seed"),
        ({"model": "rate", "observation": OBS, "seed": 1.5}, "seed"),
        ({"model": "rate", "observation": OBS, "seed": "7"}, "seed"),
    ],
)
def test_bad_seed_is_a_422_naming_it(poisson_dir, body, where):
    with TestClient(create_app(make_settings(poisson_dir))) as client:
        r = client.post("/v1/act", json=body)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(where)


def test_batch_seeds_must_match_the_observations(poisson_dir):
    with TestClient(create_app(make_settings(poisson_dir))) as client:
        r = client.post(
            "/v1/act/batch", json={"model": "rate", "observations": [OBS, OBS], "seeds": [1]}
        )
        assert r.status_code == 422
        assert "seeds has 1 values for 2 observations" in r.json()["error"]["message"]
        det = client.post("/v1/act", json={"model": "det", "observation": OBS, "seed": 3})
        assert det.status_code == 200 and "seed" not in det.json()


def test_loop_histogram_renders_what_prometheus_own_histogram_renders():
    """The lock-free request/backend histograms must expose the same series as
    prometheus_client's Histogram would for the same observations."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from service.metrics import LATENCY_BUCKETS, LoopHistogram

    values = [0.0, 25e-6, 26e-6, 1e-3, 0.3, 10.0, 11.0]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x_seconds", "doc", ("model",), LATENCY_BUCKETS, ours)
    ref = Histogram("x_seconds", "doc", ("model",), buckets=LATENCY_BUCKETS, registry=theirs)
    for v in values:
        loop.child("m").observe(v)
        ref.labels("m").observe(v)

    def samples(registry):
        lines = generate_latest(registry).decode().splitlines()
        return sorted(
            line for line in lines if line.startswith("x_seconds_") and "created" not in line
        )

    assert samples(ours) == samples(theirs)
    assert 'x_seconds_bucket{le="2.5e-05",model="m"} 2.0' in samples(ours)
