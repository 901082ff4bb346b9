"""``"trace": true`` on every door (HTTP JSON and msgpack, WebSocket, TCP, batch),
the SDK reading it, the size cap's 422, the flight recorder's traces table, and an
untraced answer without a trace."""

from __future__ import annotations

import json
import socket
import struct
import time

import msgpack
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hw.artifact import Encoder, save_artifact
from hw.synthetic import random_artifact
from hw.trace import trace_cells
from s2loop_client import PolicyClient
from s2loop_client import contract as wire
from service.app import create_app
from tests.test_service import OBS, make_settings, wait_ready


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace-models")
    save_artifact(random_artifact(seed=1, name="cartpole", hidden=(32, 32)), d / "cartpole.s2l")
    enc = Encoder(kind="poisson", channels="tent", bins=5, input_ticks=13)
    save_artifact(random_artifact(seed=4, name="rate", encoder=enc), d / "rate.s2l")
    return d


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    rec = tmp_path_factory.mktemp("trace-rec")
    settings = make_settings(models, record_dir=rec, tcp_bind="127.0.0.1:0")
    app = create_app(settings)
    with TestClient(app) as c:
        wait_ready(c)
        yield c, app, rec


def _tcp(port: int, body: dict) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        frame = msgpack.packb(body)
        s.sendall(struct.pack("<I", len(frame)) + frame)
        (n,) = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))
        return msgpack.unpackb(s.recv(n, socket.MSG_WAITALL))


def _check(answer: dict, ticks: int, layers: int = 3) -> None:
    tr = answer["trace"]
    assert tr["ticks"] == ticks and len(tr["output_q"]) == ticks
    assert len(tr["layers"]) == layers
    assert tr["output_q"][-1] == answer["q_values"]


def _same(a: dict, b: dict) -> bool:
    """The same trace; floats compared in float32 (JSON writes them shortest in float32,
    msgpack as the float64 of the float32)."""
    q = [np.asarray(t["output_q"], np.float32) for t in (a, b)]
    rest = [{k: v for k, v in t.items() if k != "output_q"} for t in (a, b)]
    return rest[0] == rest[1] and np.array_equal(*q)


def test_trace_on_every_door_is_the_same_trace(served):
    c, app, _ = served
    body = {"model": "cartpole", "observation": OBS, "trace": True}
    http = c.post("/v1/act", json=body).json()
    packed = msgpack.unpackb(
        c.post(
            "/v1/act", content=msgpack.packb(body), headers={"content-type": wire.MSGPACK}
        ).content
    )
    with c.websocket_connect("/v1/act/ws") as ws:
        ws.send_text(json.dumps(body))
        over_ws = json.loads(ws.receive_text())
        ws.send_bytes(msgpack.packb(body))
        over_ws_msgpack = msgpack.unpackb(ws.receive_bytes())
    over_tcp = _tcp(app.state.tcp.port, body)
    for answer in (http, packed, over_ws, over_ws_msgpack, over_tcp):
        _check(answer, ticks=16)
        assert _same(answer["trace"], http["trace"])
    assert sum(len(lay["spikes"]) for lay in http["trace"]["layers"]) > 0


def test_an_untraced_answer_has_no_trace(served):
    c, _, _ = served
    answer = c.post("/v1/act", json={"model": "cartpole", "observation": OBS}).json()
    assert "trace" not in answer and answer["q_values"]


def test_a_batch_has_one_trace_per_row_and_a_seed_fixes_it(served):
    c, _, _ = served
    body = {"model": "rate", "observations": [OBS] * 3, "seeds": [5, 5, 6], "trace": True}
    answer = c.post("/v1/act/batch", json=body).json()
    traces = answer["traces"]
    assert len(traces) == 3
    for row, tr in enumerate(traces):
        assert tr["output_q"][-1] == answer["q_values"][row]
    assert traces[0] == traces[1]  # the same seed, the same spikes
    assert traces[0]["input"] != traces[2]["input"]
    one = c.post(
        "/v1/act", json={"model": "rate", "observation": OBS, "seed": 5, "trace": True}
    ).json()
    assert one["trace"] == traces[0]


def test_a_trace_over_the_cap_is_a_clear_422(served, models):
    c, _, _ = served
    from hw.artifact import load_artifact

    per_row = trace_cells(load_artifact(models / "cartpole.s2l"))
    rows = wire.MAX_TRACE_CELLS // per_row + 1
    body = {"model": "cartpole", "observations": [OBS] * rows, "trace": True}
    r = c.post("/v1/act/batch", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["kind"] == "validation_error"
    assert f"over the limit of {wire.MAX_TRACE_CELLS}" in err["message"]
    body["trace"] = False  # the same batch untraced is fine
    assert c.post("/v1/act/batch", json=body).status_code == 200
    # "trace" must be a boolean (strict parsing)
    bad = c.post("/v1/act", json={"model": "cartpole", "observation": OBS, "trace": "yes"})
    assert bad.status_code == 422 and "trace" in bad.json()["error"]["message"]


def test_the_sdk_reads_traces(served):
    """Over TCP here (a socket server in the test); HTTP and WebSocket SDK clients read
    the same answer maps (tests/test_clients_e2e.py runs them against a real server)."""
    _, app, _ = served
    with PolicyClient(f"tcp://127.0.0.1:{app.state.tcp.port}", "cartpole", transport="tcp") as p:
        answer = p.act(OBS, trace=True)
        batch = p.act_batch([OBS, OBS], trace=True)
        plain = p.act(OBS)
    assert isinstance(answer.trace, wire.Trace)
    assert answer.trace.output_q[-1] == answer.q_values
    assert [lay.name for lay in answer.trace.layers] == ["fc1", "fc2", "out"]
    assert batch[1].trace.output_q[-1] == batch[1].q_values
    assert plain.trace is None


def test_the_flight_recorder_keeps_each_trace_under_its_acts_row(models, tmp_path):
    rec = tmp_path / "rec"
    with TestClient(create_app(make_settings(models, record_dir=rec))) as c:
        wait_ready(c)
        traced = c.post("/v1/act", json={"model": "cartpole", "observation": OBS, "trace": True})
        c.post("/v1/act", json={"model": "cartpole", "observation": OBS})
        body = {"model": "rate", "observations": [OBS] * 2, "trace": True}
        batch = c.post("/v1/act/batch", json=body)
        rid = traced.headers["x-request-id"]
        bid = batch.headers["x-request-id"]
    time.sleep(0.05)
    rows = pq.read_table(sorted(rec.glob("traces-*.parquet"))).to_pylist()
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == {rid, f"{bid}.0", f"{bid}.1"}
    assert json.loads(by_id[rid]["trace"]) == traced.json()["trace"]
    assert json.loads(by_id[f"{bid}.1"]["trace"]) == batch.json()["traces"][1]
    acts = pq.read_table(sorted(rec.glob("acts-*.parquet"))).to_pylist()
    assert {a["request_id"] for a in acts} >= set(by_id)
