"""Many robots, many boards: request coalescing on the (fake) board, replicas behind a
real load balancer (HAProxy from Debian's package), Kubernetes manifests."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.lb import haproxy_fleet, lb_status
from hw.artifact import load_artifact
from hw.emulator import EmulatorBackend
from service.app import create_app
from tests.test_service import OBS, make_settings, ready_client

OBS_SCALE = np.array([1.0, 1.5, 0.15, 1.5], np.float32)


async def _burst(app, bodies, stagger_s: float = 0.0, before=None):
    async with ready_client(app) as client:
        import spinnaker2.hardware as hardware

        hardware.RUN_LOG.clear()
        if before is not None:
            before(app)

        async def one(i, body):
            await asyncio.sleep(i * stagger_s)
            t = time.perf_counter()
            r = await client.post("/v1/act", json=body)
            return r.status_code, r.json(), time.perf_counter() - t

        out = await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        return out, len(hardware.RUN_LOG)


@pytest.mark.parametrize("window_ms", [None, 0.0])
def test_concurrent_requests_share_board_runs_and_each_gets_its_own_answer(
    fake_sdk, models_dir, monkeypatch, window_ms
):
    monkeypatch.setattr(fake_sdk.hardware, "RUN_OVERHEAD_S", 0.02)
    settings = make_settings(
        models_dir, backend="spinnaker2", fallback="none", deadline_ms=10_000,
        batch_window_ms=window_ms, queue_size=64,
    )  # fmt: skip
    app = create_app(settings)
    rng = np.random.default_rng(3)
    obs = (rng.normal(size=(32, 4)) * OBS_SCALE).astype(np.float32)
    bodies = [{"model": "cartpole", "observation": o.tolist()} for o in obs]
    out, runs = asyncio.run(_burst(app, bodies))
    with EmulatorBackend() as emu:
        emu.load(load_artifact(models_dir / "cartpole.s2l"))
        expected = emu.infer("cartpole", obs)
    for (status, answer, _), action, q in zip(
        out, expected.actions, expected.q_values, strict=True
    ):
        assert status == 200 and answer["backend"] == "spinnaker2"
        assert answer["action"] == action  # its own row, not a neighbour's
        np.testing.assert_allclose(answer["q_values"], q, rtol=1e-6)
    metrics = app.state.metrics.render().decode()
    if window_ms is None:  # the board's default: coalescing on
        assert runs <= 8, runs  # 32 requests (37 copies fit one run), not 32 runs
        assert "s2loop_coalesce_batch_size_count" in metrics
    else:
        assert runs == 32


def test_nobody_waits_for_a_batch_past_their_deadline(fake_sdk, models_dir, monkeypatch):
    """A window (60 s) far longer than the deadline (1 s): the batch leaves one call's
    estimated time (here set to 0.5 s; a run takes 20 ms) before the earliest deadline,
    not when the window closes, so every caller gets its answer."""
    monkeypatch.setattr(fake_sdk.hardware, "RUN_OVERHEAD_S", 0.02)
    settings = make_settings(
        models_dir, backend="spinnaker2", fallback="none", deadline_ms=1000, batch_window_ms=60_000
    )

    def estimate_half_a_second(app):
        app.state.service.primary.call_s = 0.5

    body = {"model": "cartpole", "observation": [0, 0, 0, 0]}
    out, runs = asyncio.run(_burst(create_app(settings), [body] * 3, before=estimate_half_a_second))
    assert [s for s, _, _ in out] == [200, 200, 200] and runs == 1


# ----------------------------------------------------------------------------- replicas


ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def fleet(models_dir, tmp_path_factory):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (.ci/run installs Debian's package)")
    from clients.demo import ServerProcess

    tmp = tmp_path_factory.mktemp("fleet")
    flag = tmp / "board-down"
    os.environ["S2LOOP_FLAKY_FLAG"] = str(flag)
    flaky = ["--backend", "tests.fleet_backends:FlakyBoard", "--degraded-status", "503",
             "--primary-retry-s", "0.5"]  # fmt: skip
    replicas = [
        ServerProcess(models_dir, log_path=tmp / f"r{i}.log", extra_args=flaky if i == 3 else [])
        for i in (1, 2, 3)
    ]
    try:
        with haproxy_fleet(haproxy, replicas, tmp) as lb:
            wait_for(lambda: _all_up(lb.stats, 3), 20, "every replica UP in HAProxy")
            yield {"url": lb.url, "stats": lb.stats, "replicas": replicas, "flag": flag}
    finally:
        os.environ.pop("S2LOOP_FLAKY_FLAG", None)


def _all_up(stats: str, n: int) -> bool:
    try:
        status = lb_status(stats)
    except httpx.HTTPError:
        return False
    return len(status) == n and all(s == "UP" for s in status.values())


def test_http_and_websocket_go_through_the_load_balancer(fleet):
    from s2loop_client import PolicyClient

    for transport in ("http", "ws"):
        with PolicyClient(fleet["url"], "cartpole", transport=transport) as policy:
            answers = [policy.act([0.01, -0.2, 0.03, 0.25]) for _ in range(20)]
        assert len({a.action for a in answers}) == 1 and not any(a.fallback for a in answers)


def test_a_degraded_replica_leaves_rotation_and_comes_back(fleet):
    import httpx as client

    flaky = fleet["replicas"][2]
    fleet["flag"].write_text("down")
    try:  # a request the board fails opens its breaker: /readyz says 503
        r = client.post(flaky.url + "/v1/act", json={"model": "cartpole", "observation": OBS})
        assert r.status_code == 200 and r.json()["fallback"] is True
        assert client.get(flaky.url + "/readyz").status_code == 503
        wait_for(lambda: lb_status(fleet["stats"])["replica3"].startswith("DOWN"), 10,
                 "replica3 DOWN")  # fmt: skip
    finally:
        fleet["flag"].unlink()
    wait_for(lambda: lb_status(fleet["stats"])["replica3"] == "UP", 5, "replica3 back UP")


def test_killing_a_replica_under_load_fails_no_request(fleet):
    """8 clients through HAProxy; one replica gets SIGKILL halfway: every request is
    answered (HAProxy retries the ones that got no answer on another replica), except
    one whose answer the replica was writing when it died: uvicorn writes the status line
    and headers, then the body, and a kill between the two cuts that answer after its
    headers, which no proxy can send again (seen once in six suite runs on a loaded
    machine). Those, at most one per request in flight, are the only failures allowed."""
    import threading

    from s2loop_client import PolicyClient

    stop = threading.Event()
    counts, failures = [0] * 8, []

    def loop(k: int) -> None:
        with PolicyClient(fleet["url"], "cartpole", timeout_s=5) as policy:
            while not stop.is_set():
                try:
                    policy.act([0.01 * k, -0.2, 0.03, 0.25])
                    counts[k] += 1
                except Exception as exc:  # every failure counts
                    failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    victim = fleet["replicas"][0]
    victim.proc.kill()  # SIGKILL: no goodbye
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(10)
    cut = [f for f in failures if "IncompleteRead(0 bytes read" in f]
    assert failures == cut and len(cut) <= len(threads), failures[:5]
    assert sum(counts) > 200  # it really was under load
    wait_for(lambda: lb_status(fleet["stats"])["replica1"].startswith("DOWN"), 3, "replica1 DOWN")


# ----------------------------------------------------------------------------- Kubernetes

K8S_VERSION = "1.30.0"  # the Kubernetes release the manifests are validated against


def _manifests() -> list[tuple[str, dict]]:
    import yaml

    out = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def test_kubernetes_manifests_validate_against_the_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _manifests()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
         "Service", "Service", "StatefulSet"]
    )  # fmt: skip
    for _name, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises, naming the field
    broken = copy.deepcopy(dict(docs)["deployment.yaml"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):  # the check does bite
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    import yaml

    listed = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (ROOT / "deploy" / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed["resources"]) == files


def test_manifests_probe_the_routes_the_server_has():
    docs = dict((d["kind"], d) for _, d in _manifests())
    for kind in ("Deployment", "StatefulSet"):
        container = docs[kind]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"] and container["resources"]["limits"]
    board = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    assert "board-${HOSTNAME##*-}" in board["command"][-1]
    env = {e["name"]: e.get("value") for e in board["env"]}
    assert env["S2LOOP_BACKEND"] == "spinnaker2" and env["S2LOOP_DEGRADED_STATUS"] == "503"
    from service.settings import Settings

    for e in docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]:
        assert e["name"].removeprefix("S2LOOP_").lower() in Settings.model_fields, e["name"]
