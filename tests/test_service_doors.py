"""One front door: every way into the server (the plain-ASGI fast path, the FastAPI
routes, the WebSocket) gives the same answers and the same errors; deadlines run from
arrival on every transport; overflow goes to the fallback before it is refused."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from fastapi.testclient import TestClient
from starlette.middleware.base import BaseHTTPMiddleware

from hw.backend import create_backend
from service.app import create_app
from service.settings import Settings
from tests.test_service import (
    BAD_ACT,
    OBS,
    SPEC,
    SlowBackend,
    make_settings,
    ready_client,
    wait_ready,
)

DOORS = ("fast_path", "fastapi_route", "websocket")


@pytest.fixture(scope="module")
def doors(models_dir):
    """One client per door: the fast path on, the fast path off (FastAPI routes)."""
    with (
        TestClient(create_app(make_settings(models_dir))) as fast,
        TestClient(create_app(make_settings(models_dir, fast_path=False))) as routed,
    ):
        yield {"fast_path": fast, "fastapi_route": routed, "websocket": fast}


def _ask(doors, door: str, body: bytes) -> tuple[int, dict]:
    """(status, answer) for a raw /v1/act body through ``door``."""
    client = doors[door]
    if door == "websocket":
        try:
            text = body.decode()
        except UnicodeDecodeError:
            pytest.skip("a text frame is UTF-8 by definition")
        with client.websocket_connect("/v1/act/ws") as ws:
            ws.send_text(text)
            answer = json.loads(ws.receive_text())
        return answer["error"]["status"] if "error" in answer else 200, answer
    r = client.post("/v1/act", content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json()


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(("body", "status", "kind", "words"), BAD_ACT)
def test_every_door_gives_the_same_error_for_a_bad_body(doors, door, body, status, kind, words):
    got, answer = _ask(doors, door, body)
    assert got == status, answer
    err = answer["error"]
    assert err["kind"] == kind, err
    assert words in err["message"] and err["request_id"]


def test_every_door_gives_the_same_answer(doors):
    body = json.dumps({"model": "cartpole", "observation": OBS, "id": 7}).encode()
    answers = [_ask(doors, door, body)[1] for door in DOORS]
    for a in answers:
        assert (a["action"], a["q_values"], a["id"]) == (
            answers[0]["action"],
            answers[0]["q_values"],
            7,
        )


def test_middleware_a_user_adds_sees_the_inference_routes(models_dir):
    seen = []

    async def record(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    app = create_app(make_settings(models_dir))
    app.add_middleware(BaseHTTPMiddleware, dispatch=record)
    assert app.fast_routes == {}  # the fast path gave way to the normal stack
    with TestClient(app) as c:
        assert c.post("/v1/act", json={"model": "cartpole", "observation": OBS}).status_code == 200
    assert "/v1/act" in seen


def test_backends_refuse_options_they_do_not_take():
    with pytest.raises(ValueError, match="does not take option.*eth_ip.*threshold_comparison"):
        create_backend("emulator", eth_ip="10.0.0.1")


def test_serve_options_are_every_setting_with_its_description():
    from typer.testing import CliRunner

    from s2loop.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for name, field in Settings.model_fields.items():
        assert "--" + name.replace("_", "-") in out.output, name
        assert field.description, f"setting {name} has no description"
    bad = CliRunner().invoke(app, ["serve", "--queue-size", "-1"])
    assert bad.exit_code == 2 and "queue-size" in bad.output


# ----------------------------------------------------------------------------- deadlines


async def _with_app(app, fn):
    async with ready_client(app) as client:
        return await fn(client)


def test_no_http_or_batch_answer_carries_an_action_after_its_deadline(models_dir, monkeypatch):
    monkeypatch.setattr(SlowBackend, "delay", 0.12)
    deadline_ms = 300
    settings = make_settings(
        models_dir, backend=SPEC + "SlowBackend", fallback="none", deadline_ms=deadline_ms
    )

    async def scenario(client):
        async def one(route: str, body: dict):
            t = time.perf_counter()
            r = await client.post(route, json=body)
            return r.status_code, r.json(), time.perf_counter() - t

        jobs = [one("/v1/act", {"model": "cartpole", "observation": OBS}) for _ in range(5)]
        rows = [[0.0, 0.0, 0.0, 0.0]] * 3
        jobs += [
            one("/v1/act/batch", {"model": "cartpole", "observations": rows}) for _ in range(4)
        ]
        return await asyncio.gather(*jobs)

    out = asyncio.run(_with_app(create_app(settings), scenario))
    statuses = [status for status, _, _ in out]
    # 9 calls of >= 120 ms each, one at a time: they cannot all end within 300 ms
    assert 504 in statuses, statuses
    for status, body, _seconds in out:
        if status == 200:
            # made in time by the server's own clock (from arrival); how long the client
            # waited is scheduling of this process, not the server's contract
            assert body["timing"]["server_us"] / 1e3 <= deadline_ms + 30, body
        else:
            assert status == 504 and body["error"]["kind"] == "deadline"


def test_pipelined_websocket_messages_keep_their_deadline_from_arrival(models_dir, monkeypatch):
    """6 messages sent back to back to a 200 ms backend with a 300 ms deadline: each
    message's deadline runs from when it arrived, so the late ones get the 504 error
    instead of an action long after they were sent."""
    monkeypatch.setattr(SlowBackend, "delay", 0.2)
    settings = make_settings(
        models_dir, backend=SPEC + "SlowBackend", fallback="none", deadline_ms=300
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        with c.websocket_connect("/v1/act/ws") as ws:
            for i in range(6):
                ws.send_text(json.dumps({"model": "cartpole", "observation": OBS, "id": i}))
            answers = [json.loads(ws.receive_text()) for _ in range(6)]
    ok = [a for a in answers if "error" not in a]
    late = [a for a in answers if "error" in a]
    assert late, answers  # 6 calls of >= 200 ms one at a time cannot all end in 300 ms
    for a in answers:
        if "error" not in a:  # in time by the server's clock, from the message's arrival
            assert a["timing"]["server_us"] / 1e3 <= 300 + 30, a
        else:
            assert a["error"]["status"] == 504 and a["error"]["kind"] == "deadline"
    # in order: every answer is for the next message (ids echoed on successes only)
    assert [a["id"] for a in ok] == sorted(a["id"] for a in ok)


# ----------------------------------------------------------------------------- overflow


def test_a_full_primary_queue_overflows_to_the_fallback_not_429(models_dir, monkeypatch):
    monkeypatch.setattr(SlowBackend, "delay", 0.2)
    settings = make_settings(
        models_dir, backend=SPEC + "SlowBackend", queue_size=0, deadline_ms=2000
    )
    app = create_app(settings)

    async def scenario(client):
        body = {"model": "cartpole", "observation": OBS}
        return await asyncio.gather(*(client.post("/v1/act", json=body) for _ in range(8)))

    out = asyncio.run(_with_app(app, scenario))
    assert [r.status_code for r in out] == [200] * 8
    fallbacks = [r.json()["fallback"] for r in out]
    assert fallbacks.count(False) == 1 and fallbacks.count(True) == 7
    assert 'reason="overflow"' in app.state.metrics.render().decode()


def test_retry_after_comes_from_the_measured_call_time(models_dir, monkeypatch):
    """No fallback, a busy 0.5 s backend: the 429 says when to retry from the measured
    time of a call (a call sleeps at least 0.5 s, and the guess before any measurement
    is 50 ms), in the header (whole seconds) and the body (ms)."""
    monkeypatch.setattr(SlowBackend, "delay", 0.5)
    settings = make_settings(
        models_dir, backend=SPEC + "SlowBackend", fallback="none", queue_size=1, deadline_ms=9000
    )

    async def scenario(client):
        body = {"model": "cartpole", "observation": OBS}
        await client.post("/v1/act", json=body)  # one call measured
        busy = [asyncio.ensure_future(client.post("/v1/act", json=body)) for _ in range(2)]
        await asyncio.sleep(0.2)  # both in the lane: one running, one queued
        refused = await client.post("/v1/act", json=body)
        await asyncio.gather(*busy)
        return refused

    refused = asyncio.run(_with_app(create_app(settings), scenario))
    assert refused.status_code == 429
    said = refused.json()["error"]["retry_after_ms"] / 1e3
    assert said >= SlowBackend.delay, said
    assert int(refused.headers["retry-after"]) == math.ceil(said)


# ----------------------------------------------------------------------------- msgpack

V = "validation_error"
BAD_MSGPACK = [
    # (request map or raw bytes, status, kind, words in the message)
    ({"model": "cartpole", "observation": [1.0, 2.0]}, 422, V, "expects 4"),
    ({"model": "cartpole", "observation": ["0", 0, 0, 0]}, 422, V, "observation[0]"),
    ({"model": "cartpole", "observation": [True, 0, 0, 0]}, 422, V, "observation[0]"),
    ({"model": "cartpole", "observation": [float("nan"), 0, 0, 0]}, 422, V, "finite"),
    ({"model": "cartpole", "observation": [0, 0, 0, 1e39]}, 422, V, "float32"),
    ({"observation": [0, 0, 0, 0]}, 422, V, "model: Field required"),
    ({"model": "nope", "observation": [0, 0, 0, 0]}, 404, "unknown_model", "no model named"),
    (
        {"model": "cartpole", "observation": {"__ndarray__": True, "data": b"\x00" * 12,
                                              "dtype": "<f4", "shape": [4]}},
        400, "malformed_json", "shape",
    ),
    (
        {"model": "cartpole", "observation": {"__ndarray__": True, "data": b"\x00" * 16,
                                              "dtype": "O", "shape": [4]}},
        400, "malformed_json", "dtype",
    ),
    (b"\xc1\xc1garbage", 400, "malformed_json", "msgpack"),
    (b"", 400, "malformed_json", "empty"),
]  # fmt: skip


def _packed(body) -> bytes:
    import msgpack

    return body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("door", ("http", "websocket"))
@pytest.mark.parametrize(("body", "status", "kind", "words"), BAD_MSGPACK)
def test_msgpack_bodies_get_the_same_errors_in_msgpack(doors, door, body, status, kind, words):
    import msgpack

    client = doors["fast_path"]
    if door == "websocket":
        with client.websocket_connect("/v1/act/ws") as ws:
            ws.send_bytes(_packed(body))
            answer = msgpack.unpackb(ws.receive_bytes())
        got = answer["error"]["status"]
    else:
        r = client.post(
            "/v1/act", content=_packed(body), headers={"content-type": "application/msgpack"}
        )
        assert r.headers["content-type"] == "application/msgpack"
        got, answer = r.status_code, msgpack.unpackb(r.content)
    assert got == status, answer
    assert answer["error"]["kind"] == kind, answer
    assert words in answer["error"]["message"], answer


def test_msgpack_with_a_numpy_array_gets_the_json_answer_in_msgpack(doors):
    import msgpack
    import numpy as np

    from s2loop_client.codec import pack

    obs = np.asarray(OBS, np.float32)
    client = doors["fast_path"]
    as_json = client.post("/v1/act", json={"model": "cartpole", "observation": obs.tolist()})
    for routed in ("fast_path", "fastapi_route"):
        r = doors[routed].post(
            "/v1/act",
            content=pack({"model": "cartpole", "observation": obs}),
            headers={"content-type": "application/msgpack"},
        )
        answer = msgpack.unpackb(r.content)
        assert r.status_code == 200 and answer["action"] == as_json.json()["action"]
        # plain lists, the same float32 values (JSON: shortest repr, msgpack: exact)
        assert (
            np.float32(answer["q_values"]).tolist()
            == np.float32(as_json.json()["q_values"]).tolist()
        )
    batch = client.post(
        "/v1/act/batch",
        content=pack({"model": "cartpole", "observations": np.stack([obs, obs])}),
        headers={"content-type": "application/msgpack"},
    )
    assert msgpack.unpackb(batch.content)["actions"] == [as_json.json()["action"]] * 2


def test_pipelined_tcp_frames_keep_their_deadline_from_arrival(models_dir, monkeypatch):
    """The TCP door: frames sent back to back to a slow backend are answered in order,
    the late ones with the 504 error frame; a fast backend answers without a wait."""
    import socket

    import msgpack

    from s2loop_client import framing

    monkeypatch.setattr(SlowBackend, "delay", 0.2)
    settings = make_settings(
        models_dir,
        backend=SPEC + "SlowBackend",
        fallback="none",
        deadline_ms=300,
        tcp_bind="127.0.0.1:0",
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        port = c.app.state.tcp.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for i in range(6):
                frame = msgpack.packb({"model": "cartpole", "observation": OBS, "id": i})
                s.sendall(framing.frame(frame))
            buffer = bytearray()
            answers = [msgpack.unpackb(framing.read_frame(s, buffer)) for _ in range(6)]
    ok = [a for a in answers if "error" not in a]
    assert len(ok) < 6, answers  # 6 calls of >= 200 ms one at a time cannot all end in 300 ms
    for a in answers:
        if "error" in a:
            assert a["error"]["status"] == 504 and a["error"]["kind"] == "deadline"
        else:  # in time by the server's clock, from the frame's arrival
            assert a["timing"]["server_us"] / 1e3 <= 300 + 30, a
    assert [a["id"] for a in ok] == sorted(a["id"] for a in ok)
