"""clients/ against the real server: ``s2loop serve`` as a subprocess on a free loopback
port, serving untrained random stand-ins named cartpole and acrobot (not policies: the
returns here say nothing; the wiring, timing fields and shutdown do)."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from typer.testing import CliRunner

pytest.importorskip("service.app", reason="service/ not installed")

from clients.demo import DemoConfig, ServerFailed, ServerProcess, run_demo
from clients.loop import LoopConfig, RetryPolicy, run_loops
from clients.session import run_and_report

READY_TIMEOUT_S = 180  # a fresh checkout compiles the numba kernels on first start


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from hw.artifact import save_artifact
    from hw.synthetic import random_artifact

    d = tmp_path_factory.mktemp("models")
    save_artifact(random_artifact(name="cartpole", seed=1), d / "cartpole.s2l")
    save_artifact(
        random_artifact(
            name="acrobot",
            seed=2,
            env_id="Acrobot-v1",
            obs_scale=[1, 1, 1, 1, 12.6, 28.3],
            actions=3,
        ),
        d / "acrobot.s2l",
    )
    return d


@pytest.fixture(scope="module")
def live_server(models_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess(models_dir, log_path=log) as server:
        server.wait_ready(READY_TIMEOUT_S)
        yield server
    assert server.proc.returncode == 0, server.log_tail()  # SIGINT: graceful exit


def test_http_and_ws_against_the_real_server_agree_and_carry_timing(live_server, tmp_path):
    actions = {}
    for transport in ("http", "ws"):
        cfg = LoopConfig(
            env_id="CartPole-v1", url=live_server.url, episodes=2, seed=7, transport=transport
        )
        result, summary = run_and_report(cfg, tmp_path / transport, progress=False)
        actions[transport] = result.column("action")
        assert summary["errors"] == {} and not summary["aborted"]
        assert summary["backends"] == ["emulator"] and summary["fallback_steps"] == 0
        for name in ("rtt_us", "server_us", "backend_us", "chip_us", "energy_uj", "ticks"):
            values = result.column(name)
            assert all(math.isfinite(v) and v > 0 for v in values), name
        # the server's own time is part of the round trip the client measured
        assert all(
            r >= s for r, s in zip(result.column("rtt_us"), result.column("server_us"), strict=True)
        )
        assert summary["model_info"]["observation_size"] == 4
    assert actions["http"] == actions["ws"]  # same seeds, deterministic emulator


def test_acrobot_model_gets_six_observations_and_three_actions(live_server):
    cfg = LoopConfig(env_id="Acrobot-v1", url=live_server.url, episodes=1, max_steps=40)
    result = run_loops(cfg)
    assert len(result.rows) == 40
    assert set(result.column("action")) <= {0, 1, 2}
    assert all(e == "" for e in result.column("error"))


def test_a_server_killed_mid_run_aborts_the_loop_with_a_bounded_wait(models_dir, tmp_path):
    with ServerProcess(models_dir, log_path=tmp_path / "server.log") as server:
        server.wait_ready(READY_TIMEOUT_S)
        cfg = LoopConfig(
            env_id="Acrobot-v1",
            url=server.url,
            episodes=50,
            rate_hz=200.0,
            retry=RetryPolicy(retries=2, backoff_s=0.02),
            max_consecutive_errors=3,
        )
        box = {}
        runner = threading.Thread(target=lambda: box.update(result=run_loops(cfg)))
        runner.start()
        time.sleep(0.5)
        server.proc.kill()
        runner.join(30)
        assert not runner.is_alive(), "the loop kept retrying a dead server"
    result = box["result"]
    assert len(result.aborted) == 1 and "3 steps in a row" in result.aborted[0]
    errors = [e for e in result.column("error") if e]
    assert errors == ["unavailable"] * 3
    assert len(result.rows) > 3  # it ran before the kill


def test_demo_command_serves_runs_both_tasks_both_transports_and_stops(models_dir, tmp_path):
    from s2loop.cli import app

    out = tmp_path / "demo-out"
    args = ["demo", "--models", str(models_dir), "--out", str(out), "--episodes", "1"]
    res = CliRunner().invoke(app, [*args, "--rate-hz", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "s2loop demo" in res.output and "RTT p50" in res.output
    assert "exit code 0" in res.output  # the server shut down cleanly on SIGINT
    summary = json.loads((out / "summary.json").read_text())
    labels = [(r["model"], r["transport"]) for r in summary["runs"]]
    assert labels == [
        ("cartpole", "http"),
        ("cartpole", "ws"),
        ("acrobot", "http"),
        ("acrobot", "ws"),
    ]
    assert summary["server_exit_code"] == 0
    for name in ("latency.png", "returns.png", "server.log"):
        assert (out / name).stat().st_size > 0
    for model, transport in labels:
        run_dir = out / f"{model}-{transport}"
        assert {p.name for p in run_dir.iterdir()} == {
            "steps.csv",
            "summary.json",
            "latency.png",
            "returns.png",
        }


def test_demo_explains_an_empty_models_folder(tmp_path):
    with pytest.raises(ServerFailed, match=r"no model artifacts \(\*\.s2l\) in"):
        run_demo(DemoConfig(models=tmp_path, out=tmp_path / "out", progress=False))


def test_a_server_that_dies_at_start_is_reported_with_its_output(models_dir, tmp_path):
    server = ServerProcess(models_dir, log_path=tmp_path / "s.log", extra_args=["--no-such-flag"])
    with server, pytest.raises(ServerFailed, match="exited with code 2") as info:
        server.wait_ready(30)
    assert "no-such-flag" in str(info.value)  # the server's own error text is in the message


def test_unknown_model_is_refused_before_the_first_step(live_server, tmp_path):
    from clients.session import PreflightError

    cfg = LoopConfig(env_id="CartPole-v1", url=live_server.url, model="nope")
    with pytest.raises(PreflightError, match=r"'nope'.*\['acrobot', 'cartpole'\]"):
        run_and_report(cfg, tmp_path, progress=False)


def test_a_server_without_models_is_reported_as_not_ready(tmp_path):
    from s2loop_client.server import ServerNotReady, wait_ready

    empty = tmp_path / "empty"
    empty.mkdir()
    server = ServerProcess(empty, log_path=tmp_path / "log")
    match = "not ready after .*503.*no models loaded"
    with server, pytest.raises(ServerNotReady, match=match):
        wait_ready(server.url, timeout_s=READY_TIMEOUT_S / 10, poll_s=0.1)
