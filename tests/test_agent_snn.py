"""The torch spiking Q-network is the emulator's function: bit-identical spikes, Q-values
and actions on the same quantized artifact; export round trip; the float reference."""

import platform
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agent.export import from_artifact, to_artifact  # noqa: E402
from agent.network import EnvSpec, SpikingQNet  # noqa: E402
from agent.options import SNNConfig  # noqa: E402
from agent.reference import ReferenceBackend, synaptic_events  # noqa: E402
from agent.snn import run_artifact  # noqa: E402
from hw.artifact import from_bytes, to_bytes  # noqa: E402
from hw.emulator import CompiledNetwork, EmulatorBackend, greedy_actions, readout, run_raster  # noqa: E402
from hw.encoding import encode  # noqa: E402
from hw.synthetic import random_artifact  # noqa: E402

SCALE = (2.4, 3.0, 0.21, 3.0)


def _net(seed: int, **kw) -> SpikingQNet:
    cfg = SNNConfig(**kw)
    env = EnvSpec(
        env_id="CartPole-v1",
        obs_offset=np.zeros(4, np.float32),
        obs_scale=np.array(SCALE, np.float32),
        action_names=("left", "right"),
        encoder=cfg.encoder_spec,
    )
    net = SpikingQNet(cfg, env, seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for b in net.biases:
            b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
    return net


def _observations(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(123)
    obs = rng.normal(size=(n, 4)) * np.array([1.0, 1.5, 0.15, 1.5])
    scale = np.array(SCALE)
    edges = np.array(
        [
            scale,
            -scale,
            np.zeros(4),
            scale * 10,  # clipped
            -scale * 10,
            scale / 6 * 2,  # exactly on tent centres
            scale * 1e-7,
        ]
    )
    return np.concatenate([edges, obs]).astype(np.float32)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"alpha_decay": 0.9, "readout": "count_membrane"},
        {"reset": "reset_to_v_reset", "channels": "signed", "input_ticks": 8, "hidden": (32,)},
        {"encoder": "poisson", "bins": 5, "hidden": (48, 32, 16), "alpha_decay": 0.75},
        {"alpha_decay": 0.8, "learn_alpha": True, "learn_threshold": True, "threshold": 0.7},
        {"dueling": True, "alpha_decay": 0.9},
    ],
)
def test_fake_quant_torch_is_bit_identical_to_emulator(kw):
    net = _net(seed=3, **kw)
    art = to_artifact(net, "parity")
    obs = _observations()
    seeds = np.arange(len(obs)) + 1000
    raster = encode(art, obs, seeds=seeds)
    out = run_raster(CompiledNetwork.from_artifact(art), raster, record=True)
    q_emu = readout(art, out.v_final, out.counts)
    with torch.no_grad():
        sim = net(torch.from_numpy(raster.astype(np.float32)), "quant", record=True)
    np.testing.assert_array_equal(sim.record.numpy(), out.record)
    np.testing.assert_array_equal(sim.q_values.numpy(), q_emu)
    np.testing.assert_array_equal(sim.q_values.numpy().argmax(axis=1), greedy_actions(q_emu))
    hidden_spikes = out.layer_spikes[:, :-1].sum()
    assert hidden_spikes > 0, "hidden layers must spike for the parity check to bite"
    assert np.unique(q_emu[:, 0] - q_emu[:, 1]).size > 50, "Q-values should depend on input"


@pytest.mark.parametrize("reset", ["reset_by_subtraction", "reset_to_v_reset"])
@pytest.mark.parametrize("readout_kind", ["membrane", "count_membrane"])
def test_artifact_params_in_torch_match_emulator(reset, readout_kind, observations):
    art = random_artifact(seed=11, reset=reset, readout=readout_kind)
    out = run_raster(CompiledNetwork.from_artifact(art), encode(art, observations), record=True)
    sim = run_artifact(art, observations, record=True)
    np.testing.assert_array_equal(sim.record.numpy(), out.record)
    np.testing.assert_array_equal(sim.q_values.numpy(), readout(art, out.v_final, out.counts))
    sizes = [lay.size for lay in art.layers]
    events = synaptic_events(sim.record.numpy(), encode(art, observations), sizes)
    np.testing.assert_array_equal(events, out.synaptic_events)


def test_export_round_trip_keeps_quantization_and_masters():
    net = _net(seed=5)
    art = to_artifact(net, "rt", provenance={"seed": 5})
    back = from_bytes(to_bytes(art))
    for lay, w, b in zip(back.layers, net.weights, net.biases, strict=True):
        w = w.detach().numpy()
        s = np.float32(127.0) / np.abs(w).max()
        assert lay.weight.dtype == np.int8
        assert np.abs(lay.weight).max() == 127
        np.testing.assert_array_equal(lay.weight, np.round(w * s).astype(np.int8))
        np.testing.assert_array_equal(lay.i_offset, b.detach().numpy() * s)
        np.testing.assert_array_equal(lay.float_weight, w)
        assert lay.weight_scale == pytest.approx(float(s), rel=1e-7)
        assert np.float32(lay.threshold) == np.float32(lay.float_threshold) * np.float32(s)
    # the float masters rebuild the same network
    again = from_artifact(back)
    obs = _observations(50)
    with torch.no_grad():
        a = net(net.encode(obs), "float").q_values
        b = again(again.encode(obs), "float").q_values
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert back.provenance["seed"] == 5
    assert back.provenance["snn"]["hidden"] == [64, 64]
    assert back.ticks == net.config.input_ticks + 3


def test_learned_leak_and_threshold_survive_the_artifact_bit_for_bit():
    net = _net(seed=6, alpha_decay=0.9, learn_alpha=True, learn_threshold=True)
    with torch.no_grad():
        net.alpha.copy_(torch.tensor([0.8123, 0.9577]))
        net.threshold.copy_(torch.tensor([0.61, 1.37]))
    back = from_bytes(to_bytes(to_artifact(net, "leaky")))
    assert [lay.alpha_decay for lay in back.layers] == [
        float(np.float32(0.8123)),
        float(np.float32(0.9577)),
        1.0,
    ]
    assert [lay.neuron for lay in back.layers[:-1]] == ["LIF", "LIF"]
    again = from_artifact(back)
    assert again.config.learn_alpha and again.config.learn_threshold
    x = net.encode(_observations(40))
    with torch.no_grad():
        for mode in ("float", "quant"):
            np.testing.assert_array_equal(net(x, mode).q_values, again(x, mode).q_values)
    # and the emulator runs exactly what torch's quant mode computes
    out = run_raster(CompiledNetwork.from_artifact(back), x.numpy().astype(np.uint8))
    with torch.no_grad():
        np.testing.assert_array_equal(
            readout(back, out.v_final, out.counts), net(x, "quant").q_values.numpy()
        )


def test_a_dueling_head_is_exported_as_the_one_output_layer_it_is():
    net = _net(seed=12, dueling=True)
    with torch.no_grad():
        net.value_weight.normal_()
        net.value_bias.fill_(3.0)
    again = from_artifact(from_bytes(to_bytes(to_artifact(net, "duel"))))
    assert not again.config.dueling
    x = net.encode(_observations(40))
    with torch.no_grad():
        for mode in ("float", "quant"):
            np.testing.assert_array_equal(net(x, mode).q_values, again(x, mode).q_values)


def test_poisson_encoder_draws_fresh_spikes_unless_seeded():
    net = _net(seed=8, encoder="poisson")
    art = to_artifact(net, "poisson")
    obs = _observations(30)
    n = len(obs)
    with EmulatorBackend() as emu:
        emu.load(art)
        a = emu.infer("poisson", obs)
        b = emu.infer("poisson", obs)
        assert a.seeds is not None and len(a.seeds) == n
        assert not np.array_equal(a.seeds, b.seeds)
        assert not np.array_equal(a.q_values, b.q_values)  # fresh draws, not a fixed seed
        again = emu.infer("poisson", obs, a.seeds)
        np.testing.assert_array_equal(again.q_values, a.q_values)
        np.testing.assert_array_equal(again.seeds, a.seeds)
        # one observation alone with seed s == the batch row with seed s
        row = emu.infer("poisson", obs[7:8], a.seeds[7:8])
        np.testing.assert_array_equal(row.q_values[0], a.q_values[7])
        with pytest.raises(ValueError, match=f"seeds must be {n} integers"):
            emu.infer("poisson", obs, [1, 2])


def test_deterministic_models_ignore_seeds(observations):
    art = to_artifact(_net(seed=4), "det")
    with EmulatorBackend() as emu:
        emu.load(art)
        a = emu.infer("det", observations)
        b = emu.infer("det", observations, np.arange(len(observations)))
    assert a.seeds is None and b.seeds is None
    np.testing.assert_array_equal(a.q_values, b.q_values)


def test_quantized_network_stays_close_to_float():
    net = _net(seed=7)
    obs = _observations()
    with torch.no_grad():
        x = net.encode(obs)
        qf, qq = net(x, "float").q_values, net(x, "quant").q_values
    # 8-bit weights move Q-values a little, not a lot
    err = (qf - qq).abs().mean() / qf.abs().mean()
    assert float(err) < 0.1


def test_surrogate_gradient_reaches_every_layer():
    net = _net(seed=2)
    x = net.encode(_observations(64))
    for mode in ("float", "quant"):
        net.zero_grad()
        net(x, mode).q_values.pow(2).mean().backward()
        for w in net.weights:
            assert w.grad is not None and float(w.grad.abs().sum()) > 0


def test_reference_backend_runs_float_masters(observations):
    net = _net(seed=9)
    art = to_artifact(net, "ref")
    with ReferenceBackend() as ref, EmulatorBackend() as emu:
        ref.load(art)
        emu.load(art)
        r = ref.infer("ref", observations)
        e = emu.infer("ref", observations)
    with torch.no_grad():  # events here, matmuls there (a record): float rounding apart
        expected = net(net.encode(observations), "float").q_values.numpy()
    np.testing.assert_allclose(r.q_values, expected, rtol=1e-5, atol=1e-5)
    assert r.backend == "reference" and r.ticks == art.ticks
    assert r.q_values.shape == (64, 2) and r.actions.dtype == np.int64
    assert (r.synaptic_events > 0).all()
    assert (r.actions == e.actions).mean() > 0.8


def test_reference_backend_needs_float_masters():
    import dataclasses

    art = random_artifact(seed=1, name="nofloat")
    bare = dataclasses.replace(
        art, layers=tuple(dataclasses.replace(lay, float_weight=None) for lay in art.layers)
    )
    with ReferenceBackend() as ref, pytest.raises(ValueError, match="float master"):
        ref.load(bare)


def test_reference_backend_on_cuda_runs_or_says_there_is_no_gpu(observations):
    """The paper's GPU axis: a CUDA reference gives the CPU reference's answers; on a
    machine without a GPU it refuses with a clear error, and the bench says so."""
    from bench.suite import measure_gpu
    from hw.backend import BackendError

    art = to_artifact(_net(seed=9), "ref")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU"):
            ReferenceBackend("cuda")
        assert measure_gpu(None) == {
            "available": False,
            "reason": "no CUDA GPU visible to torch on this machine",
        }
        return
    with ReferenceBackend("cuda") as gpu, ReferenceBackend() as cpu:
        gpu.load(art)
        cpu.load(art)
        a, b = gpu.infer("ref", observations), cpu.infer("ref", observations)
    np.testing.assert_allclose(a.q_values, b.q_values, rtol=1e-4, atol=1e-4)
    assert (a.actions == b.actions).mean() > 0.95


@pytest.mark.parametrize("kernels", [True, False], ids=["numba", "torch-loop"])
@pytest.mark.parametrize(
    "kw",
    [
        {"encoder": "poisson", "alpha_decay": 0.9, "learn_alpha": True, "learn_threshold": True},
        {"reset": "reset_to_v_reset", "readout": "count_membrane", "alpha_decay": 0.8},
        {"dueling": True, "hidden": (24, 16, 8)},
    ],
)
def test_fast_forward_equals_the_reference_tick_loop(kw, kernels, monkeypatch):
    """simulate_fast (one matmul per layer, the membrane loop compiled or in torch) is
    simulate: bit for bit on the 8-bit path, to float rounding on the float path, and
    its hand-written backward gives autograd's gradients through simulate."""
    import agent.snn as snn

    monkeypatch.setattr(snn, "CPU_KERNELS", kernels)
    net = _net(3, **kw)
    rng = np.random.default_rng(0)
    x = net.encode(_observations(64), rng)
    ticks = net.config.ticks
    slope = net.config.surrogate_slope
    for mode, exact in (("quant", True), ("float", False)):
        grads = []
        outs = []
        for f in (snn.simulate, snn.simulate_fast):
            net.zero_grad()
            out = f(x, net.layer_params(mode), ticks, net.config.readout, record=True, slope=slope)
            (out.q_values.pow(2).mean() + out.spikes_per_layer.sum() * 0).backward()
            grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
            outs.append(out)
        ref, fast = outs
        assert fast.record.shape == ref.record.shape
        if exact:
            assert torch.equal(fast.q_values, ref.q_values)
            assert torch.equal(fast.record, ref.record)
        else:
            torch.testing.assert_close(fast.q_values, ref.q_values, rtol=1e-5, atol=1e-5)
            assert (fast.record != ref.record).float().mean() < 1e-3
        assert torch.equal(fast.spikes_per_layer, ref.spikes_per_layer) or not exact
        assert len(grads[0]) == len(grads[1]) and grads[0]
        for g_ref, g_fast in zip(*grads, strict=True):
            torch.testing.assert_close(g_fast, g_ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        {"encoder": "poisson", "alpha_decay": 0.9, "learn_alpha": True, "learn_threshold": True},
        {"reset": "reset_to_v_reset", "readout": "count_membrane", "alpha_decay": 0.8},
        {"dueling": True, "hidden": (24, 16, 8)},
    ],
)
def test_forward_without_gradients_runs_by_events_as_the_tick_loop(kw, monkeypatch):
    """Without gradients simulate_fast runs the emulator's event kernel: the tick loop's
    result, bit for bit on the 8-bit path, to float rounding on the float path."""
    import agent.snn as snn

    calls = []
    run = snn.run_layers
    monkeypatch.setattr(snn, "run_layers", lambda *a: calls.append(len(a[0])) or run(*a))
    net = _net(3, **kw)
    x = net.encode(_observations(100), np.random.default_rng(1))
    ticks, readout = net.config.ticks, net.config.readout
    for mode, exact in (("quant", True), ("float", False)):
        layers = net.layer_params(mode)
        with torch.no_grad():
            calls.clear()
            fast = snn.simulate_fast(x, layers, ticks, readout)
            assert calls == [len(x)]
            ref = snn.simulate(x, layers, ticks, readout)
        if exact:
            assert torch.equal(fast.q_values, ref.q_values)
            assert torch.equal(fast.spikes_per_layer, ref.spikes_per_layer)
            assert torch.equal(fast.counts, ref.counts)
        else:
            torch.testing.assert_close(fast.q_values, ref.q_values, rtol=1e-5, atol=1e-5)
            assert (fast.spikes_per_layer - ref.spikes_per_layer).abs().mean() < 0.5
        with torch.enable_grad():  # with gradients: the matmul path, not the kernel
            calls.clear()
            snn.simulate_fast(x, layers, ticks, readout)
            assert calls == []


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's; elsewhere keep_freed_memory does nothing",
)
def test_freed_tensor_memory_is_kept_on_glibc():
    """Training sets glibc to keep freed MiB-sized blocks (a fresh forward's tensors
    otherwise fault in their pages again); both settings must take."""
    from agent.snn import keep_freed_memory

    assert keep_freed_memory() is True
