"""``s2loop sweep`` on Ray Tune: options checked before Ray starts, the search ranges,
and a smoke sweep on a real Ray cluster (``ray start --head`` as its own process)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.sweep import SETTINGS_BY_KEY, SweepConfig, SweepError, check
from clients.demo import free_port
from s2loop.cli import app

SMOKE_SETTINGS = ("dsqn-poisson-lif-t20", "distill-deterministic-if-t12")
K8S_VERSION = "1.30.0"  # as tests/test_fleet.py validates deploy/k8s


def test_unknown_setting_or_env_is_refused_before_ray_starts(tmp_path):
    for args, words in (
        (["--settings", "dsqn-poisson-lif-t20,nope"], "unknown settings ['nope']"),
        (["--env", "MountainCar-v0"], "no presets for ['MountainCar-v0']"),
        (["--seeds", "0,x"], "Error parsing --seeds"),
        (["--search", "optuna"], "one setting on one environment"),
    ):
        result = CliRunner().invoke(app, ["sweep", "--out", str(tmp_path / "s"), *args])
        assert result.exit_code == 2, result.output
        assert words in " ".join(result.output.split()), result.output
    assert not (tmp_path / "s").exists()  # nothing written, no Ray started


def test_a_sweep_folder_resumes_only_the_sweep_it_holds(tmp_path):
    first = SweepConfig(out=tmp_path, env=("CartPole-v1",), settings=SMOKE_SETTINGS, seeds=(0,))
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": first.spec()}))
    check(first)  # the same options: resumable
    other = SweepConfig(out=tmp_path, env=("CartPole-v1",), settings=SMOKE_SETTINGS, seeds=(1,))
    with pytest.raises(SweepError, match="holds a different grid"):
        check(other)


def test_search_ranges_name_train_options_and_hold_the_presets_values(tmp_path):
    from agent.options import PRESETS, SEARCH_SPACE, TrainConfig, preset_defaults
    from agent.sweep import parse_trial, trial_args

    for name in PRESETS:
        cfg = preset_defaults(name, TrainConfig, {"out": tmp_path})
        for option, r in SEARCH_SPACE[cfg.recipe].items():
            group, field = option.split(".")
            value = getattr(getattr(cfg, group), field)
            assert r.low <= value <= r.high, (name, option, value)
            assert isinstance(value, int) == r.integer, (name, option)
    # a drawn point reaches the typed config through the command's own parser
    setting = SETTINGS_BY_KEY["distill-deterministic-if-t12"]
    params = {"teacher.lr": 1.5e-3, "teacher.target_every": 321, "distill.margin": 3.0}
    args = trial_args("Acrobot-v1", setting, 4, tmp_path / "run", smoke=True, params=params)
    train, finetune = parse_trial(*args)
    assert (train.teacher.lr, train.teacher.target_every, train.distill.margin) == (
        1.5e-3,
        321,
        3.0,
    )
    assert train.env == "Acrobot-v1" and train.seed == 4 and train.snn.input_ticks == 12
    assert finetune.out == tmp_path / "run" / "model.s2l" and not finetune.card


def test_search_draws_stay_inside_the_declared_ranges_with_both_bounds():
    pytest.importorskip("ray", reason="ray is not installed (pip install 's2loop[train]')")
    from agent.options import SEARCH_SPACE
    from agent.sweep import search_space

    for recipe, ranges in SEARCH_SPACE.items():
        domains = search_space(recipe)
        assert set(domains) == set(ranges)
        for name, r in ranges.items():
            draws = [domains[name].sample() for _ in range(300)]
            assert all(r.low <= d <= r.high for d in draws), (recipe, name)
            if r.integer:  # tune's integer domains exclude their upper bound
                assert all(isinstance(d, int) for d in draws)
                assert domains[name].upper == r.high + 1 and domains[name].lower == r.low


# ------------------------------------------------------------------ a real Ray cluster

RAY_START_TIMEOUT_S = 90
SWEEP_TIMEOUT_S = 180  # a 2-trial smoke sweep: about 20 s on 2 busy cores


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster: ``ray start --head --block`` in its own session, token
    authentication on, its own temp dir; stopped by SIGTERM to that process (``--block``
    then stops what it started), never by ``ray stop`` (which would stop every Ray on
    the machine)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 's2loop[train]')")
    ray_exe = Path(sys.executable).with_name("ray")
    assert ray_exe.exists(), f"ray is importable but its command is not next to {sys.executable}"
    port = free_port("127.0.0.1")
    temp = Path(tempfile.mkdtemp(prefix="s2l-ray-", dir="/tmp"))  # short: socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env |= {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(temp / "ray-start.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        [str(ray_exe), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=false",
         "--disable-usage-stats", "--block"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT_S
        while "Ray runtime started" not in (temp / "ray-start.log").read_text():
            assert head.poll() is None, (temp / "ray-start.log").read_text()
            assert time.monotonic() < deadline, "ray start did not come up in time"
            time.sleep(0.3)
        raylet = next(temp.glob("session_*/logs/raylet.out")).read_text()
        node_id = re.search(r"Setting node ID node_id=([0-9a-f]+)", raylet).group(1)
        yield {"address": f"127.0.0.1:{port}", "node_id": node_id, "env": env}
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # our own session only
            head.wait(timeout=10)
        log.close()
        deadline, outlived = time.monotonic() + 20, False
        while _group_alive(head.pid):  # what ray start started goes with it
            if time.monotonic() > deadline:
                os.killpg(head.pid, signal.SIGKILL)  # our own session only
                outlived = True
                break
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
    assert not outlived, "processes of the test's Ray cluster outlived ray start"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _sweep(cluster: dict, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "s2loop.cli", "sweep", "--smoke", "--env", "CartPole-v1",
           "--settings", ",".join(SMOKE_SETTINGS), "--seeds", "0", "--out", str(out),
           "--address", cluster["address"]]  # fmt: skip
    return subprocess.run(
        cmd, env=cluster["env"], cwd=cwd, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )


def _tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.timeout(2 * SWEEP_TIMEOUT_S + RAY_START_TIMEOUT_S + 60)
def test_smoke_sweep_on_a_ray_cluster_retries_resumes_and_feeds_the_recipes_page(
    ray_cluster, tmp_path
):
    from agent.card import card_text
    from agent.sweep import read_results
    from bench.recipes import JSON_NAME, MD_NAME
    from hw.artifact import load_artifact

    out = tmp_path / "sweep"
    # a file where the distill trial's run folder goes: that trial fails, each attempt
    blocked = out / "runs" / "CartPole-v1" / "distill-deterministic-if-t12" / "seed0"
    blocked.parent.mkdir(parents=True)
    blocked.touch()
    first = _sweep(ray_cluster, out, tmp_path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    rows = {r["setting"]: r for r in read_results(out / "results.parquet")}
    assert rows["dsqn-poisson-lif-t20"]["status"] == "ok"
    failed = rows["distill-deterministic-if-t12"]
    assert failed["status"] == "error" and "FileExistsError" in failed["error"]
    assert failed["artifact"] is None and "FAILED CartPole-v1 distill" in first.stderr
    errors = next((out / "grid").glob("*distill*/error.txt")).read_text()  # Tune's own log
    assert re.findall(r"^Failure # (\d+)", errors, re.M) == ["1", "2"]  # retried once

    # the same command again: Tune restores the sweep; the failed trial runs again, the
    # finished one is kept as it was
    model = Path(rows["dsqn-poisson-lif-t20"]["artifact"])
    mtime = model.stat().st_mtime_ns
    blocked.unlink()
    again = _sweep(ray_cluster, out, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout and model.stat().st_mtime_ns == mtime
    rows = read_results(out / "results.parquet")
    assert {(r["setting"], r["seed"]) for r in rows} == {(s, 0) for s in SMOKE_SETTINGS}
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None, r
        assert r["node_id"] == ray_cluster["node_id"]  # ran on the cluster's node
        assert r["smoke"] and r["cpus"] == 1.0 and r["wall_s"] > 0
        run_dir = out / "runs" / "CartPole-v1" / r["setting"] / "seed0"
        assert Path(r["run_dir"]) == run_dir and Path(r["artifact"]) == run_dir / "model.s2l"
        artifact = load_artifact(r["artifact"])
        prov = artifact.provenance
        assert prov["evaluation"]["episodes"] == r["episodes"] == 3
        # the model names the sweep that made it, in its provenance and its card
        trial = f"CartPole-v1 {r['setting']} seed 0"
        assert prov["found_by"]["trial"] == trial
        assert prov["found_by"]["sweep"].startswith("s2loop sweep --smoke")
        assert f"(its trial {trial})" in card_text(artifact)
        assert prov["evaluation"]["emulator"]["mean"] == pytest.approx(r["return_8bit"])
        assert 0.0 <= r["agreement"] <= 1.0
        # training curves in the run folder itself, under CleanRL's and SB3's names
        assert {"charts/episodic_return", "losses/td_loss"} <= _tags(run_dir), r["setting"]

    # s2loop bench recipes renders the page from the sweep's results
    page = tmp_path / "page"
    args = ["bench", "recipes", "--results", str(out / "results.parquet"), "--out", str(page),
            "--quick", "--no-tick-sweep"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((page / JSON_NAME).read_text())
    assert report["quick"] and not report["missing"] and report["config"]["nodes"] == 1
    assert {r["variant"]["key"] for r in report["rows"]} == set(SMOKE_SETTINGS)
    dsqn = report["models"]["CartPole-v1/dsqn-poisson-lif-t20/seed0"]
    assert dsqn["alpha_decay"] == [pytest.approx(0.9)] and dsqn["ticks"] == 20 + 2
    for key, m in report["models"].items():
        assert m["synaptic_events_per_inference"] > 0 and m["v0_episode_length"] <= 200, key
    text = (page / MD_NAME).read_text()
    assert "Smoke sweep" in text and "dsqn · poisson · LIF · T=20" in text
    assert "--address " + ray_cluster["address"] in text  # the sweep's own command
    assert "## Targets" in text and "quoted, not measured here" in text


def test_raycluster_manifest_shares_one_volume_with_every_node_and_its_pods_validate():
    import yaml

    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    path = Path(__file__).resolve().parent.parent / "deploy" / "ray" / "raycluster.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    assert set(docs) == {"PersistentVolumeClaim", "RayCluster"}
    claim, cluster = docs["PersistentVolumeClaim"], docs["RayCluster"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes there
    kubernetes_validate.validate(claim, K8S_VERSION, strict=True)
    assert (
        cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["authOptions"]["mode"] == "token"
    )
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == "s2loop-train:latest"
        (mount,) = container["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert mount["mountPath"] == "/sweep"  # the same path on every node: --out /sweep/...
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                    "template": group["template"]}  # fmt: skip
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)
