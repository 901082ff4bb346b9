"""The client SDK (``client/``, import ``s2loop_client``) against a real server: every
transport and codec gives the same answers, errors map to ActError subclasses from
the server's own error schema, what the server sends validates against the wire
contract, API keys and TLS work, and the SDK installs without the server's stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.demo import ServerProcess, free_port
from s2loop_client import (
    AsyncPolicyClient,
    ConnectionFailed,
    MockTransport,
    NotFound,
    PolicyClient,
    Unauthorized,
    ValidationFailed,
    run_episode,
)
from s2loop_client import contract as wire
from service.schemas import ActResponse, BatchResponse, ErrorBody, model_of

ROOT = Path(__file__).resolve().parent.parent
OBS = [0.01, -0.2, 0.03, 0.25]
KEY = "k-3f9a"
READY_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    tcp = free_port("127.0.0.1")
    log = tmp_path_factory.mktemp("sdk") / "server.log"
    extra = ["--tcp-bind", f"127.0.0.1:{tcp}", "--api-keys", f"other,{KEY}"]
    with ServerProcess(models_dir, log_path=log, extra_args=extra) as srv:
        srv.wait_ready(READY_TIMEOUT_S)
        srv.tcp_url = f"tcp://127.0.0.1:{tcp}"
        yield srv
    log_text = log.read_text()
    assert KEY not in log_text  # keys never logged


MODES = [
    ("http", "json"),
    ("http", "msgpack"),
    ("ws", "json"),
    ("ws", "msgpack"),
    ("tcp", "msgpack"),
]


def _client(server, transport: str, codec: str, **kw) -> PolicyClient:
    url = server.tcp_url if transport == "tcp" else server.url
    return PolicyClient(url, "cartpole", transport=transport, codec=codec, api_key=KEY, **kw)


def test_every_transport_and_codec_gives_the_same_answer(server):
    answers = []
    for transport, codec in MODES:
        with _client(server, transport, codec) as policy:
            a = policy.act(np.asarray(OBS, np.float32), id=5)
            answers.append(a)
            assert a.timing.ticks > 0 and a.timing.server_us > 0 and a.id == 5
            assert a.backend == "emulator" and a.fallback is False
            batch = policy.act_batch(np.stack([OBS, OBS]))
            assert [b.action for b in batch] == [a.action, a.action]
            assert policy.model_info()["name"] == "cartpole"
    for a in answers:
        assert a.action == answers[0].action
        np.testing.assert_array_equal(np.float32(a.q_values), np.float32(answers[0].q_values))


def test_errors_are_actionerror_subclasses_with_the_servers_kind(server):
    for transport, codec in MODES:
        with _client(server, transport, codec) as policy:
            with pytest.raises(ValidationFailed) as err:
                policy.act([1.0, 2.0])
            assert err.value.kind == "validation_error" and err.value.status == 422
            assert "expects 4" in err.value.message and err.value.request_id
        other = server.tcp_url if transport == "tcp" else server.url
        with PolicyClient(other, "nope", transport=transport, codec=codec, api_key=KEY) as p:
            with pytest.raises(NotFound) as err:
                p.act(OBS)
            assert err.value.kind == "unknown_model"


@pytest.mark.parametrize(("transport", "codec"), MODES)
def test_a_missing_or_wrong_api_key_is_refused_with_401(server, transport, codec):
    url = server.tcp_url if transport == "tcp" else server.url
    for key in (None, "wrong"):
        if transport == "tcp" and key is None:
            continue  # without a hello frame the first request is taken as the hello
        with PolicyClient(url, "cartpole", transport=transport, codec=codec, api_key=key) as p:
            with pytest.raises(Unauthorized) as err:
                p.act(OBS)
            assert err.value.status == 401 and err.value.kind == "unauthorized"


def test_probes_stay_open_with_api_keys(server):
    import httpx

    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(server.url + "/v1/models", headers=auth).status_code == 200


def test_what_the_server_sends_validates_against_the_wire_contract(server):
    import httpx
    import msgpack
    import websockets.sync.client as wsc

    auth = {"Authorization": f"Bearer {KEY}"}
    good = {"model": "cartpole", "observation": OBS}
    batch = {"model": "cartpole", "observations": [OBS, OBS]}
    bad = {"model": "cartpole", "observation": [1]}
    for codec, media, dumps, loads in (
        ("json", wire.JSON, None, None),
        ("msgpack", wire.MSGPACK, msgpack.packb, msgpack.unpackb),
    ):
        headers = {**auth, "content-type": media}
        for path, body, schema in (
            (wire.ACT_PATH, good, ActResponse),
            (wire.BATCH_PATH, batch, BatchResponse),
            (wire.ACT_PATH, bad, ErrorBody),
        ):
            if codec == "json":
                r = httpx.post(server.url + path, json=body, headers=auth)
                schema.model_validate_json(r.content)
            else:
                r = httpx.post(server.url + path, content=dumps(body), headers=headers)
                schema.model_validate(loads(r.content))
    with wsc.connect(
        server.url.replace("http", "ws") + wire.WS_PATH, additional_headers=auth
    ) as ws:
        ws.send(msgpack.packb(good))
        ActResponse.model_validate(msgpack.unpackb(ws.recv()))
        ws.send(msgpack.packb(bad))
        model_of(wire.ErrorAnswer).model_validate(msgpack.unpackb(ws.recv()))


def test_tcp_framing_errors_get_an_error_frame_or_a_clean_close(server):
    import socket
    import struct

    import msgpack

    from s2loop_client import framing

    host, port = server.tcp_url[len("tcp://") :].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        buffer = bytearray()
        s.sendall(framing.frame(msgpack.packb({"hello": {"api_key": KEY}})))
        assert msgpack.unpackb(framing.read_frame(s, buffer)) == {"hello": "ok"}
        s.sendall(framing.frame(b"\xc1\xc1\xc1"))  # not msgpack: an error frame, it stays
        err = msgpack.unpackb(framing.read_frame(s, buffer))["error"]
        assert err["status"] == 400 and err["kind"] == "malformed_json"
        s.sendall(struct.pack("<I", 1 << 30))  # a header past any limit, by hand: 413, closed
        assert msgpack.unpackb(framing.read_frame(s, buffer))["error"]["status"] == 413
        assert s.recv(4) == b""
    assert _client(server, "tcp", "msgpack").act(OBS).action in (0, 1)  # still serving


def test_s2loop_run_over_tcp_checks_the_model_first_and_drives_an_episode(server, tmp_path):
    from clients.loop import LoopConfig
    from clients.session import PreflightError, run_and_report

    def cfg(**kw):
        base = dict(env_id="CartPole-v1", url=server.tcp_url, transport="tcp", api_key=KEY)
        return LoopConfig(**{**base, "episodes": 1, "max_steps": 30, **kw})

    result, summary = run_and_report(cfg(), tmp_path / "ok", progress=False)
    assert summary["model_info"]["observation_size"] == 4  # asked over TCP
    assert summary["errors"] == {} and len(result.column("action")) == 30
    with pytest.raises(PreflightError, match="nope"):
        run_and_report(cfg(model="nope"), tmp_path / "nope", progress=False)
    with pytest.raises(PreflightError, match="API key"):
        run_and_report(cfg(api_key="wrong"), tmp_path / "key", progress=False)
    closed = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.raises(PreflightError, match="no s2loop TCP endpoint answers"):
        run_and_report(cfg(url=closed), tmp_path / "down", progress=False, wait_s=0.3)


def test_async_client_gives_the_same_answers(server):
    async def main():
        out = []
        for transport, codec in MODES:
            url = server.tcp_url if transport == "tcp" else server.url
            async with AsyncPolicyClient(
                url, "cartpole", transport=transport, codec=codec, api_key=KEY
            ) as policy:
                out.append(await policy.act(OBS))
                assert len(await policy.act_batch([OBS, OBS, OBS])) == 3
                assert (await policy.model_info())["name"] == "cartpole"
        return out

    answers = asyncio.run(main())
    assert len({a.action for a in answers}) == 1


def test_the_transport_follows_a_tcp_url_unless_told_otherwise(server):
    with PolicyClient(server.tcp_url, "cartpole", api_key=KEY) as policy:  # no transport=
        assert type(policy.transport).__name__ == "TCPTransport"
        assert policy.act(OBS).backend == "emulator"
    with PolicyClient(server.url, "cartpole", api_key=KEY) as policy:
        assert type(policy.transport).__name__ == "HTTPTransport"
    for transport in ("http", "ws"):  # a contradiction names the fix, never a wrong door
        with pytest.raises(ValueError, match="TCP endpoint's URL: leave transport out"):
            PolicyClient(server.tcp_url, "cartpole", transport=transport)


def test_connection_refused_is_retried_then_reported():
    port = free_port("127.0.0.1")
    client = PolicyClient(f"http://127.0.0.1:{port}", "m", retries=2, backoff_s=0.01)
    with client as p, pytest.raises(ConnectionFailed) as err:
        p.act(OBS)
    assert err.value.kind == "connection" and "unreachable" in err.value.message


def test_mock_transport_drives_an_episode_without_a_server():
    import gymnasium as gym

    calls = []

    def handler(route, request):
        calls.append(request)
        action = int(request["observation"][2] > 0)  # push toward the lean
        timing = {"server_us": 1.0, "compute_us": 1.0, "ticks": 15}
        answer = {"model": request["model"], "action": action, "q_values": [0.0, 1.0],
                  "backend": "mock", "fallback": False, "timing": timing}  # fmt: skip
        return 200, answer

    for codec in ("json", "msgpack"):
        with PolicyClient(
            "http://unused", "cartpole", transport_impl=MockTransport(handler, codec)
        ) as policy:
            episode = run_episode(policy, gym.make("CartPole-v1"), seed=3, max_steps=50)
        assert episode.steps == len(episode.answers) > 10
        assert episode.answers[0].backend == "mock"


def test_tls_with_a_self_signed_certificate(models_dir, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    tcp = free_port("127.0.0.1")
    extra = ["--ssl-certfile", str(cert_path), "--ssl-keyfile", str(key_path)]
    extra += ["--tcp-bind", f"127.0.0.1:{tcp}", "--api-keys", KEY]
    with ServerProcess(models_dir, extra_args=extra, verify=str(ca_path)) as srv:
        srv.wait_ready(READY_TIMEOUT_S)
        tcps = f"tcps://127.0.0.1:{tcp}"
        for transport in ("http", "ws", "tcp"):
            url = tcps if transport == "tcp" else srv.url
            with PolicyClient(
                url, "cartpole", transport=transport, verify=str(ca_path), api_key=KEY
            ) as p:
                assert p.act(OBS).action in (0, 1)
        for transport in ("http", "tcp"):  # not trusted without the CA
            url = tcps if transport == "tcp" else srv.url
            client = PolicyClient(url, "cartpole", transport=transport, api_key=KEY)
            with client as p, pytest.raises(ConnectionFailed):
                p.act(OBS)
        plain = f"tcp://127.0.0.1:{tcp}"  # no plaintext on the TLS port (uvloop's TLS here)
        client = PolicyClient(plain, "cartpole", transport="tcp", api_key=KEY)
        with client as p, pytest.raises(ConnectionFailed):
            p.act(OBS)


def test_the_sdk_installs_and_imports_without_the_server_stack(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "-q", "--no-deps", str(ROOT / "client")], check=True, timeout=300
    )
    deps = ["httpx", "websockets", "numpy", "msgpack"]
    subprocess.run([str(pip), "install", "-q", *deps], check=True, timeout=600)
    code = (
        "import sys, s2loop_client; from s2loop_client import PolicyClient;"
        "heavy = {'torch', 'numba', 'gymnasium', 'matplotlib', 'fastapi', 'uvicorn', 'pydantic',"
        " 'service', 'hw', 'agent'} & set(sys.modules); assert not heavy, heavy; print('ok')"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "ok", out.stderr
    listed = subprocess.run([str(pip), "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert not {"torch", "numba", "gymnasium", "fastapi", "uvicorn"} & names


def test_one_mock_transport_serves_the_blocking_and_the_asyncio_client():
    from s2loop_client import Overloaded

    def handler(route, request):
        if request.get("observation") == [9.0, 9.0, 9.0, 9.0]:
            return 429, {"error": {"kind": "queue_full", "message": "busy", "retry_after_ms": 5}}
        timing = {"server_us": 1.0, "compute_us": 1.0, "ticks": 15}
        return 200, {"model": "cartpole", "action": 1, "q_values": [0.0, 1.0],
                     "backend": "mock", "fallback": False, "timing": timing}  # fmt: skip

    for codec in ("json", "msgpack"):
        mock = MockTransport(handler, codec)
        with PolicyClient("http://unused", "cartpole", transport_impl=mock) as policy:
            assert policy.act(OBS).action == 1
            with pytest.raises(Overloaded) as err:
                policy.act([9.0] * 4)
            assert err.value.status == 429 and err.value.retry_after_ms == 5

        async def main(mock=mock):
            async with AsyncPolicyClient("http://unused", "cartpole", transport_impl=mock) as p:
                first = await p.act(OBS)
                with pytest.raises(Overloaded):
                    await p.act([9.0] * 4)
                return first

        assert asyncio.run(main()).backend == "mock"


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"model": "m", "action": 1}, 200),
        ({"error": {"kind": "deadline", "status": 504, "message": "late"}}, 504),
        ({"error": {"kind": "x", "message": "no status"}}, 500),  # an error says its status
        ({"error": {"kind": "x", "status": 200}}, 500),  # an error is never a 200
        ({"error": "not a map"}, 500),
        ([1, 2], 200),  # not an error map: the client then refuses it as no answer map
    ],
)
def test_an_answers_status_is_the_one_it_carries_never_guessed(answer, status):
    from s2loop_client.framing import status_of

    assert status_of(answer) == status


def test_the_framing_gives_the_same_frames_however_the_bytes_are_cut():
    from s2loop_client import framing

    payloads = [b"", b"a", b"\x00" * 300, b"xyz"]
    stream = b"".join(framing.frame(p) for p in payloads)
    for cut in range(len(stream) + 1):  # every way of cutting the stream in two reads
        buffer, got = bytearray(), []
        got += framing.feed(buffer, stream[:cut])
        got += framing.feed(buffer, stream[cut:])
        assert got == payloads and not buffer, cut
    with pytest.raises(framing.FrameTooLarge):
        framing.feed(bytearray(), framing.frame(b"x" * 65), limit=64)


class _Chunks:
    """A blocking socket that hands out pre-cut chunks, then b"" (the peer closed)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    def recv(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_read_frame_gives_the_same_frames_however_the_socket_cuts_them():
    from s2loop_client import framing

    payloads = [b"", b"a", b"\x00" * 300, b"xyz"]
    stream = b"".join(framing.frame(p) for p in payloads)
    for cut in range(len(stream) + 1):  # a frame whole in one recv, two in one, split ones
        sock, buffer = _Chunks([stream[:cut], stream[cut:]] if cut else [stream]), bytearray()
        got = [framing.read_frame(sock, buffer) for _ in payloads]
        assert got == payloads and not buffer, cut
    with pytest.raises(framing.NoAnswerBytes):  # closed before a byte of the answer
        framing.read_frame(_Chunks([]), bytearray())
    with pytest.raises(ConnectionResetError) as exc:  # closed in a frame
        framing.read_frame(_Chunks([framing.frame(b"abc")[:5]]), bytearray())
    assert not isinstance(exc.value, framing.NoAnswerBytes)
    with pytest.raises(framing.FrameTooLarge):
        framing.read_frame(_Chunks([framing.frame(b"x" * 65)]), bytearray(), limit=64)
