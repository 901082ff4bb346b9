"""The board backend against a fake py-spinnaker2 (tests/fake_spinnaker2) that checks
its inputs and simulates the network with its own code."""

import dataclasses
import sys

import numpy as np
import pytest

from hw.artifact import Encoder
from hw.backend import BackendError, create_backend
from hw.emulator import EmulatorBackend
from hw.synthetic import random_artifact
from tests.conftest import _drop_sdk_modules


def _compare(art, obs, rng_seed=None, **board_kw):
    from hw.board import SpiNNaker2Backend

    with EmulatorBackend() as emu, SpiNNaker2Backend(**board_kw) as board:
        emu.load(art)
        board.load(art)
        seeds = None if rng_seed is None else rng_seed + np.arange(len(obs))
        a = emu.infer(art.name, obs, seeds)
        b = board.infer(art.name, obs, seeds)
    np.testing.assert_array_equal(b.q_values, a.q_values)
    np.testing.assert_array_equal(b.actions, a.actions)
    np.testing.assert_array_equal(b.spikes_per_layer, a.spikes_per_layer)
    np.testing.assert_array_equal(b.synaptic_events, a.synaptic_events)
    assert b.backend == "spinnaker2" and b.ticks == art.ticks
    return a, b


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"reset": "reset_to_v_reset"},
        {"readout": "count_membrane", "alpha_decay": 0.8},
        {"encoder": Encoder(kind="deterministic", channels="signed", input_ticks=10)},
    ],
)
def test_board_on_fake_matches_emulator(fake_sdk, observations, kw):
    art = random_artifact(seed=21, name="m", hidden=(32, 24), **kw)
    a, _ = _compare(art, observations[:24], max_copies=8)
    assert a.spikes_per_layer[:, 0].sum() > 0, "hidden layer must spike for the test to bite"
    assert len(set(a.actions.tolist())) == 2, "both actions should occur"


def test_spiking_output_layer_and_poisson_input_match(fake_sdk, observations):
    art = random_artifact(
        seed=5,
        name="m",
        hidden=(16,),
        readout="count_membrane",
        encoder=Encoder(kind="poisson", channels="tent", bins=4, input_ticks=12),
        ticks=16,
    )
    out = art.layers[-1]
    art = dataclasses.replace(
        art, layers=(*art.layers[:-1], dataclasses.replace(out, threshold=60.0))
    )
    a, _ = _compare(art, observations[:10], rng_seed=9)
    assert a.spikes_per_layer[:, -1].sum() > 0, "output layer must spike"


def test_batch_is_split_into_runs_of_copies(fake_sdk, observations):
    from hw.board import SpiNNaker2Backend

    art = random_artifact(seed=1, name="m")
    with SpiNNaker2Backend(max_copies=5, eth_ip="10.0.0.7", sys_tick_in_s=2e-3) as be:
        be.load(art)
        res = be.infer("m", observations[:12])
    log = fake_sdk.hardware.RUN_LOG
    assert len(log) == 3 and res.extra["board_runs"] == 3
    # 5 copies of (input + 3 LIF layers), then 5, then 2
    assert [r["populations"] for r in log] == [20, 20, 8]
    assert all(r["timesteps"] == art.ticks and r["eth_ip"] == "10.0.0.7" for r in log)
    assert all(r["sys_tick_in_s"] == 2e-3 for r in log)


def test_copies_per_run_come_from_the_mapping(fake_sdk, observations):
    art = random_artifact(seed=1, name="m")  # 4 PEs per copy -> 37 copies
    be = create_backend("spinnaker2")
    be.load(art)
    res = be.infer("m", observations[:40])
    assert res.extra["copies_per_run"] == 37
    assert [r["populations"] for r in fake_sdk.hardware.RUN_LOG] == [37 * 4, 3 * 4]
    assert max(r["pes"] for r in fake_sdk.hardware.RUN_LOG) <= 148
    assert be.describe()["copies_per_run"] == {"m": 37}


def test_network_too_big_fails_at_load(fake_sdk):
    from hw.board import SpiNNaker2Backend

    art = random_artifact(seed=1, name="big", hidden=(4000, 4000))
    with SpiNNaker2Backend() as be, pytest.raises(BackendError, match="cannot run on one chip"):
        be.load(art)


def test_missing_sdk_says_how_to_install(monkeypatch):
    _drop_sdk_modules()
    monkeypatch.setitem(sys.modules, "spinnaker2", None)  # import fails
    from hw.board import SpiNNaker2Backend

    with pytest.raises(BackendError, match=r"pip install \"spinnaker2 @ git\+https://gitlab"):
        SpiNNaker2Backend()


def test_connection_list_skips_zeros_and_uses_plain_ints():
    from hw.board import connection_list

    w = np.array([[0, 5], [-127, 0], [3, 1]], dtype=np.int8)  # [post, pre]
    conns = connection_list(w)
    assert conns == [[0, 1, -127, 0], [0, 2, 3, 0], [1, 0, 5, 0], [1, 2, 1, 0]]
    assert all(type(x) is int for c in conns for x in c)


def test_fake_sdk_rejects_what_the_chip_cannot_take(fake_sdk):
    snn = fake_sdk.snn
    with pytest.raises(ValueError, match="plain int"):
        snn.Population(size=np.int64(3), neuron_model="lif_no_delay", params={})
    with pytest.raises(ValueError, match="unknown lif_no_delay parameter"):
        snn.Population(size=3, neuron_model="lif_no_delay", params={"tau": 1.0})
    a = snn.Population(size=2, neuron_model="spike_list", params={0: [1]})
    b = snn.Population(size=2, neuron_model="lif_no_delay", params={})
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        snn.Projection(pre=a, post=b, connections=[[0, 0, 200, 0]])


def test_infer_command_runs_on_the_board_backend(fake_sdk, tmp_path):
    import json

    from typer.testing import CliRunner

    from hw.artifact import save_artifact
    from s2loop.cli import app

    path = save_artifact(random_artifact(seed=1, name="small"), tmp_path / "small.s2l")
    runner = CliRunner()
    outs = {}
    for backend in ("emulator", "spinnaker2"):
        args = ["infer", "--backend", backend, str(path), "--", "0", "0.1", "0.05", "-0.2"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        outs[backend] = json.loads(res.output)
    assert outs["spinnaker2"]["q_values"] == outs["emulator"]["q_values"]
    assert outs["spinnaker2"]["extra"]["board_runs"] == 1


def test_run_that_does_not_fit_falls_back_to_one_copy_per_run(fake_sdk, observations, monkeypatch):
    monkeypatch.setattr(fake_sdk.hardware, "USABLE_PES", 10)  # a board with few free PEs
    art = random_artifact(seed=1, name="m")
    _, b = _compare(art, observations[:5])
    log = fake_sdk.hardware.RUN_LOG
    assert [r["populations"] for r in log] == [4] * 5  # the failed 5-copy run is not logged
    assert b.extra["board_runs"] == 5 and b.extra["copies_per_run"] == 1


def test_board_error_with_one_copy_is_raised(fake_sdk, observations, monkeypatch):
    from hw.board import SpiNNaker2Backend

    monkeypatch.setattr(fake_sdk.hardware, "USABLE_PES", 2)
    art = random_artifact(seed=1, name="m")
    with SpiNNaker2Backend() as be:
        be.load(art)
        with pytest.raises(BackendError, match="SpiNNaker2 run failed: .*needs 4 PEs"):
            be.infer("m", observations[:3])
