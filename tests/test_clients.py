"""clients/ (``s2loop run``'s loops, summary, plots) driven through the SDK's
``MockTransport``: a scripted policy answers like the service (timing fields, error
bodies from the wire contract, failures and delays on demand) and records what it
received, so the tests check what the loop really sent. The same loops against the
real server: ``tests/test_clients_e2e.py``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

from clients.demo import free_port
from clients.loop import STEP_FIELDS, LoopConfig, RetryPolicy, model_name_for, run_loops
from clients.report import summarize, summary_table
from clients.session import PreflightError, run_and_report
from s2loop_client import MockTransport, PolicyClient, Timeout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def policy(model: str, obs: list[float]) -> int:
    if model == "cartpole":  # lean towards the falling side: keeps the pole up for 500 steps
        return int(obs[2] + 0.5 * obs[3] > 0)
    return 2 if obs[5] > 0 else 0  # acrobot: push with the second joint's velocity


class Scripted:
    """The scripted server behind a MockTransport; tests script failures and delays."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[float]]] = []
        self.requests: list[dict] = []
        self.failures: list[tuple[int, str]] = []  # next answers: (status, kind)
        self.timeouts = 0  # next requests that time out on the client side
        self.delay_s = 0.0
        self.meet = 0  # the first this-many requests wait for each other (concurrency)
        self.met = 0  # how many of them met
        self._barrier: threading.Barrier | None = None
        self.lock = threading.Lock()

    def handler(self, route: str, request: dict) -> tuple[int, dict]:
        with self.lock:
            self.received.append((request["model"], list(request["observation"])))
            self.requests.append(request)
            if self.timeouts:
                self.timeouts -= 1
                raise Timeout("timeout", "no answer within the client's timeout")
            failure = self.failures.pop(0) if self.failures else None
            meets = self.meet > 0
            if meets:
                self.meet -= 1
                if self._barrier is None:
                    self._barrier = threading.Barrier(self.meet + 1)
                barrier = self._barrier
        if meets:  # only requests in flight together can all pass
            try:
                barrier.wait(timeout=10)
                with self.lock:
                    self.met += 1
            except threading.BrokenBarrierError:
                pass
        if self.delay_s:
            time.sleep(self.delay_s)
        if failure:
            status, kind = failure
            retry = {"retry_after_ms": 1} if status == 429 else {}
            return status, {"error": {"kind": kind, "message": f"scripted {status}", **retry}}
        obs = request["observation"]
        timing = {"server_us": 40.0, "compute_us": 25.0, "ticks": 16, "chip_time_s": 0.016,
                  "energy_j": 0.004}  # fmt: skip
        return 200, {
            "model": request["model"],
            "action": policy(request["model"], obs),
            "q_values": [0.0, 1.0],
            "backend": "scripted",
            "fallback": len(self.received) % 10 == 0,
            "timing": timing,
        }

    def config(self, **kw) -> LoopConfig:
        """A LoopConfig whose clients talk to this script (codec: msgpack or json)."""
        codec = kw.pop("codec", "json")
        cfg = LoopConfig(url="http://scripted", **kw)

        def factory() -> PolicyClient:
            mock = MockTransport(self.handler, codec)
            return PolicyClient(cfg.url, cfg.model or "", transport_impl=mock)

        cfg.policy_factory = factory
        return cfg


@pytest.fixture
def server():
    return Scripted()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # a port nobody listens on


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# --- pure helpers -----------------------------------------------------------------------------


def test_default_model_name_comes_from_the_env_id():
    assert model_name_for("CartPole-v1") == "cartpole"
    assert model_name_for("Acrobot-v1") == "acrobot"
    assert LoopConfig(env_id="Acrobot-v1", url="x").model == "acrobot"
    assert LoopConfig(env_id="Acrobot-v1", url="x", model="mine").model == "mine"
    with pytest.raises(ValueError, match="transport"):
        LoopConfig(env_id="Acrobot-v1", url="x", transport="carrier-pigeon")


# --- full runs --------------------------------------------------------------------------------


def test_run_writes_csv_summary_and_plots_and_solves_with_a_good_policy(server, tmp_path):
    cfg = server.config(env_id="CartPole-v1", episodes=2, seed=3)
    run_and_report(cfg, tmp_path, progress=False)

    rows = read_csv(tmp_path / "steps.csv")
    assert tuple(rows[0]) == STEP_FIELDS
    assert len(rows) == 1000 == len(server.received)  # 2 episodes x 500 steps, one request each
    assert [int(r["seed"]) for r in rows[::500]] == [3, 4]
    assert {r["backend"] for r in rows} == {"scripted"}
    assert rows[0]["server_us"] == "40" and rows[0]["backend_us"] == "25"
    assert float(rows[0]["chip_us"]) == pytest.approx(16000)
    assert float(rows[0]["energy_uj"]) == pytest.approx(4000)
    assert all(float(r["rtt_us"]) > 0 for r in rows)
    assert sum(int(r["fallback"]) for r in rows) == 100  # every 10th is flagged

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
    # each step tagged for the server's flight recorder, and joinable with it
    first, second = server.requests[0], server.requests[1]
    assert first["episode_id"] == rows[0]["episode_id"] == f"{cfg.run_id}-0"
    assert (first["step"], second["step"]) == (0, 1)
    np.testing.assert_allclose(
        [float(x) for x in rows[0]["observation"].split()], first["observation"], rtol=1e-6
    )
    assert rows[0]["q_values"] == "0 1"


def test_episode_i_is_reset_with_seed_s_plus_i(server, tmp_path):
    cfg = server.config(env_id="CartPole-v1", episodes=3, seed=11, max_steps=5)
    run_and_report(cfg, tmp_path, progress=False)
    firsts = [server.received[i * 5][1] for i in range(3)]
    env = gym.make("CartPole-v1")
    expected = [env.reset(seed=11 + i)[0] for i in range(3)]
    np.testing.assert_array_equal(np.asarray(firsts, np.float32), np.asarray(expected))


def test_both_codecs_drive_identical_episodes(server):
    actions = {}
    for codec in ("json", "msgpack"):
        result = run_loops(server.config(env_id="Acrobot-v1", episodes=1, seed=5, codec=codec))
        actions[codec] = result.column("action")
        assert result.config.model == "acrobot"
        assert all(e == "" for e in result.column("error"))
    assert len(actions["json"]) == len(actions["msgpack"]) > 0
    assert actions["json"] == actions["msgpack"]
    assert {m for m, _ in server.received} == {"acrobot"}
    assert all(len(obs) == 6 for _, obs in server.received)


def test_rate_hz_paces_the_loop_and_counts_late_actions(server):
    cfg = server.config(env_id="CartPole-v1", episodes=1, rate_hz=100.0, max_steps=25)
    result = run_loops(cfg)
    assert result.wall_s >= 24 * 0.010  # 25 periods of 10 ms, the first starts at once
    assert sum(result.column("late")) < 25 // 2  # answers take microseconds of 10 ms

    server.delay_s = 0.015  # every answer takes 15 ms > 10 ms
    summary = summarize(run_loops(cfg))
    assert summary["deadline"]["misses"] == summary["steps"] == 25
    assert summary["deadline"]["miss_rate"] == 1.0
    assert summary["deadline"]["period_us"] == pytest.approx(10_000)


def test_k_clients_run_concurrently_with_distinct_episode_numbers(server):
    server.meet = 3  # each client's first request waits until all three are in flight
    cfg = server.config(env_id="CartPole-v1", episodes=2, seed=100, clients=3, max_steps=10)
    result = run_loops(cfg)
    assert len(result.rows) == 3 * 2 * 10
    assert sorted(e.episode for e in result.episodes) == [0, 1, 2, 3, 4, 5]
    assert sorted(e.seed for e in result.episodes) == [100, 101, 102, 103, 104, 105]
    assert set(result.column("client")) == {0, 1, 2}
    assert server.met == 3  # one after another, the first request would wait alone


# --- failures ---------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path):
    cfg = LoopConfig(env_id="CartPole-v1", url=dead_url(), episodes=1)
    with pytest.raises(PreflightError, match="no s2loop server answers at .*s2loop serve"):
        run_and_report(cfg, tmp_path, progress=False, wait_s=0.3)
    assert not (tmp_path / "steps.csv").exists()


def test_a_timed_out_step_is_counted_once_and_the_loop_goes_on(server):
    server.timeouts = 1
    result = run_loops(server.config(env_id="CartPole-v1", episodes=1, max_steps=8))
    assert result.column("error") == ["timeout"] + [""] * 7
    assert len(server.received) == 8  # the timed-out request was not sent again
    assert result.column("action")[0] == 0  # nothing to hold yet: action 0
    assert not result.aborted


def test_busy_server_is_retried_after_its_retry_after_and_the_retries_are_recorded(server):
    server.failures = [(429, "queue_full"), (429, "queue_full")]
    cfg = server.config(env_id="CartPole-v1", episodes=1, max_steps=3, retry=RetryPolicy(retries=3))
    result = run_loops(cfg)
    assert result.column("retries") == [2, 0, 0] and result.column("error") == ["", "", ""]
    assert len(server.received) == 3 + 2
    server.received.clear()
    server.failures = [(429, "queue_full")] * 5
    result = run_loops(cfg)
    assert result.column("error") == ["overloaded", "", ""]
    assert result.column("retries")[1:] == [1, 0]  # the fifth 429 fell on step 2
    assert len(server.received) == 4 + 2 + 1  # step 1: first try + 3 retries, gave up


def test_a_refused_observation_is_a_rejected_step(server):
    server.failures = [(422, "validation_error")]
    result = run_loops(server.config(env_id="CartPole-v1", episodes=1, max_steps=2))
    assert result.column("error") == ["rejected", ""]


def test_a_server_that_stops_answering_aborts_the_run_after_consecutive_failures(server, tmp_path):
    server.failures = [(503, "backend_error")] * 200
    cfg = server.config(
        env_id="CartPole-v1",
        episodes=3,
        retry=RetryPolicy(retries=1, backoff_s=0.001),
        max_consecutive_errors=4,
    )
    result, summary = run_and_report(cfg, tmp_path, progress=False)
    assert summary["errors"] == {"unavailable": 4}
    assert len(server.received) == 4 * 2  # each failed step: one try + one retry
    assert len(result.aborted) == 1 and "4 steps in a row" in result.aborted[0]
    assert summary["episodes"] == 0
    assert len(read_csv(tmp_path / "steps.csv")) == 4


# --- command line -----------------------------------------------------------------------------


def test_run_command_exits_2_with_a_message_when_no_server(tmp_path):
    from s2loop.cli import app

    res = CliRunner().invoke(
        app, ["run", "--url", dead_url(), "--wait", "0.2", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert "no s2loop server answers" in res.output


def test_summary_table_has_one_column_per_run(server):
    summaries = []
    for codec in ("json", "msgpack"):
        cfg = server.config(env_id="CartPole-v1", episodes=1, max_steps=10, codec=codec)
        cfg.transport = "ws" if codec == "msgpack" else "http"  # the label only
        summaries.append(summarize(run_loops(cfg)))
    table = summary_table(summaries)
    assert [c.header for c in table.columns] == ["", "cartpole http", "cartpole ws"]
    labels = list(table.columns[0].cells)
    assert {"RTT p50 (µs)", "RTT p99 (µs)", "deadline misses", "return mean ± std"} <= set(labels)
    returns = labels.index("return mean ± std")
    assert [list(c.cells)[returns] for c in table.columns[1:]] == ["10.0 ± 0.0"] * 2


def test_clients_package_imports_neither_service_nor_hw():
    code = (
        "import sys, clients.cli, clients.demo, clients.loop, clients.report, clients.session\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'hw', 'torch'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_options_are_generated_from_the_loop_config():
    """`s2loop run` declares no option of its own for a LoopConfig field: each one comes
    from the field (help, default, type), nested RetryPolicy included."""
    import dataclasses

    from clients.cli import config_from, options_from
    from s2loop.cli import app

    params = options_from(LoopConfig)
    built = config_from(LoopConfig, {p.name: p.default.default for p in params})
    default = LoopConfig()
    for f in dataclasses.fields(LoopConfig):
        if f.name != "run_id":
            assert getattr(built, f.name) == getattr(default, f.name), f.name
    assert {p.name for p in params} >= {"env_id", "url", "episodes", "retry_retries", "trace"}
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--env", "--timeout", "--retries", "--view-port", "--out", "--wait"):
        assert flag in help_text, flag
    bad = CliRunner().invoke(app, ["run", "--transport", "pigeon", "--wait", "0"])
    assert bad.exit_code == 2 and "transport must be one of" in bad.output
