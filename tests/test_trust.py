"""Trust (issue 19): keys that fail closed, every msgpack type at every door answered
4xx with its kind (never 500), a TCP door that sheds hostile connections within its
timeouts and counts them, and TLS on the TCP door whenever the server has a
certificate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading

import msgpack
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from s2loop_client import (
    AsyncPolicyClient,
    ConnectionFailed,
    PolicyClient,
    Unauthorized,
    Unavailable,
    framing,
)
from service.app import create_app
from service.settings import Settings
from tests.test_service import OBS, make_settings, wait_ready

KEY = "k-19"

# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("value", [",", " , ", ",,,", "   "])
def test_a_key_setting_with_no_usable_key_is_an_error_naming_it(value, monkeypatch):
    with pytest.raises(ValidationError, match="S2LOOP_API_KEYS holds no usable key"):
        Settings(api_keys=value)
    monkeypatch.setenv("S2LOOP_API_KEYS", value)  # what "$A,$B" becomes, both unset
    with pytest.raises(ValidationError, match="S2LOOP_API_KEYS"):
        Settings()
    with pytest.raises(ValidationError, match="S2LOOP_RELOAD_TOKEN holds no usable key"):
        Settings(reload_token="  ")


def test_empty_keys_mean_unset_and_blank_entries_are_skipped():
    assert Settings(api_keys="").keys() == []  # ${KEYS:-} in a compose file: open, as unset
    assert Settings(api_keys="a, ,b,").keys() == [b"a", b"b"]


def test_serve_refuses_a_key_setting_with_no_key_in_one_line(models_dir):
    from typer.testing import CliRunner

    from s2loop.cli import app

    out = CliRunner().invoke(app, ["serve", "--models", str(models_dir), "--api-keys", ","])
    assert out.exit_code == 2 and "S2LOOP_API_KEYS holds no usable key" in out.output


def test_the_startup_log_says_which_doors_need_keys(models_dir, caplog):
    caplog.set_level(logging.INFO, logger="s2loop.service")
    for keys, required, open_ in ((KEY, ["http", "ws", "tcp"], []), (None, [], ["http", "ws"])):
        bind = "127.0.0.1:0" if keys else None
        with TestClient(create_app(make_settings(models_dir, api_keys=keys, tcp_bind=bind))):
            pass
        record = [r for r in caplog.records if r.getMessage().startswith("API ")][-1]
        assert (record.keys_required, record.open) == (required, open_)


# ----------------------------------------------------------------------------- every type

EVERY_TYPE = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("inf"), "text", b"bytes", [],
    [1, 2, 3], {}, {"nested": {"map": [1]}}, msgpack.ExtType(5, b"x"),
    msgpack.Timestamp(0, 0),
]  # fmt: skip
RAW = [
    b"\xc1",
    b"\x93\x01",
    b"\xdd\xff\xff\xff\xff",
    b"\x81\x01\x02",
]  # unused, short, huge, int key
KIND = {400: "malformed_json", 404: "unknown_model", 422: "validation_error"}


def _bodies() -> list[bytes]:
    out = list(RAW)
    for value in EVERY_TYPE:
        out.append(msgpack.packb(value, use_bin_type=True))  # the whole body
        for field in ("model", "observation"):  # each field of a request
            body = {"model": "cartpole", "observation": OBS, field: value}
            out.append(msgpack.packb(body, use_bin_type=True))
    return out


BODIES = _bodies()


def _tcp_frames(port: int, bodies: list[bytes], hello: bytes | None = None) -> list[dict]:
    """Every body as one frame on one connection, pipelined; their answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if hello is not None:
            s.sendall(framing.frame(hello))
        s.sendall(b"".join(framing.frame(b) for b in bodies))
        buf, answers = bytearray(), []
        if hello is not None:
            assert msgpack.unpackb(framing.read_frame(s, buf)) == {"hello": "ok"}
        for _ in bodies:
            answers.append(msgpack.unpackb(framing.read_frame(s, buf)))
    return answers


def _check(status: int, answer: dict, where: str) -> None:
    if status == 200:
        assert "error" not in answer, (where, answer)
        return
    assert status in KIND, (where, status, answer)
    assert answer["error"]["kind"] == KIND[status], (where, answer)


def test_every_msgpack_type_at_every_door_is_a_4xx_with_its_kind_never_500(models_dir):
    settings = make_settings(models_dir, tcp_bind="127.0.0.1:0")
    routed = make_settings(models_dir, fast_path=False)
    with TestClient(create_app(settings)) as fast, TestClient(create_app(routed)) as slow:
        wait_ready(fast)
        seen = {}
        tcp = _tcp_frames(fast.app.state.tcp.port, BODIES)
        with fast.websocket_connect("/v1/act/ws") as ws:
            for i, body in enumerate(BODIES):
                headers = {"content-type": "application/msgpack"}
                statuses = []
                for door, client in (("fast_path", fast), ("fastapi_route", slow)):
                    r = client.post("/v1/act", content=body, headers=headers)
                    _check(r.status_code, msgpack.unpackb(r.content), f"{door} {body!r}")
                    statuses.append(r.status_code)
                ws.send_bytes(body)
                answer = msgpack.unpackb(ws.receive_bytes())
                statuses.append(framing.status_of(answer))
                _check(statuses[-1], answer, f"ws {body!r}")
                statuses.append(framing.status_of(tcp[i]))
                _check(statuses[-1], tcp[i], f"tcp {body!r}")
                assert len(set(statuses)) == 1, (body, statuses)  # the same at every door
                seen[statuses[0]] = seen.get(statuses[0], 0) + 1
        text = fast.get("/metrics").text
    assert 'kind="internal"' not in text
    assert set(seen) == {400, 404, 422}, seen  # the list reaches each kind of refusal


def test_every_msgpack_type_as_the_hello_is_a_401_then_a_close(models_dir):
    with _tcp_server(models_dir, api_keys=KEY) as (c, app):
        for body in [*RAW, *(msgpack.packb(v) for v in EVERY_TYPE), msgpack.packb({"hello": 1})]:
            with socket.create_connection(("127.0.0.1", app.state.tcp.port), timeout=10) as s:
                s.sendall(framing.frame(body))
                answer = msgpack.unpackb(framing.read_frame(s, bytearray()))
                assert answer["error"]["status"] == 401, (body, answer)
                assert answer["error"]["kind"] == "unauthorized"
                assert s.recv(1) == b""
        text = c.get("/metrics").text
    assert 's2loop_tcp_closed_total{reason="unauthorized"} 22.0' in text


# ----------------------------------------------------------------------------- hostile TCP


@contextlib.contextmanager
def _tcp_server(models_dir, **settings):
    """The app with its TCP door on a free port, ready: ``(test client, app)``."""
    app = create_app(make_settings(models_dir, tcp_bind="127.0.0.1:0", **settings))
    with TestClient(app) as c:
        wait_ready(c)
        yield c, app


def _metric(text: str, reason: str) -> float:
    prefix = f's2loop_tcp_closed_total{{reason="{reason}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def _closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset), reading what comes first."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _act_frame() -> bytes:
    return framing.frame(msgpack.packb({"model": "cartpole", "observation": OBS}))


def test_hostile_tcp_connections_are_closed_and_counted(models_dir):
    """Silent, half a hello, half a frame, idle after an answer, past the connection cap:
    each closed by its timeout (sockets wait at most 10 s, far past the 0.3-0.6 s
    timeouts) and counted; a new client is still served."""
    settings = dict(
        api_keys=KEY, tcp_hello_timeout_s=0.3, tcp_idle_timeout_s=0.6, tcp_read_timeout_s=0.3,
        tcp_max_connections=5,
    )  # fmt: skip
    hello = framing.frame(msgpack.packb({"hello": {"api_key": KEY}}))
    with _tcp_server(models_dir, **settings) as (c, app):
        port = app.state.tcp.port

        def connect() -> socket.socket:
            return socket.create_connection(("127.0.0.1", port), timeout=10)

        silent = connect()
        half_hello = connect()
        half_hello.sendall(hello[:5])
        half_frame = connect()
        half_frame.sendall(hello + _act_frame()[:7])
        idle = connect()
        idle.sendall(hello + _act_frame())
        full = connect()  # the 5th: at the cap, still taken
        full.sendall(hello)
        refused = connect()  # the 6th: refused with a frame
        answer = msgpack.unpackb(framing.read_frame(refused, bytearray()))
        assert answer["error"]["status"] == 503
        assert answer["error"]["kind"] == "too_many_connections"
        assert answer["error"]["retry_after_ms"] == 1000
        for s in (refused, silent, half_hello, half_frame, idle):
            assert _closed(s)
            s.close()
        with PolicyClient(f"tcp://127.0.0.1:{port}", "cartpole", transport="tcp", api_key=KEY) as p:
            assert p.act(OBS).action in (0, 1)  # a new client is served
        text = c.get("/metrics").text
        full.close()
    assert _metric(text, "too_many_connections") == 1
    assert _metric(text, "hello_timeout") == 2  # silent, half a hello
    assert _metric(text, "read_timeout") == 1
    assert _metric(text, "idle_timeout") >= 1  # idle (and "full", if it idled out too)
    assert "s2loop_tcp_connections " in text


def test_a_client_that_reads_no_answers_is_closed_and_counted(models_dir):
    """Batches pipelined and no answer read: once the kernel's buffers and the
    transport's are full the server stops reading the client's frames, and closes it
    after tcp_read_timeout_s (it would otherwise buffer answers without end)."""
    import numpy as np

    from s2loop_client.codec import pack

    rows = np.tile(np.float32(OBS), (4096, 1))
    frame = framing.frame(pack({"model": "cartpole", "observations": rows}))  # ~80 kB answers
    with _tcp_server(models_dir, tcp_read_timeout_s=0.3, deadline_ms=60_000) as (c, app):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", app.state.tcp.port))

        def send() -> None:
            with contextlib.suppress(OSError):
                while True:  # until the kernel's buffers and the server's fill, then aborted
                    s.sendall(frame)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        text = ""
        for _ in range(400):  # until counted (at most 20 s; about 1 s here)
            text = c.get("/metrics").text
            if _metric(text, "write_timeout"):
                break
            threading.Event().wait(0.05)
        s.close()
        sender.join(10)
    assert _metric(text, "write_timeout") == 1


def test_a_kept_tcp_connection_closed_while_idle_is_sent_again(models_dir):
    """The SDK meets an idle close as it would a kept-alive HTTP connection: the request
    never reached the server, so it goes again on a new connection."""
    with _tcp_server(models_dir, tcp_idle_timeout_s=0.2) as (c, app):
        url = f"tcp://127.0.0.1:{app.state.tcp.port}"
        with PolicyClient(url, "cartpole", transport="tcp") as p:
            first = p.act(OBS).action
            while _metric(c.get("/metrics").text, "idle_timeout") < 1:
                asyncio.run(asyncio.sleep(0.05))
            assert p.act(OBS).action == first


def test_the_tcp_listen_backlog_is_the_http_one():
    settings = Settings(tcp_bind="127.0.0.1:0")
    assert settings.uvicorn_options()["backlog"] == settings.backlog == 2048


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": d / "cert.pem", "key": d / "key.pem", "ca": d / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return paths


def test_the_tcp_door_speaks_tls_only_whenever_the_server_has_a_certificate(
    models_dir, certificate
):
    settings = dict(
        api_keys=KEY, tcp_hello_timeout_s=0.5, ssl_certfile=certificate["cert"],
        ssl_keyfile=certificate["key"],
    )  # fmt: skip
    ca = str(certificate["ca"])
    with _tcp_server(models_dir, **settings) as (c, app):
        port = app.state.tcp.port
        tcps = f"tcps://127.0.0.1:{port}"
        with PolicyClient(tcps, "cartpole", transport="tcp", api_key=KEY, verify=ca) as p:
            assert p.act(OBS).action in (0, 1)
            assert p.model_info()["name"] == "cartpole"

        async def async_act() -> int:
            async with AsyncPolicyClient(
                tcps, "cartpole", transport="tcp", api_key=KEY, verify=ca
            ) as p:
                return (await p.act(OBS)).action

        assert asyncio.run(async_act()) in (0, 1)
        with pytest.raises(ConnectionFailed, match="TLS"):  # a CA that is not the server's
            PolicyClient(tcps, "cartpole", transport="tcp", api_key=KEY).act(OBS)
        # plaintext on the TLS port: the key in a hello frame is never taken, never answered
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(framing.frame(msgpack.packb({"hello": {"api_key": KEY}})))
            assert s.recv(65536) in (b"",) or _closed(s)
        plain = f"tcp://127.0.0.1:{port}"
        with pytest.raises((ConnectionFailed, Unauthorized)):
            PolicyClient(plain, "cartpole", transport="tcp", api_key=KEY).act(OBS)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert _closed(s)  # a TLS handshake that never starts: closed (hello timeout)
        text = ""
        for _ in range(200):  # counted at the hello timeout (at most 10 s; 0.55 s here)
            text = c.get("/metrics").text
            if _metric(text, "tls_handshake_failed") >= 4:
                break
            threading.Event().wait(0.05)
    # untrusted CA, plaintext hello, plaintext client, silent client
    assert _metric(text, "tls_handshake_failed") == 4


def test_a_certificate_that_cannot_be_loaded_is_an_error_naming_the_setting(tmp_path):
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="S2LOOP_SSL_CERTFILE"):
        Settings(ssl_certfile=bad).check_usable()
    with pytest.raises(ValidationError, match="S2LOOP_SSL_KEYFILE is set without"):
        Settings(ssl_keyfile=bad)


def test_refused_connections_map_to_unavailable_in_the_sdk(models_dir):
    with _tcp_server(models_dir, tcp_max_connections=1) as (_, app):
        url = f"tcp://127.0.0.1:{app.state.tcp.port}"
        with PolicyClient(url, "cartpole", transport="tcp") as first:
            first.act(OBS)
            with pytest.raises(Unavailable) as err:
                PolicyClient(url, "cartpole", transport="tcp", retries=0).act(OBS)
    assert err.value.kind == "too_many_connections" and err.value.status == 503


def test_json_doors_never_answer_500_to_json_of_any_type(models_dir):
    with TestClient(create_app(make_settings(models_dir))) as c:
        for value in (None, True, 0, 1.5, "x", [], [1, 2], {}, {"model": 1}):
            r = c.post("/v1/act", content=json.dumps(value))
            assert r.status_code in (400, 422), (value, r.text)
            assert r.json()["error"]["kind"] == KIND[r.status_code]
        for raw in (b"\x00\xff", b"[1,", b"nul"):
            r = c.post("/v1/act", content=raw)
            assert r.status_code == 400 and r.json()["error"]["kind"] == "malformed_json"
