"""clients/ against a stand-in server (the /v1/act contract, with failures on demand).

The stand-in answers like the service: a fixed policy (one that balances CartPole),
timing fields, ``{"error": {"kind", "message"}}`` bodies, and it records what it
received, so the tests can check what the client really sent."""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from clients.loop import STEP_FIELDS, LoopConfig, model_name_for, run_loops
from clients.report import summarize, summary_table
from clients.session import PreflightError, run_and_report
from clients.transport import (
    ActError,
    HttpActClient,
    RetryPolicy,
    WsActClient,
    base_url,
    wait_ready,
    ws_url,
)

MODELS = {
    "cartpole": {"name": "cartpole", "env_id": "CartPole-v1", "observation_size": 4},
    "acrobot": {"name": "acrobot", "env_id": "Acrobot-v1", "observation_size": 6},
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def policy(model: str, obs: list[float]) -> int:
    if model == "cartpole":  # lean towards the falling side: keeps the pole up for 500 steps
        return int(obs[2] + 0.5 * obs[3] > 0)
    return 2 if obs[5] > 0 else 0  # acrobot: push with the second joint's velocity


class StandIn:
    """Mutable behaviour of the stand-in server; tests reset and script it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ready = True
        self.received: list[tuple[str, list[float]]] = []
        self.failures: list[tuple[int, str]] = []  # next answers: (status, kind)
        self.delay_s = 0.0
        self.delay_next = 0  # how many upcoming requests get delay_s
        self.lock = threading.Lock()

    def handle(self, body: dict) -> tuple[int, dict, float]:
        """(status, answer, delay) for one /v1/act body."""
        with self.lock:
            self.received.append((body.get("model"), body.get("observation")))
            delay = 0.0
            if self.delay_next:
                self.delay_next -= 1
                delay = self.delay_s
            if self.failures:
                status, kind = self.failures.pop(0)
                return status, {"error": {"kind": kind, "message": f"scripted {status}"}}, delay
        model = body.get("model")
        if model not in MODELS:
            return 404, {"error": {"kind": "unknown_model", "message": f"no {model!r}"}}, delay
        obs = body["observation"]
        answer = {
            "model": model,
            "action": policy(model, obs),
            "q_values": [0.0, 1.0],
            "backend": "standin",
            "fallback": len(self.received) % 10 == 0,
            "timing": {
                "server_us": 40.0,
                "compute_us": 25.0,
                "ticks": 16,
                "chip_time_s": 0.016,
                "energy_j": 0.004,
            },
        }
        return 200, answer, delay


def make_app(state: StandIn) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def readyz():
        if state.ready:
            return {"status": "ready"}
        return JSONResponse({"status": "warming up"}, status_code=503)

    @app.get("/v1/models")
    async def models():
        return {"models": list(MODELS.values())}

    @app.post("/v1/act")
    async def act(request: Request):
        status, answer, delay = state.handle(await request.json())
        if delay:
            await asyncio.sleep(delay)
        headers = {"Retry-After": "0"} if status == 429 else None
        return JSONResponse(answer, status_code=status, headers=headers)

    @app.websocket("/v1/act/ws")
    async def act_ws(ws: WebSocket):
        await ws.accept()
        try:
            while True:
                _status, answer, delay = state.handle(json.loads(await ws.receive_text()))
                if delay:
                    await asyncio.sleep(delay)
                await ws.send_text(json.dumps(answer))
        except WebSocketDisconnect:
            pass

    return app


@contextmanager
def serve_in_thread(app: FastAPI):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "stand-in server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


@pytest.fixture(scope="module")
def standin():
    state = StandIn()
    with serve_in_thread(make_app(state)) as url:
        yield state, url


@pytest.fixture
def server(standin):
    state, url = standin
    state.reset()
    return state, url


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on (bound then released)
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --- pure helpers -----------------------------------------------------------------------------


def test_default_model_name_comes_from_the_env_id():
    assert model_name_for("CartPole-v1") == "cartpole"
    assert model_name_for("Acrobot-v1") == "acrobot"
    assert LoopConfig(env_id="Acrobot-v1", url="x").model == "acrobot"
    assert LoopConfig(env_id="Acrobot-v1", url="x", model="mine").model == "mine"


def test_urls_are_normalised_and_ws_url_follows_the_scheme():
    assert base_url("127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert ws_url("http://h:1") == "ws://h:1/v1/act/ws"
    assert ws_url("https://h/prefix/") == "wss://h/prefix/v1/act/ws"
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        base_url("ftp://h")


# --- full runs --------------------------------------------------------------------------------


def test_http_run_writes_csv_summary_and_plots_and_solves_with_a_good_policy(server, tmp_path):
    state, url = server
    cfg = LoopConfig(env_id="CartPole-v1", url=url, episodes=2, seed=3)
    run_and_report(cfg, tmp_path, progress=False)

    rows = read_csv(tmp_path / "steps.csv")
    assert tuple(rows[0]) == STEP_FIELDS
    assert len(rows) == 1000 == len(state.received)  # 2 episodes x 500 steps, one request each
    assert [int(r["seed"]) for r in rows[::500]] == [3, 4]
    assert {r["backend"] for r in rows} == {"standin"}
    assert rows[0]["server_us"] == "40" and rows[0]["backend_us"] == "25"
    assert float(rows[0]["chip_us"]) == pytest.approx(16000)
    assert float(rows[0]["energy_uj"]) == pytest.approx(4000)
    assert all(float(r["rtt_us"]) > 0 for r in rows)
    assert sum(int(r["fallback"]) for r in rows) == 100  # the stand-in flags every 10th

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["returns"]["per_episode"] == [500.0, 500.0]
    assert saved["solved"] is True and saved["reward_threshold"] == 475.0
    assert saved["errors"] == {} and saved["fallback_steps"] == 100
    rtt = saved["latency_us"]["rtt"]
    assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["max"]
    assert saved["latency_us"]["server"]["p50"] == 40.0
    assert saved["deadline"]["misses"] is None  # no --rate-hz, nothing to miss
    for png in ("latency.png", "returns.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC


def test_episode_i_is_reset_with_seed_s_plus_i(server, tmp_path):
    state, url = server
    cfg = LoopConfig(env_id="CartPole-v1", url=url, episodes=3, seed=11, max_steps=5)
    run_and_report(cfg, tmp_path, progress=False)
    firsts = [state.received[i * 5][1] for i in range(3)]
    env = gym.make("CartPole-v1")
    expected = [env.reset(seed=11 + i)[0] for i in range(3)]
    np.testing.assert_array_equal(np.asarray(firsts, np.float32), np.asarray(expected))


def test_ws_and_http_drive_identical_episodes(server, tmp_path):
    state, url = server
    actions = {}
    for transport in ("http", "ws"):
        cfg = LoopConfig(env_id="Acrobot-v1", url=url, episodes=1, seed=5, transport=transport)
        result = run_loops(cfg)
        actions[transport] = result.column("action")
        assert result.config.model == "acrobot"
        assert all(e == "" for e in result.column("error"))
    assert len(actions["ws"]) == len(actions["http"]) > 0
    assert actions["ws"] == actions["http"]
    assert {m for m, _ in state.received} == {"acrobot"}
    assert all(len(obs) == 6 for _, obs in state.received)


def test_rate_hz_paces_the_loop_and_counts_late_actions(server):
    state, url = server
    cfg = LoopConfig(env_id="CartPole-v1", url=url, episodes=1, rate_hz=100.0, max_steps=25)
    result = run_loops(cfg)
    assert result.wall_s >= 24 * 0.010  # 25 periods of 10 ms, the first starts at once
    assert sum(result.column("late")) < 25 // 2  # answers take ~1 ms of a 10 ms period

    state.delay_s, state.delay_next = 0.015, 10**6  # every answer takes 15 ms > 10 ms
    result = run_loops(cfg)
    summary = summarize(result)
    assert summary["deadline"]["misses"] == summary["steps"] == 25
    assert summary["deadline"]["miss_rate"] == 1.0
    assert summary["deadline"]["period_us"] == pytest.approx(10_000)


def test_k_clients_run_concurrently_with_distinct_episode_numbers(server):
    state, url = server
    state.delay_s, state.delay_next = 0.010, 10**6
    cfg = LoopConfig(env_id="CartPole-v1", url=url, episodes=2, seed=100, clients=3, max_steps=10)
    result = run_loops(cfg)
    assert len(result.rows) == 3 * 2 * 10
    assert sorted(e.episode for e in result.episodes) == [0, 1, 2, 3, 4, 5]
    assert sorted(e.seed for e in result.episodes) == [100, 101, 102, 103, 104, 105]
    assert set(result.column("client")) == {0, 1, 2}
    # 60 answers of 10 ms each: one after another they would need at least 600 ms
    assert result.wall_s < 0.45


# --- failures ---------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path):
    url = dead_url()
    cfg = LoopConfig(env_id="CartPole-v1", url=url, episodes=1)
    t0 = time.monotonic()
    with pytest.raises(PreflightError, match="no s2loop server answers at .*s2loop serve"):
        run_and_report(cfg, tmp_path, progress=False, wait_s=0.3)
    assert time.monotonic() - t0 < 3
    assert not (tmp_path / "steps.csv").exists()


def test_connection_failures_are_retried_a_bounded_number_of_times():
    client = HttpActClient(dead_url(), "cartpole", retry=RetryPolicy(retries=2, backoff_s=0.05))
    t0 = time.monotonic()
    with pytest.raises(ActError, match="after 3 attempts") as info:
        client.act([0.0, 0.0, 0.0, 0.0])
    elapsed = time.monotonic() - t0
    assert info.value.kind == "unavailable"
    assert 0.05 + 0.10 <= elapsed < 2.0  # backed off 50 ms then 100 ms, then gave up


def test_not_ready_server_is_reported_as_not_ready(server):
    state, url = server
    state.ready = False
    with pytest.raises(Exception, match="not ready after .*503.*warming up"):
        wait_ready(url, timeout_s=0.3, poll_s=0.05)


def test_unknown_model_is_refused_before_the_first_step(server, tmp_path):
    _, url = server
    cfg = LoopConfig(env_id="CartPole-v1", url=url, model="nope")
    with pytest.raises(PreflightError, match=r"'nope'.*\['acrobot', 'cartpole'\]"):
        run_and_report(cfg, tmp_path, progress=False)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_a_timed_out_step_is_counted_once_and_the_loop_goes_on(server, transport):
    state, url = server
    state.delay_s, state.delay_next = 0.3, 1
    cfg = LoopConfig(
        env_id="CartPole-v1", url=url, episodes=1, transport=transport, timeout_s=0.1, max_steps=8
    )
    result = run_loops(cfg)
    errors = result.column("error")
    assert errors == ["timeout"] + [""] * 7
    assert len(state.received) == 8  # the timed-out request was not sent again
    assert result.column("action")[0] == 0  # nothing to hold yet: action 0
    assert not result.aborted


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_busy_server_is_retried_and_the_retries_are_recorded(server, transport):
    state, url = server
    state.failures = [(429, "queue_full"), (429, "queue_full")]
    client_cls = HttpActClient if transport == "http" else WsActClient
    with client_cls(url, "cartpole", retry=RetryPolicy(retries=3, backoff_s=0.001)) as client:
        answer = client.act(np.zeros(4, np.float32))
        assert answer.retries == 2
        assert answer.action == 0
        assert len(state.received) == 3
        state.failures = [(429, "queue_full")] * 5
        with pytest.raises(ActError) as info:
            client.act([0.0, 0.0, 0.0, 0.0])
        assert info.value.kind == "overloaded"
        assert len(state.received) == 3 + 4  # first try + 3 retries, then it gave up


def test_ws_error_answer_keeps_the_connection_usable(server):
    _, url = server
    with WsActClient(url, "nope") as bad:
        with pytest.raises(ActError, match="no 'nope'") as info:
            bad.act([0.0, 0.0, 0.0, 0.0])
        assert info.value.kind == "rejected"
        ws = bad._ws
        bad.model, bad._prefix = "cartpole", b'{"model":"cartpole","observation":'
        assert bad.act([0.0, 0.0, 0.1, 0.0]).action == 1
        assert bad._ws is ws  # same connection


def test_a_server_that_stops_answering_aborts_the_run_after_consecutive_failures(server, tmp_path):
    state, url = server
    state.failures = [(503, "backend_error")] * 200
    cfg = LoopConfig(
        env_id="CartPole-v1",
        url=url,
        episodes=3,
        retry=RetryPolicy(retries=1, backoff_s=0.001),
        max_consecutive_errors=4,
    )
    result, summary = run_and_report(cfg, tmp_path, progress=False)
    assert summary["errors"] == {"unavailable": 4}
    assert len(state.received) == 4 * 2  # each failed step: one try + one retry
    assert len(result.aborted) == 1 and "4 steps in a row" in result.aborted[0]
    assert summary["episodes"] == 0
    assert len(read_csv(tmp_path / "steps.csv")) == 4


# --- command line -----------------------------------------------------------------------------


def test_run_command_writes_results_and_prints_the_table(server, tmp_path):
    from s2loop.cli import app

    _, url = server
    out = tmp_path / "out"
    args = ["run", "--env", "CartPole-v1", "--episodes", "2", "--url", url, "--out", str(out)]
    args += ["--max-steps", "30", "--transport", "ws", "--clients", "2", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "RTT p50" in res.output and "steps/s aggregate" in res.output
    assert len(read_csv(out / "steps.csv")) == 2 * 2 * 30
    assert json.loads((out / "summary.json").read_text())["clients"] == 2


def test_run_command_exits_2_with_a_message_when_no_server(tmp_path):
    from s2loop.cli import app

    res = CliRunner().invoke(
        app, ["run", "--url", dead_url(), "--wait", "0.2", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert "no s2loop server answers" in res.output


def test_summary_table_has_one_column_per_run(server):
    _, url = server
    summaries = []
    for transport in ("http", "ws"):
        cfg = LoopConfig(
            env_id="CartPole-v1", url=url, episodes=1, transport=transport, max_steps=10
        )
        summaries.append(summarize(run_loops(cfg)))
    table = summary_table(summaries)
    assert [c.header for c in table.columns] == ["", "cartpole http", "cartpole ws"]
    labels = list(table.columns[0].cells)
    assert {"RTT p50 (µs)", "RTT p99 (µs)", "deadline misses", "return mean ± std"} <= set(labels)
    returns = labels.index("return mean ± std")
    assert [list(c.cells)[returns] for c in table.columns[1:]] == ["10.0 ± 0.0"] * 2


def test_clients_package_imports_neither_service_nor_hw():
    code = (
        "import sys, clients.cli, clients.demo, clients.loop, clients.report, clients.session, "
        "clients.transport\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'hw', 'torch'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
