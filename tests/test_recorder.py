"""The flight recorder (every answered act as a Parquet row), replay on any backend or
model, and shadow models compared live."""

from __future__ import annotations

import json
import shutil
import socket
import time

import msgpack
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hw.artifact import Encoder, save_artifact
from hw.synthetic import random_artifact
from s2loop_client import framing
from service.app import create_app
from service.recorder import SCHEMAS, Recorder
from service.records import ActBatch, ActRow
from service.replay import read_acts, replay
from tests.test_service import OBS, make_settings, wait_ready


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec-models")
    save_artifact(random_artifact(seed=1, name="cartpole"), d / "cartpole.s2l")
    enc = Encoder(kind="poisson", channels="tent", bins=5, input_ticks=13)
    save_artifact(random_artifact(seed=4, name="rate", encoder=enc), d / "rate.s2l")
    other = d / "other"
    other.mkdir()
    save_artifact(random_artifact(seed=9, name="cartpole"), other / "candidate.s2l")
    return d


def _tcp(port: int, body: dict) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(framing.frame(msgpack.packb(body)))
        return msgpack.unpackb(framing.read_frame(s, bytearray()))


def test_every_answer_on_every_door_is_one_row_and_a_graceful_stop_loses_none(models, tmp_path):
    rec = tmp_path / "rec"
    settings = make_settings(models, record_dir=rec, record_rotate_rows=37, tcp_bind="127.0.0.1:0")
    sent = 0
    app = create_app(settings)
    with TestClient(app) as c:
        wait_ready(c)
        for i in range(80):  # HTTP, tagged with episode and step
            body = {"model": "cartpole", "observation": [i / 100, 0, 0, 0], "episode_id": "e1",
                    "step": i}  # fmt: skip
            answer = c.post("/v1/act", json=body).json()
            assert (answer["episode_id"], answer["step"]) == ("e1", i)
            sent += 1
        for _ in range(10):  # batches: each row its own row
            body = {"model": "rate", "observations": [OBS] * 6, "episode_ids": ["b"] * 6,
                    "steps": list(range(6))}  # fmt: skip
            r = c.post("/v1/act/batch", json=body)
            assert r.status_code == 200 and r.json()["steps"] == list(range(6))
            sent += 6
        with c.websocket_connect("/v1/act/ws") as ws:
            for _ in range(30):
                ws.send_text(json.dumps({"model": "rate", "observation": OBS}))
                json.loads(ws.receive_text())
                sent += 1
        for _ in range(30):
            _tcp(app.state.tcp.port, {"model": "cartpole", "observation": OBS})
            sent += 1
        assert sent == 200
        c.post("/v1/act", json={"model": "cartpole", "observation": [1, 2]})  # 422
        c.post("/v1/act", content=b"{")  # 400
        for _ in range(200):  # the writer thread closes files as they fill (at most 10 s)
            closed = sorted(rec.glob("acts-*.parquet"))
            if closed:
                break
            time.sleep(0.05)
        assert closed  # files close (37 rows each) while the server runs, readable
        assert pq.read_table(closed[0]).num_rows == 37
    table = read_acts(rec)  # after the graceful stop: everything
    assert table.num_rows == 200
    assert table.schema.equals(SCHEMAS["acts"])
    rows = table.to_pylist()
    doors = [r["transport"] for r in rows]
    assert doors.count("http") == 140 and doors.count("ws") == 30 and doors.count("tcp") == 30
    http = [r for r in rows if r["episode_id"] == "e1"]
    assert [r["step"] for r in http] == list(range(80))
    assert http[5]["observation"] == pytest.approx([0.05, 0, 0, 0])
    assert len(http[5]["q_values"]) == 2 and http[5]["action"] in (0, 1)
    assert all(r["seed"] is not None for r in rows if r["model"] == "rate")
    assert all(r["seed"] is None for r in rows if r["model"] == "cartpole")
    errors = pq.read_table(sorted(rec.glob("errors-*.parquet"))[0]).to_pylist()
    assert [(e["status"], e["kind"]) for e in errors] == [
        (422, "validation_error"),
        (400, "malformed_json"),
    ]
    text = app.state.metrics.render().decode()
    assert 's2loop_record_rows_total{table="acts"} 200.0' in text


def _row(rid: str = "r") -> ActRow:
    return ActRow(time.time(), rid, None, None, "m", "sha", "emulator", False, "http",
                  np.zeros(4, np.float32), np.zeros(2, np.float32), 0, None, 1.0, 1.0)  # fmt: skip


def _batch(n: int, rid: str = "b") -> ActBatch:
    return ActBatch(time.time(), rid, None, None, "m", "sha", "emulator", False, "tcp",
                    np.zeros((n, 4), np.float32), np.zeros((n, 2), np.float32),
                    np.zeros(n, np.int64), None, 1.0, 1.0)  # fmt: skip


def test_a_full_queue_drops_rows_and_counts_them(tmp_path):
    recorder = Recorder(tmp_path, queue_rows=3, rotate_s=3600)
    recorder._stop.set()  # the writer stops taking rows: the queue fills
    recorder._thread.join()
    recorder._stop.clear()
    for _ in range(10):
        recorder.act(_row())
    assert recorder.dropped["acts"] == 7 and recorder.queued["acts"] == 3
    recorder._drain(final=True)
    assert recorder.written["acts"] == 3


def test_batches_are_bounded_and_counted_in_rows_not_entries(tmp_path):
    """A batch takes as many places in the queue as it has rows: one that does not fit
    is dropped whole and each of its rows counted."""
    from service.metrics import Metrics

    metrics = Metrics()
    recorder = Recorder(tmp_path, queue_rows=100, rotate_s=3600, metrics=metrics)
    recorder._stop.set()
    recorder._thread.join()
    recorder._stop.clear()
    recorder.batch(_batch(60))
    recorder.batch(_batch(60))  # 120 > 100: dropped, 60 rows counted
    recorder.batch(_batch(40))  # fits exactly
    recorder.act(_row())  # 101 > 100
    assert recorder.queued["acts"] == 100 and recorder.dropped["acts"] == 61
    text = metrics.render().decode()
    assert 's2loop_record_dropped_total{reason="queue_full",table="acts"} 61.0' in text
    recorder._drain(final=True)
    assert recorder.written["acts"] == 100 and recorder.queued["acts"] == 0
    ids = pq.read_table(sorted(tmp_path.glob("acts-*.parquet"))).column("request_id").to_pylist()
    assert ids[:2] == ["b.0", "b.1"] and len(ids) == 100


def test_rows_leave_the_queue_count_only_inside_the_file_being_filled(tmp_path):
    """The crash bound: rows not yet written are either counted in the queue or in the
    file being filled (at most rotate_rows), never in neither."""
    recorder = Recorder(tmp_path, queue_rows=10_000, rotate_rows=1000, rotate_s=3600)
    recorder._stop.set()
    recorder._thread.join()
    recorder._stop.clear()
    for i in range(5):
        recorder.batch(_batch(700, f"b{i}"))
    recorder._drain(final=False)  # 3,500 rows: 3 files of 1,000, 500 in the file being filled
    assert recorder.written["acts"] == 3000
    assert recorder.pending_rows["acts"] == 500 and recorder.queued["acts"] == 0
    recorder._drain(final=True)
    assert recorder.written["acts"] == 3500


def test_an_unwritable_record_folder_is_one_line_naming_it_at_start(tmp_path, models):
    from typer.testing import CliRunner

    from s2loop.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    bad = blocker / "rec"
    with pytest.raises(ValueError, match="S2LOOP_RECORD_DIR .*file/rec: cannot write"):
        Recorder(bad)
    out = CliRunner().invoke(app, ["serve", "--models", str(models), "--record-dir", str(bad)])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "S2LOOP_RECORD_DIR" in lines[0] and str(bad) in lines[0], lines


def test_write_failures_while_serving_are_counted_in_metrics(models, tmp_path):
    rec = tmp_path / "rec"
    app = create_app(make_settings(models, record_dir=rec, record_rotate_rows=5))
    with TestClient(app) as c:
        wait_ready(c)
        shutil.rmtree(rec)  # the folder goes away while serving (a file in its place)
        rec.write_text("")
        for _ in range(5):
            assert c.post("/v1/act", json={"model": "cartpole", "observation": OBS}).is_success
        recorder = app.state.pipeline.recorder
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not recorder.write_errors["acts"]:
            time.sleep(0.02)
        text = c.get("/metrics").text
    assert 's2loop_record_write_errors_total{table="acts"} 1.0' in text
    assert 's2loop_record_dropped_total{reason="write_failed",table="acts"} 5.0' in text


def test_replay_on_the_same_model_agrees_fully_and_flags_a_different_one(models, tmp_path):
    rec = tmp_path / "rec"
    with TestClient(create_app(make_settings(models, record_dir=rec))) as c:
        wait_ready(c)
        rng = np.random.default_rng(0)
        for i in range(150):
            obs = (rng.normal(size=4) * [1.0, 1.5, 0.15, 1.5]).tolist()
            for model in ("cartpole", "rate"):
                body = {"model": model, "observation": obs, "episode_id": f"ep{i // 50}"}
                assert c.post("/v1/act", json=body).status_code == 200
    same = replay(rec, models_dir=models)
    for name in ("cartpole", "rate"):
        m = same["models"][name]
        assert m["rows"] == 150 and m["agreement"] == 1.0 and m["q_diff_max"] == 0.0
        assert set(m["episodes"]) == {"ep0", "ep1", "ep2"}
    assert same["models"]["rate"]["seeded"]  # Poisson draws reproduced from the seeds
    candidate = models / "other" / "candidate.s2l"
    runner = CliRunner()
    from s2loop.cli import app

    args = ["replay", str(rec), "--models", str(models), "--model", str(candidate)]
    out = runner.invoke(app, [*args, "--min-agreement", "0.999"])
    assert out.exit_code == 1, out.output
    report = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert report["models"]["cartpole"]["agreement"] < 0.999
    assert (rec / "replay.png").stat().st_size > 5000
    assert runner.invoke(app, [*args, "--min-agreement", "0.1"]).exit_code == 0


def cartpole_observations(n: int, seed: int = 1) -> list[list[float]]:
    """``n`` observations at CartPole's scale."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)) * [1.0, 1.5, 0.15, 1.5]).tolist()


def serve_with_shadow(models_dir, candidate, rec, bodies: list[dict]) -> str:
    """Serve ``models_dir`` with ``candidate`` shadowing ``cartpole`` and the recorder on
    (into ``rec``), answer each act body (200), wait (10 s at most) until the shadow
    compared them all, then stop the server gracefully; its metrics at the end."""
    app = create_app(make_settings(models_dir, record_dir=rec, shadow=f"cartpole={candidate}"))
    done = f's2loop_shadow_compared_total{{model="cartpole"}} {float(len(bodies))}'
    with TestClient(app) as c:
        wait_ready(c)
        for body in bodies:
            assert c.post("/v1/act", json=body).status_code == 200
        deadline = time.monotonic() + 10
        while done not in app.state.metrics.render().decode():
            assert time.monotonic() < deadline, "the shadow did not compare every answer"
            time.sleep(0.02)  # the shadow compares off the request path
    return app.state.metrics.render().decode()


def test_a_shadow_model_is_compared_live_off_the_hot_path(models, tmp_path):
    rec = tmp_path / "rec"
    bodies = [{"model": "cartpole", "observation": obs} for obs in cartpole_observations(200)]
    text = serve_with_shadow(models, models / "other" / "candidate.s2l", rec, bodies)
    agreed = float(text.split('s2loop_shadow_agreed_total{model="cartpole"} ')[1].split()[0])
    assert 0 < agreed < 200  # a different network: mostly, not always, the same action
    rows = pq.read_table(sorted(rec.glob("shadow-*.parquet"))[0]).to_pylist()
    assert len(rows) == 200 and sum(r["agree"] for r in rows) == agreed
    acts = {r["request_id"]: r for r in read_acts(rec).to_pylist()}
    for r in rows[:20]:  # joined with the live rows by request id
        assert acts[r["request_id"]]["action"] == r["live_action"]
