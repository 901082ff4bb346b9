"""bench/: the summary helpers, and a tiny run of every suite section against real
servers (the floor and ``s2loop serve`` as subprocesses) that writes the page, the
JSON and the plots. Figures here are too few to mean anything; the test pins that
they are measured, consistent with each other, and written."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("service.app", reason="service/ not installed")
pytest.importorskip("torch", reason="the backends section compares with the torch reference")

from bench.common import CpuMeter, ratio, summarize_us, tree_cpu_s
from bench.results import JSON_NAME, MD_NAME, PLOTS, render_markdown, write_results
from bench.suite import SuiteConfig, run_suite, strip_raw


def test_summary_of_1_to_100_has_numpy_linear_percentiles():
    s = summarize_us(range(1, 101))
    assert s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"], s["mean"]) == (1.0, 100.0, 50.5)


def test_summary_ignores_nan_and_inf_and_is_empty_without_samples():
    assert summarize_us([math.nan, 3.0, math.inf, 1.0])["n"] == 2
    assert summarize_us([math.nan, 3.0, 1.0])["p50"] == 2.0
    empty = summarize_us([])
    assert empty["n"] == 0 and empty["p50"] is None and empty["max"] is None


def test_ratio_is_none_without_a_denominator():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(3.0, 0.0) is None


def test_cpu_meter_sees_this_process_burn_cpu():
    meter = CpuMeter([os.getpid()]).start()
    start = time.process_time()
    x = 0
    while time.process_time() - start < 0.3:  # 0.3 s of CPU, however long that takes
        x += 1
    cpu = meter.stop()
    assert cpu["cpu_s"] >= 0.25  # psutil reads the same counters in clock ticks
    assert cpu["client_cores"] > 0
    # the server is this process too: the same CPU seconds over the same wall time
    assert cpu["server_cores"] * cpu["wall_s"] == pytest.approx(cpu["cpu_s"], abs=0.05)
    assert tree_cpu_s(os.getpid()) >= cpu["cpu_s"]


def test_unknown_section_is_refused_by_the_command():
    from s2loop.cli import app

    result = CliRunner().invoke(app, ["bench", "suite", "--sections", "transport,warp"])
    assert result.exit_code != 0
    assert "warp" in result.output


TINY = {
    "transport_rounds": 2,
    "transport_block": 30,
    "batch_block": 2,
    "backend_batches": (1, 16),
    "backend_repeats": 1,
    "single_calls": {"emulator": 100, "reference": 10},
    "batched_min_time_s": 0.02,
    "loop_envs": ("CartPole-v1",),
    "loop_free_steps": 60,
    "loop_rates": {1000.0: 120},
    "loop_ws_target_steps": 0,
    "loop_floor_target_steps": 100,
    "loop_tcp_1khz_steps": 100,
    "loop_chunk_s": 0.05,
    "scaling_clients": (1, 2),
    "scaling_workers": (1,),
    "scaling_steps": 200,
    "scaling_rounds": 1,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = SuiteConfig.make(quick=True, **TINY)
    report = run_suite(cfg, command="s2loop bench suite (test)")
    out = tmp_path_factory.mktemp("bench")
    written = write_results(report, out)
    return report, out, written


def test_tiny_suite_writes_page_json_and_small_pngs(tiny_run):
    report, out, written = tiny_run
    assert {p.name for p in written} == {*PLOTS.values(), JSON_NAME, MD_NAME}
    for name in PLOTS.values():
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    page = (out / MD_NAME).read_text()
    for heading in ("## Targets", "## Findings", "## 1. Transport", "## 2. Backends"):
        assert heading in page
    for heading in ("## 3. Closed loop", "## 4. Scaling", "## 5. Chip estimates"):
        assert heading in page
    assert "s2loop bench suite (test)" in page and report["git"]["commit"][:12] in page
    assert "**Quoted**" in page and "**Ours are estimates**" in page
    saved = json.loads((out / JSON_NAME).read_text())
    assert '"_rtt":' not in json.dumps(saved)  # raw samples stay out of the JSON
    assert saved["transport"]["transports"]["act_http"]["rtt_us"]["n"] == 2 * 30
    assert report["server_exit_codes"] == {"floor": 0, "s2loop-w1": 0}  # graceful stops


def test_tiny_transport_figures_are_consistent(tiny_run):
    t = tiny_run[0]["transport"]["transports"]
    from bench.suite import TRANSPORTS

    assert set(t) == set(TRANSPORTS)
    for name in TRANSPORTS:
        if name == "batch":
            continue
        s = t[name]["rtt_us"]
        assert s["n"] == 60 and 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert t["floor_asgi"]["ratio_to_floor"]["p50"] == pytest.approx(1.0)
    assert t["act_tcp"]["floor"] == "floor_tcp" and t["act_ws_msgpack"]["floor"] == "floor_ws_echo"
    for name in ("act_http_msgpack", "act_ws_msgpack", "act_tcp", "sdk_tcp"):
        assert 0 < t[name]["server_us"]["p50"] < t[name]["rtt_us"]["p50"]
    targets = tiny_run[0]["transport"]["targets"]
    assert {"tcp_p50_us", "sdk_overhead_p50_us", "ws_msgpack_p50_over_ws_json"} <= set(targets)
    # the service's own time is part of the round trip the client measured
    assert 0 < t["act_http"]["server_us"]["p50"] < t["act_http"]["rtt_us"]["p50"]
    b = t["batch"]
    assert b["answers_complete"] and b["rtt_us"]["n"] == 4 and b["batch_size"] == 256
    assert b["obs_per_s_sustained"] == pytest.approx(256 / b["rtt_us"]["mean"] * 1e6)


def test_tiny_backends_compare_emulator_and_reference_on_the_shipped_network(tiny_run):
    b = tiny_run[0]["backends"]
    assert b["threads"]["torch"] == 1
    assert b["action_agreement"]["value"] > 0.8  # 8-bit vs float: same network
    for name in ("emulator", "reference"):
        d = b["backends"][name]
        assert d["single"]["best"]["calls"] == TINY["single_calls"][name]
        assert set(d["batched"]) == {"1", "16"}
        assert all(d["batched"][k]["best"]["per_second"] > 0 for k in d["batched"])


def test_tiny_closed_loop_runs_real_episodes_and_counts_misses(tiny_run):
    c = tiny_run[0]["closed_loop"]
    runs = {(r["server"], r["transport"], r["rate_hz"]): r for r in c["runs"]}
    assert set(runs) == {
        ("s2loop", "http", None),
        ("s2loop", "ws", None),
        ("s2loop", "http", 1000.0),
        ("s2loop", "tcp", 1000.0),
        ("floor", "http", 200.0),
    }
    tcp = runs[("s2loop", "tcp", 1000.0)]
    assert tcp["steps"] >= 100 and tcp["errors"] == 0 and tcp["deadline_misses"] is not None
    paced = runs[("s2loop", "http", 1000.0)]
    assert paced["steps"] >= 120 and paced["errors"] == 0
    assert 0 <= paced["misses_rtt_over_period"] <= paced["deadline_misses"] <= paced["steps"]
    assert runs[("s2loop", "http", None)]["deadline_misses"] is None
    # episode lengths come from the service's runs only (the floor's constant action
    # ends CartPole episodes after a few steps)
    lengths = [n for r in c["runs"] if r["server"] == "s2loop" for n in r["episode_lengths"]]
    assert c["episode_length_mean"]["CartPole-v1"] == pytest.approx(np.mean(lengths))


def test_tiny_scaling_and_chip_estimates_per_episode(tiny_run):
    report = tiny_run[0]
    rows = report["scaling"]["rows"]
    assert [(r["workers"], r["clients"]) for r in rows] == [(1, 1), (1, 2)]
    assert all(r["steps_per_s"] > 0 and r["errors"] == 0 for r in rows)
    chip = report["chip"]
    assert chip["estimate"] is True
    cart = next(m for m in chip["models"] if m["model"] == "cartpole")
    assert cart["chip_time_s"] == pytest.approx(cart["ticks"] * cart["sys_tick_s"])
    length = report["closed_loop"]["episode_length_mean"]["CartPole-v1"]
    assert cart["episode_energy_j"] == pytest.approx(cart["energy_j"] * length)
    acro = next(m for m in chip["models"] if m["model"] == "acrobot")
    assert acro["episode_energy_j"] is None  # no Acrobot episodes were run


def test_page_renders_from_the_json_alone(tiny_run):
    """The JSON keeps everything the tables need (plots need the raw samples)."""
    report = tiny_run[0]
    assert render_markdown(strip_raw(report)) == render_markdown(report)


def _loop_run(server: str, rate: float | None, misses: int, steps: int = 10_000) -> dict:
    return {
        "server": server,
        "env_id": "CartPole-v1",
        "transport": "http",
        "rate_hz": rate,
        "steps": steps,
        "rtt_us": {"p50": 500.0},
        "server_us": {"p50": 50.0},
        "deadline_misses": misses if rate else None,
        "misses_rtt_over_period": misses if rate else None,
        "miss_rate": misses / steps if rate else None,
    }


@pytest.mark.parametrize(
    ("service", "floor", "expected"),
    [(2, 0, "too small"), (40, 36, "service ÷ floor: 1.1"), (40, 0, "floor missed none")],
)
def test_misses_are_attributed_only_when_there_are_enough(service, floor, expected):
    from bench.results import findings

    report = {
        "closed_loop": {
            "runs": [
                _loop_run("s2loop", None, 0),
                _loop_run("s2loop", 200.0, service),
                _loop_run("floor", 200.0, floor),
            ]
        }
    }
    (line,) = [x for x in findings(report) if x.startswith("Deadline misses")]
    assert expected in line


def test_recipe_targets_say_met_only_when_the_figure_reaches_the_target():
    from bench.recipes import targets

    def row(env_id, returns, encoder="poisson", ticks=20):
        variant = {"recipe": "dsqn", "encoder": encoder, "neuron": "LIF", "input_ticks": ticks}
        label = f"dsqn · {encoder} · T={ticks}"
        return {"env_id": env_id, "variant": variant, "label": label, "seeds": len(returns),
                "return_mean": (sum(returns) / len(returns), 1.0), "returns": returns}  # fmt: skip

    report = {
        "rows": [
            row("CartPole-v1", [500.0, 474.0, 500.0, 500.0, 500.0]),  # mean 494.8, one seed short
            row("CartPole-v1", [480.0, 470.0], ticks=10),
            row("Acrobot-v1", [-80.0, -88.0]),  # mean -84
            row("Acrobot-v1", [-99.0], ticks=10),  # no target for it
            row("CartPole-v1", [500.0], encoder="deterministic"),  # not the paper's
        ],
        "shipped": [
            {"model": "cartpole", "min": 499.0, "mean": 499.9, "agreement": 0.996},
            {"model": "acrobot", "min": -120.0, "mean": -71.5, "agreement": 0.994},
            {"model": "cartpole-dsqn", "min": 290.0, "mean": 495.0, "agreement": 0.98},
            {"model": "acrobot-dsqn", "min": -300.0, "mean": -90.5, "agreement": 0.99},
        ],
    }
    got = {r[0]: r[3] for r in targets(report)}
    t20 = "dsqn CartPole-v1, dsqn · poisson · T=20, 5 seeds"
    assert got[f"{t20}: mean"] == "met"
    assert got[f"{t20}: every seed"] == "**not met**"
    assert got["dsqn CartPole-v1, dsqn · poisson · T=10, 2 seeds: mean"] == "met"
    assert got["dsqn Acrobot-v1, dsqn · poisson · T=20, 2 seeds: mean"] == "met"
    assert not any("T=10" in k and "Acrobot" in k for k in got)
    assert not any("deterministic" in k for k in got)
    assert got["shipped cartpole: min"] == "**not met**"
    assert got["shipped acrobot: mean"] == "met"
    assert got["shipped cartpole: float vs 8-bit agreement"] == "met"
    assert got["shipped acrobot: float vs 8-bit agreement"] == "**not met**"
    assert got["shipped cartpole-dsqn: mean"] == "met"
    assert got["shipped cartpole-dsqn: min"] == "**not met**"
    assert got["shipped cartpole-dsqn: float vs 8-bit agreement"] == "met"
    assert got["shipped acrobot-dsqn: mean"] == "**not met**"


def test_quick_record_bench_counts_every_answer_and_replays(tmp_path):
    from bench.record import RecordBenchConfig, markdown, run_record_bench

    report = run_record_bench(RecordBenchConfig.make(quick=True), command="test", log=_quiet)
    assert report["rows_lost"] == 0 and report["rows_recorded"] == report["answers_sent"]
    assert report["files"] >= 2 and report["bytes"] > 0  # rotated during the run
    assert report["replay"]["rows"] == 2_000 and report["replay"]["agreement"] == 1.0
    assert report["rtt_us"]["on"]["n"] == report["rtt_us"]["off"]["n"] == 200
    assert "rows lost on a graceful stop" in markdown(report)


def test_tcp_floor_bench_times_every_client_pinned_and_writes_its_page():
    from bench.tcp_floor import TARGETS, TcpFloorConfig, markdown, run

    before = os.sched_getaffinity(0)
    cfg = TcpFloorConfig(runs=1, rounds=1, block=20, cpus=str(min(before)))
    report = run(cfg, command="test", log=_quiet)
    assert os.sched_getaffinity(0) == before  # the run's pin is undone
    (one,) = report["runs"]
    assert one["cpus"] == [min(before)]
    assert {k: s["n"] for k, s in one["rtt_us"].items()} == dict.fromkeys(
        ("floor_echo", "act_tcp", "sdk_tcp"), 20
    )
    for k in TARGETS:  # the server's own time is part of the round trip, not more
        assert 0 < one["server_us_p50"][k] < one["rtt_us"][k]["p50"]
        assert one["ratio_p50"][k] == one["rtt_us"][k]["p50"] / one["rtt_us"]["floor_echo"]["p50"]
    page = markdown(report)
    assert "TCP door, PolicyClient" in page and f"pinned to CPU(s) {min(before)}" in page


def _quiet(_: str) -> None:
    pass


def test_quick_fleet_bench_measures_coalescing_the_balancer_and_failover():
    import shutil

    from bench.fleet import FleetConfig, markdown, run_fleet_bench

    report = run_fleet_bench(FleetConfig.make(quick=True), command="test", log=_quiet)
    board = report["board"]
    assert board["coalescing"]["failed"] == board["no_coalescing"]["failed"] == 0
    # one 20 ms run at a time without coalescing: about 50 answers/s, never more
    assert board["no_coalescing"]["per_s"] <= 55
    assert board["coalescing"]["per_s"] > 3 * board["no_coalescing"]["per_s"]
    assert {s["clients"] for s in report["scaling"]} == {1, 4}
    if shutil.which("haproxy"):
        failover = report["lb"]["failover"]
        # at most one failure per client (8): only a response the SIGKILL cut after its
        # first bytes, which HAProxy may not resend (seen once in three loaded runs,
        # logged as status 200 with "SD--"); the page reports the count measured
        assert failover["failed"] <= 8 and failover["answers"] > 100
    page = markdown(report)
    assert "Assumptions, not measurements of a board" in page and "## Capacity plan" in page


def test_tick_sweep_covers_every_shipped_model_there_is_from_its_full_ticks_down(models_dir):
    from bench.recipes import tick_sweep

    rows = tick_sweep(models_dir, episodes=2)  # cartpole and acrobot here, no dsqn models
    assert {r["model"] for r in rows} == {"cartpole", "acrobot"}
    for name in ("cartpole", "acrobot"):
        mine = [r for r in rows if r["model"] == name]
        ticks = [r["input_ticks"] for r in mine]
        assert ticks == sorted(ticks, reverse=True) and mine[0]["keeps"]
        hops = mine[0]["ticks"] - mine[0]["input_ticks"]
        assert all(r["ticks"] - r["input_ticks"] == hops for r in mine)


def test_gpu_section_sets_every_figure_beside_the_chip_and_the_paper_per_inference():
    """The page's GPU section, from a report shaped as `measure_gpu` writes it on a GPU
    (this machine has none: the measuring runs only there), and without a GPU."""
    from bench.results import _gpu

    energy = {"energy_j_per_inference": 8.7e-5, "dynamic_energy_j_per_inference": 4.6e-7}
    report = {
        "available": True,
        "device": "NVIDIA H200",
        "torch": "2.13.0",
        "batch": 4096,
        "idle_power_w": 120.0,
        "energy": {"measured": True, "how": "NVML counter"},
        "models": {
            "cartpole": {
                "chip": {"chip_time_s": 0.015, "energy_j": 3.6e-3, "energy_dynamic_j": 1e-4},
                "graph_single": {"median_us": 780.0},
                "eager_single": {"median_us": 8100.0},
                "graph_batched": {"per_second": 148_000.0},
                "energy_single": energy,
                "energy_batched": energy,
            }
        },
    }
    page = "\n".join(_gpu(report))
    for figure in ("NVIDIA H200", "120.0 W", "780", "8,100", "148,000", "0.09", "3.60", "6 / 145"):
        assert figure in page, figure
    assert "per inference" in page and "energy cost per inference" in page
    missing = "\n".join(_gpu({"available": False, "reason": "no CUDA GPU visible"}))
    assert "Not measured: no CUDA GPU visible" in missing and "per inference" in missing


def test_bench_training_measures_both_forwards_and_both_recipes(tmp_path):
    pytest.importorskip("torch")
    from bench.training import run, write

    report = run(quick=True)
    for k in ("reference", "fast"):
        assert report["forward"][k]["gradient_step_ms"] > 0 and report["forward"][k]["act_ms"] > 0
    runs = {(r["recipe"], r["threads"]): r for r in report["training"]}
    assert set(runs) == {("dsqn", 1), ("dsqn", 2), ("teacher", 1), ("teacher", 2)}
    assert all(r["steps"] >= 1_200 and r["env_steps_per_s"] > 0 for r in runs.values())
    text = write(report, tmp_path).read_text()
    assert "| fast" in text and "| teacher" in text and "| dsqn" in text
