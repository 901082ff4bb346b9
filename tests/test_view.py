"""Rerun views (``clients/view.py``): ``s2loop run --view FILE.rrd --trace`` against the
real server, read back with Rerun's own reader (entities, one row per step, the
timelines); several clients as entity roots; the web viewer served over HTTP; Rerun's
usage analytics turned off unless the user turns them on."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

rr = pytest.importorskip("rerun", reason="the view extra (rerun-sdk) is not installed")

from clients.demo import ServerProcess, free_port  # noqa: E402
from clients.loop import run_loops  # noqa: E402
from clients.view import (  # noqa: E402
    ViewTarget,
    analytics_off,
    close_stream,
    open_stream,
    parse_target,
)
from tests.test_clients import Scripted  # noqa: E402

READY_TIMEOUT_S = 180

RUN_ENTITIES = {
    "/env/frame",
    "/env/observation/cart_position",
    "/env/observation/cart_velocity",
    "/env/observation/pole_angle",
    "/env/observation/pole_angular_velocity",
    "/policy/q_values",
    "/policy/action",
    "/latency/round_trip_us",
    "/latency/server_us",
    "/chip/time_ms",
}
TRACE_ENTITIES = {
    "/spikes/input",
    "/spikes/fc1",
    "/spikes/fc2",
    "/spikes/out",
    "/spikes/output_q",
}


def read_rrd(path: Path) -> dict[str, dict[str, list[int]]]:
    """Per entity: its rows' values on each timeline (``step``, ``episode``), read back
    with Rerun's own reader."""
    from rerun.chunk import RrdReader

    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for chunk in RrdReader(path).store().stream().to_chunks():
        if chunk.is_static:
            continue
        batch = chunk.to_record_batch()
        for timeline in ("step", "episode"):
            out[chunk.entity_path][timeline].extend(batch.column(timeline).to_pylist())
    return out


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    from hw.artifact import save_artifact
    from hw.synthetic import random_artifact

    d = tmp_path_factory.mktemp("view-models")
    save_artifact(random_artifact(name="cartpole", seed=1), d / "cartpole.s2l")
    with ServerProcess(d, log_path=d / "server.log") as server:
        server.wait_ready(READY_TIMEOUT_S)
        yield server


def test_run_view_file_holds_every_entity_with_one_row_per_step(live_server, tmp_path):
    from s2loop.cli import app

    rrd = tmp_path / "run.rrd"
    out = tmp_path / "out"
    args = ["run", "--url", live_server.url, "--episodes", "2", "--max-steps", "25",
            "--view", str(rrd), "--trace", "--out", str(out), "--no-progress"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with open(out / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    n = len(steps)
    assert n > 10
    entities = read_rrd(rrd)
    assert set(entities) == RUN_ENTITIES | TRACE_ENTITIES
    for name, timelines in entities.items():
        assert sorted(timelines["step"]) == list(range(n)), name  # one row per step
        by_step = dict(zip(timelines["step"], timelines["episode"], strict=True))
        assert [by_step[i] for i in range(n)] == [int(s["episode"]) for s in steps], name


def test_a_traced_step_logs_the_answers_rasters(live_server, tmp_path):
    """The /spikes tensors are the answer's trace: the output_q raster's last row is the
    step's q_values."""
    from rerun.chunk import RrdReader

    from clients.loop import LoopConfig

    rrd = tmp_path / "one.rrd"
    cfg = LoopConfig(env_id="CartPole-v1", url=live_server.url, episodes=1, max_steps=3,
                     view=str(rrd), trace=True)  # fmt: skip
    result = run_loops(cfg)
    q_rows = [[float(x) for x in q.split()] for q in result.column("q_values")]
    tensors = {}
    for chunk in RrdReader(rrd).store().stream().to_chunks():
        if chunk.entity_path == "/spikes/output_q":
            batch = chunk.to_record_batch()
            col = batch.column("Tensor:data").to_pylist()
            for step, cell in zip(batch.column("step").to_pylist(), col, strict=True):
                tensors[step] = cell
    assert sorted(tensors) == [0, 1, 2]
    for step, cell in tensors.items():
        data = cell[0]
        assert data["shape"] == [16, 2] and data["names"] == ["tick", "action"]
        values = np.asarray(data["buffer"], np.float32).reshape(data["shape"])
        np.testing.assert_allclose(values[-1], q_rows[step], rtol=1e-6)


def test_several_clients_are_several_entity_roots(tmp_path):
    rrd = tmp_path / "two.rrd"
    script = Scripted()
    cfg = script.config(env_id="CartPole-v1", episodes=1, clients=2, max_steps=5, view=str(rrd))
    result = run_loops(cfg)
    assert result.view == str(rrd)
    entities = read_rrd(rrd)
    for k in (0, 1):
        assert f"/client{k}/policy/action" in entities
        assert sorted(entities[f"/client{k}/env/frame"]["step"]) == list(range(5))
    assert not any(e.startswith("/policy") for e in entities)


def test_view_targets_are_desktop_web_or_an_rrd_file():
    assert parse_target("") == ViewTarget("desktop")
    assert parse_target("web", port=9999) == ViewTarget("web", port=9999)
    assert parse_target("out/run.rrd") == ViewTarget("file", Path("out/run.rrd"))
    with pytest.raises(ValueError, match="FILE.rrd"):
        parse_target("run.mp4")


def _analytics(env: dict) -> dict:
    cmd = [sys.executable, "-m", "rerun_cli", "analytics", "config"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_rerun_analytics_are_off_unless_the_user_turns_them_on(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("S2LOOP_VIEW_ANALYTICS", raising=False)
    monkeypatch.delenv("CI", raising=False)  # Rerun itself keeps quiet on CI
    env = dict(os.environ)
    assert _analytics(env)["analytics_enabled"] is True  # Rerun's own default
    assert analytics_off() is True
    assert _analytics(env)["analytics_enabled"] is False
    subprocess.run([sys.executable, "-m", "rerun_cli", "analytics", "enable"], env=env, check=True)
    monkeypatch.setenv("S2LOOP_VIEW_ANALYTICS", "1")  # the user's choice is left alone
    assert analytics_off() is False
    assert _analytics(dict(os.environ))["analytics_enabled"] is True


def test_the_web_viewer_is_served_over_http(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    port = free_port()
    rec, url = open_stream(ViewTarget("web", port=port), "s2loop-test", "web-test")
    try:
        assert url.startswith(f"http://127.0.0.1:{port}/?url=rerun+http://127.0.0.1:")
        grpc_port = int(url.split("127.0.0.1:")[2].split("/")[0])
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "re_viewer_bg.wasm" in page.text
        # the page may reach only itself and the recording: the browser refuses the web
        # viewer's analytics (Rerun's servers), which it has no switch for
        policy = page.headers["content-security-policy"]
        assert f"connect-src 'self' http://127.0.0.1:{grpc_port}" in policy
        assert "rerun.io" not in policy
        wasm = httpx.get(f"http://127.0.0.1:{port}/re_viewer_bg.wasm", timeout=30)
        assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
        assert wasm.content[:4] == b"\0asm"
    finally:
        close_stream(rec)


def test_replay_view_logs_live_shadow_and_replayed_answers_per_episode(tmp_path):
    """A flight recording with a shadow model and traced answers, logged by
    ``s2loop replay DIR --view FILE.rrd``: one row per recorded answer, the shadow's
    answers beside the live ones, a text line for each disagreement."""
    import pyarrow.parquet as pq

    from hw.artifact import save_artifact
    from hw.synthetic import random_artifact
    from s2loop.cli import app as cli
    from tests.test_recorder import cartpole_observations, serve_with_shadow

    models = tmp_path / "models"
    models.mkdir()
    save_artifact(random_artifact(seed=1, name="cartpole"), models / "cartpole.s2l")
    save_artifact(random_artifact(seed=9, name="cartpole"), tmp_path / "candidate.s2l")
    rec = tmp_path / "rec"
    bodies = [
        {"model": "cartpole", "observation": obs, "episode_id": f"e{i // 20}", "step": i % 20,
         "trace": i % 10 == 0}
        for i, obs in enumerate(cartpole_observations(40))
    ]  # fmt: skip
    serve_with_shadow(models, tmp_path / "candidate.s2l", rec, bodies)
    # the server's graceful stop wrote every table
    rrd = tmp_path / "replay.rrd"
    res = CliRunner().invoke(cli, ["replay", str(rec), "--models", str(models), "--view", str(rrd)])
    assert res.exit_code == 0, res.output
    entities = read_rrd(rrd)
    for name in ("/policy/action", "/policy/q_values", "/shadow/agree", "/shadow/action",
                 "/replay/action", "/env/observation/pole_angle"):  # fmt: skip
        assert sorted(entities[name]["step"]) == list(range(40)), name
        assert sorted(entities[name]["episode"]) == [0] * 20 + [1] * 20, name
    assert sorted(entities["/spikes/fc1"]["step"]) == [0, 10, 20, 30]  # the traced ones
    shadow_rows = pq.read_table(sorted(rec.glob("shadow-*.parquet"))).to_pylist()
    disagreements = sum(not r["agree"] for r in shadow_rows)
    assert 0 < disagreements < 40
    assert len(entities["/shadow/disagreements"]["step"]) == disagreements


def test_a_bare_view_option_means_the_desktop_viewer():
    from s2loop.cli import fill_optional_values

    assert fill_optional_values(["run", "--view"]) == ["run", "--view", "desktop"]
    assert fill_optional_values(["run", "--view", "--trace"]) == [
        "run", "--view", "desktop", "--trace"
    ]  # fmt: skip
    assert fill_optional_values(["run", "--view", "web"]) == ["run", "--view", "web"]
    assert fill_optional_values(["replay", "rec", "--view", "x.rrd"])[-1] == "x.rrd"


def test_the_desktop_viewer_without_a_display_is_a_clear_error(tmp_path, monkeypatch):
    from clients.view import ViewUnavailable

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the display check is Linux's")
    with pytest.raises(ViewUnavailable, match="--view web or --view FILE.rrd"):
        open_stream(ViewTarget("desktop"), "s2loop-test", "desk")


def test_without_rerun_a_view_says_how_to_install_it():
    """The serving install (``make demo``) has no Rerun: --view then says what to install."""
    code = (
        "import sys; sys.modules['rerun'] = None\n"
        "from clients.view import ViewUnavailable, rerun\n"
        "try:\n    rerun()\nexcept ViewUnavailable as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 's2loop[view]'" in out.stdout
