import dataclasses
import json

import numpy as np
import pytest

from hw.mapping import ChipSpec, MappingError, map_network
from hw.synthetic import random_artifact


def test_small_network_uses_one_pe_per_population():
    art = random_artifact(seed=1, hidden=(64, 64), ticks=16)
    rep = map_network(art)
    # input (20 spike_list neurons), fc1, fc2, out: one PE each
    assert [p.pes for p in rep.populations] == [1, 1, 1, 1]
    assert rep.populations[0].neuron_model == "spike_list"
    assert rep.pes_used == 4
    assert rep.copies_per_chip == 148 // 4
    assert rep.chip_time_s == pytest.approx(16e-3)
    # synapses counted are the non-zero weights
    assert rep.synapses == sum(int(np.count_nonzero(lay.weight)) for lay in art.layers)


def test_neuron_limit_splits_population():
    art = random_artifact(seed=1, hidden=(600, 64), ticks=16)
    rep = map_network(art)
    fc1 = rep.populations[1]
    assert fc1.pes == 3 and fc1.neurons_per_pe == [250, 250, 100]
    rep2 = map_network(art, ChipSpec(neurons_per_pe=100))
    assert rep2.populations[1].pes == 6


def test_synapse_memory_limit_splits_population():
    art = random_artifact(seed=1, hidden=(200, 200), ticks=16)
    dense = int(np.count_nonzero(art.layers[1].weight, axis=1).max())
    # room for about 10 neurons of fc2 per PE
    chip = ChipSpec(synapse_memory_bytes=dense * 4 * 10)
    rep = map_network(art, chip)
    fc2 = rep.populations[2]
    assert fc2.pes >= 20
    assert fc2.max_synapse_bytes_per_pe <= chip.synapse_memory_bytes
    assert sum(fc2.neurons_per_pe) == 200


def test_zero_weights_are_not_stored():
    art = random_artifact(seed=1)
    lay = art.layers[0]
    w = lay.weight.copy()
    w[:, ::2] = 0
    sparse = dataclasses.replace(art, layers=(dataclasses.replace(lay, weight=w), *art.layers[1:]))
    assert map_network(sparse).populations[1].synapses == int(np.count_nonzero(w))


def test_too_big_network_raises_clear_error():
    art = random_artifact(seed=1, hidden=(4000, 4000), ticks=16)
    with pytest.raises(MappingError, match="needs .* PEs .* 148 usable"):
        map_network(art)


def test_single_neuron_too_many_synapses_raises():
    art = random_artifact(seed=1, hidden=(64, 64))
    with pytest.raises(MappingError, match="synapse memory"):
        map_network(art, ChipSpec(synapse_memory_bytes=16))


def test_energy_model_follows_named_constants():
    art = random_artifact(seed=1)
    chip = ChipSpec(power_idle_w=0.2, power_busy_w=0.5, usable_pes=100, sys_tick_s=2e-3)
    rep = map_network(art, chip)
    t = art.ticks * 2e-3
    per_pe = 0.3 / 100
    assert rep.energy_j == pytest.approx((0.2 + rep.pes_used * per_pe) * t)
    assert rep.energy_dynamic_j == pytest.approx(rep.pes_used * per_pe * t)
    c = rep.copies_per_chip
    assert rep.energy_batched_j == pytest.approx((0.2 + c * rep.pes_used * per_pe) * t / c)
    assert rep.energy_batched_j < rep.energy_j


def test_report_to_dict_is_json():
    rep = map_network(random_artifact(seed=1))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["pes_used"] == rep.pes_used and d["energy_is_estimate"] is True
    assert d["populations"][0]["name"] == "input"


def test_bad_chip_spec_is_rejected():
    with pytest.raises(ValueError, match="neurons_per_pe"):
        ChipSpec(neurons_per_pe=0)


def test_map_command_prints_json_and_fails_clearly(tmp_path):
    from typer.testing import CliRunner

    from hw.artifact import save_artifact
    from s2loop.cli import app

    small = save_artifact(random_artifact(seed=1, name="small"), tmp_path / "small.s2l")
    big_art = random_artifact(seed=1, name="big", hidden=(4000, 4000))
    big = save_artifact(big_art, tmp_path / "big.s2l")
    runner = CliRunner()
    res = runner.invoke(app, ["map", str(small), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pes_used"] == 4
    res = runner.invoke(app, ["map", str(small)])
    assert res.exit_code == 0 and "copies per chip 37" in res.output
    res = runner.invoke(app, ["map", str(big)])
    assert res.exit_code == 1 and "does not fit" in res.output
