import dataclasses

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from agent.nir_export import (  # noqa: E402
    NIR_DT,
    encode_observations,
    export_nir,
    run_nir_graph,
    to_nir,
)
from hw.emulator import CompiledNetwork, greedy_actions, readout, run_raster  # noqa: E402
from hw.encoding import encode  # noqa: E402
from hw.synthetic import random_artifact  # noqa: E402


def _lively(art, *, v_reset=-3.0, v_init_frac=0.25, out_alpha=None):
    """random_artifact with an output layer that spikes, a non-zero v_reset and v_init,
    so every part of the mapping is exercised."""
    layers = []
    for lay in art.layers[:-1]:
        layers.append(
            dataclasses.replace(
                lay, v_reset=v_reset, v_init=float(np.float32(v_init_frac * lay.threshold))
            )
        )
    out = art.layers[-1]
    out = dataclasses.replace(
        out,
        threshold=float(np.float32(0.3 * out.weight_scale)),
        float_threshold=0.3,
        v_reset=v_reset,
        alpha_decay=out.alpha_decay if out_alpha is None else out_alpha,
    )
    return dataclasses.replace(art, layers=(*layers, out))


def _emulate(art, obs):
    out = run_raster(CompiledNetwork.from_artifact(art), encode(art, obs), record=True)
    q = readout(art, out.v_final, out.counts)
    return out, q


@pytest.mark.parametrize("explicit_delays", [False, True])
@pytest.mark.parametrize("reset", ["reset_by_subtraction", "reset_to_v_reset"])
@pytest.mark.parametrize("readout_kind", ["membrane", "count_membrane"])
def test_int_graph_read_back_reproduces_emulator_exactly(
    tmp_path, observations, reset, readout_kind, explicit_delays
):
    art = _lively(random_artifact(seed=11, reset=reset, readout=readout_kind))
    path = export_nir(art, tmp_path / "model.nir", explicit_delays=explicit_delays)
    graph = nir.read(path)
    res = run_nir_graph(graph, observations)
    emu, q = _emulate(art, observations)
    np.testing.assert_array_equal(res.record, emu.record)
    np.testing.assert_array_equal(res.counts, emu.counts)
    np.testing.assert_array_equal(res.v_final, emu.v_final)
    np.testing.assert_array_equal(res.layer_spikes, emu.layer_spikes)
    np.testing.assert_array_equal(res.q_values, q)
    np.testing.assert_array_equal(res.actions, greedy_actions(q))
    assert emu.counts.sum() > 0 and emu.layer_spikes[:, :-1].min() > 0, "test must bite"
    assert len(set(res.actions.tolist())) == 2, "both actions should be chosen somewhere"


def test_without_hop_delay_the_reader_would_differ(observations):
    """The one-tick hop delay matters: dropping it changes the spikes."""
    art = _lively(random_artifact(seed=11))
    graph = to_nir(art)
    res = run_nir_graph(graph, observations)
    graph.metadata["hop_delay_ticks"] = 0
    nodelay = run_nir_graph(graph, observations)
    assert not np.array_equal(res.record, nodelay.record)


def test_nodes_read_back_as_s2_nir_forward_euler_gives_chip_parameters(tmp_path):
    art = random_artifact(seed=4, alpha_decay=0.8)
    graph = nir.read(export_nir(art, tmp_path / "m.nir"))
    meta = graph.metadata
    assert meta["s2_nir"]["integrator"] == "Forward-Euler"
    assert int(meta["s2_nir"]["conn_delay"]) == 0 and not bool(meta["s2_nir"]["scale_weights"])
    assert meta["s2_nir"]["reset"] == "subtract"
    for i, lay in enumerate(art.layers):
        w = graph.nodes[f"layer{i}_affine"]
        node = graph.nodes[f"layer{i}_neurons"]
        np.testing.assert_array_equal(w.weight, lay.weight.astype(np.float32))
        np.testing.assert_array_equal(w.bias, lay.i_offset)
        if lay.alpha_decay == 1.0:
            assert isinstance(node, nir.IF)
            np.testing.assert_array_equal(node.r, 1.0)
            r_factor = node.r
            alpha = np.ones(lay.size)
        else:
            assert isinstance(node, nir.LIF)
            # s2_nir, IntegratorMethod.FORWARD: alpha = 1 - dt/tau, r_factor = dt/tau * r
            alpha = 1.0 - NIR_DT / node.tau
            r_factor = NIR_DT / node.tau * node.r
            np.testing.assert_array_equal(node.v_leak, 0.0)
        np.testing.assert_array_equal(alpha.astype(np.float32), np.float32(lay.alpha_decay))
        threshold = (node.v_threshold / r_factor).astype(np.float32)
        np.testing.assert_array_equal(threshold, np.float32(lay.threshold))
        assert node.metadata["reset"] == lay.reset


def test_float_export_of_power_of_two_scaled_model_matches_emulator(tmp_path, observations):
    """With weight_scale = 64 the float master network is the chip network / 64 exactly,
    so the float graph must give the emulator's spikes and Q-values bit for bit."""
    base = _lively(random_artifact(seed=5, readout="count_membrane"))
    scale = 64.0
    layers = []
    for lay in base.layers:
        w = np.clip(np.round(lay.weight.astype(np.float32) * 0.5), -127, 127).astype(np.int8)
        layers.append(
            dataclasses.replace(
                lay,
                weight=w,
                weight_scale=scale,
                float_weight=w.astype(np.float32) / np.float32(scale),
                float_i_offset=lay.i_offset / np.float32(scale),
                float_threshold=float(np.float32(lay.threshold) / np.float32(scale)),
            )
        )
    art = dataclasses.replace(base, layers=tuple(layers))
    graph = nir.read(export_nir(art, tmp_path / "f.nir", use_float=True))
    assert graph.metadata["weights"] == "float"
    np.testing.assert_array_equal(
        graph.nodes["layer0_affine"].weight, art.layers[0].float_weight.astype(np.float32)
    )
    res = run_nir_graph(graph, observations)
    emu, q = _emulate(art, observations)
    np.testing.assert_array_equal(res.record, emu.record)
    np.testing.assert_array_equal(res.q_values, q)
    np.testing.assert_array_equal(res.v_final * np.float32(scale), emu.v_final)
    assert emu.counts.sum() > 0


def test_float_export_without_master_weights_is_rejected():
    art = random_artifact(seed=1)
    bare = dataclasses.replace(
        art, layers=tuple(dataclasses.replace(lay, float_weight=None) for lay in art.layers)
    )
    with pytest.raises(ValueError, match="no float master weights"):
        to_nir(bare, use_float=True)


def test_growing_membrane_has_no_nir_equivalent():
    art = random_artifact(seed=1, alpha_decay=1.5)
    with pytest.raises(ValueError, match="negative tau"):
        to_nir(art)


def test_reader_rejects_graphs_without_s2loop_metadata():
    graph = nir.NIRGraph.from_list(
        nir.Affine(weight=np.ones((2, 3), np.float32), bias=np.zeros(2, np.float32)),
        nir.IF(r=np.ones(2), v_threshold=np.ones(2)),
    )
    with pytest.raises(ValueError, match="not an s2loop NIR graph"):
        run_nir_graph(graph, raster=np.zeros((1, 4, 3), np.uint8))


def test_encoder_metadata_reproduces_the_artifact_encoder(tmp_path, observations):
    from hw.artifact import Encoder

    art = random_artifact(seed=2, encoder=Encoder(kind="poisson", channels="signed"))
    graph = nir.read(export_nir(art, tmp_path / "p.nir"))
    seeds = np.arange(len(observations)) + 9
    np.testing.assert_array_equal(
        encode_observations(graph, observations, seeds), encode(art, observations, seeds=seeds)
    )


def test_snntorch_import_from_nir_reproduces_spikes(tmp_path, observations):
    """snnTorch's importer, run layer by layer with the metadata's one-tick hop delay
    (its graph executor has none). Exact case for its importer: leaky layers (it reads IF
    as beta=0.9) and reset to zero (it ignores the reset mode)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("nirtorch")
    import_nir = pytest.importorskip("snntorch.import_nir")

    art = _lively(
        random_artifact(seed=11, reset="reset_to_v_reset", readout="count_membrane"),
        v_reset=0.0,
        v_init_frac=0.0,
        out_alpha=0.95,
    )
    path = export_nir(art, tmp_path / "s.nir")
    graph = nir.read(path)
    module = import_nir.import_from_nir(nir.read(path))
    hop = int(graph.metadata["hop_delay_ticks"])
    raster = encode_observations(graph, observations)
    x = torch.zeros((raster.shape[0], art.ticks, raster.shape[2]))
    x[:, : raster.shape[1]] = torch.from_numpy(raster.astype(np.float32))
    spikes = []
    with torch.no_grad():
        for i in range(len(art.layers)):
            affine = module.get_submodule(f"layer{i}_affine")
            neurons = module.get_submodule(f"layer{i}_neurons")
            neurons.reset_mem()
            delayed = torch.zeros_like(x)
            delayed[:, hop:] = x[:, :-hop]
            x = torch.stack([neurons(affine(delayed[:, t])) for t in range(art.ticks)], dim=1)
            spikes.append(x)
    record = torch.cat(spikes, dim=2).numpy().astype(np.uint8)
    v_final = neurons.mem.numpy()
    emu, q = _emulate(art, observations)
    np.testing.assert_array_equal(record, emu.record)
    counts = spikes[-1].sum(dim=1).numpy()
    q_snn = (counts * np.float32(art.layers[-1].threshold) + v_final) / np.float32(
        art.layers[-1].weight_scale
    )
    np.testing.assert_allclose(q_snn, q, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(greedy_actions(q_snn), greedy_actions(q))
    assert emu.counts.sum() > 0


def test_cli_export_nir_writes_a_graph_that_checks_out(tmp_path):
    import json

    from typer.testing import CliRunner

    from hw.artifact import save_artifact
    from s2loop.cli import app

    model = save_artifact(random_artifact(seed=3, name="m"), tmp_path / "m.s2l")
    out = tmp_path / "m.nir"
    result = CliRunner().invoke(app, ["export-nir", str(model), str(out), "--check", "32"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["check"]["spikes_identical"] is True
    assert report["check"]["action_agreement"] == 1.0
    assert isinstance(nir.read(out), nir.NIRGraph)
    missing = CliRunner().invoke(app, ["export-nir", str(tmp_path / "no.s2l"), str(out)])
    assert missing.exit_code == 1
