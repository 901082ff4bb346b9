import dataclasses

import numpy as np
import pytest

from hw.artifact import Encoder
from hw.emulator import (
    CompiledNetwork,
    EmulatorBackend,
    EmulatorSettings,
    greedy_actions,
    lif_step,
    readout,
    run_observations,
    run_raster,
)
from hw.encoding import encode, spike_raster
from hw.synthetic import random_artifact


def _numpy_reference(art, obs, inclusive=False):
    """The chip semantics written tick by tick with lif_step (slow, obvious)."""
    raster = encode(art, obs)
    n_b = obs.shape[0]
    v = [np.full((n_b, lay.size), np.float32(lay.v_init), np.float32) for lay in art.layers]
    prev = [np.zeros((n_b, lay.size), np.uint8) for lay in art.layers]
    counts = np.zeros((n_b, art.layers[-1].size), np.int64)
    record = []
    for t in range(art.ticks):
        cur = []
        for k, lay in enumerate(art.layers):
            if k == 0:
                pre = raster[:, t - 1] if 1 <= t <= art.encoder.input_ticks else None
                if pre is None:
                    pre = np.zeros((n_b, lay.fan_in), np.uint8)
            else:
                pre = prev[k - 1]
            i_syn = (pre.astype(np.int64) @ lay.weight.T.astype(np.int64)).astype(np.float32)
            s, v[k] = lif_step(
                i_syn,
                v[k],
                threshold=np.float32(lay.threshold),
                alpha_decay=np.float32(lay.alpha_decay),
                i_offset=lay.i_offset,
                reset=lay.reset,
                v_reset=np.float32(lay.v_reset),
                inclusive=inclusive,
            )
            cur.append(s)
        counts += cur[-1]
        record.append(np.concatenate(cur, axis=1))
        prev = cur
    return v[-1], counts, np.stack(record, axis=1)


@pytest.mark.parametrize("reset", ["reset_by_subtraction", "reset_to_v_reset"])
@pytest.mark.parametrize("readout_kind", ["membrane", "count_membrane"])
@pytest.mark.parametrize("comparison", [">", ">="])
def test_kernel_matches_numpy_tick_by_tick(reset, readout_kind, comparison, observations):
    art = random_artifact(seed=11, reset=reset, readout=readout_kind)
    net = CompiledNetwork.from_artifact(art)
    settings = EmulatorSettings(threshold_comparison=comparison)
    out = run_raster(net, encode(art, observations), record=True, settings=settings)
    v_ref, counts_ref, rec_ref = _numpy_reference(art, observations, inclusive=comparison == ">=")
    np.testing.assert_array_equal(out.record, rec_ref)
    np.testing.assert_array_equal(out.v_final, v_ref)
    np.testing.assert_array_equal(out.counts, counts_ref)
    assert out.layer_spikes[:, 0].sum() > 0, "hidden layer should spike for this test to bite"


def test_one_tick_delay_per_hop():
    art = random_artifact(seed=2, hidden=(16, 16), ticks=12)
    net = CompiledNetwork.from_artifact(art)
    obs = np.array([[1.0, 0.5, 0.1, -1.0]], np.float32)
    out = run_raster(net, encode(art, obs), record=True)
    # with zero bias, layer 1 cannot spike at tick 0 (input arrives at tick 1)
    zero_bias = dataclasses.replace(
        art,
        layers=tuple(
            dataclasses.replace(lay, i_offset=np.zeros_like(lay.i_offset)) for lay in art.layers
        ),
    )
    out0 = run_raster(CompiledNetwork.from_artifact(zero_bias), encode(art, obs), record=True)
    rec = out0.record[0]
    assert rec[0, :16].sum() == 0  # layer 1 silent at tick 0
    assert rec[:2, 16:32].sum() == 0  # layer 2 silent at ticks 0 and 1
    first_l1 = int(np.argmax(rec[:, :16].sum(axis=1) > 0))
    first_l2 = int(np.argmax(rec[:, 16:32].sum(axis=1) > 0))
    assert first_l1 >= 1 and first_l2 >= first_l1 + 1
    assert out.record.shape == (1, 12, 16 + 16 + 2)


@pytest.mark.parametrize(
    ("current", "alpha_decay", "spikes_expected", "v_expected"),
    [(1.0, 1.0, 0, 1.0), (1.5, 0.5, 1, 0.5)],  # at the threshold: none; past it: one
)
def test_strict_threshold_does_not_spike_at_equality(
    current, alpha_decay, spikes_expected, v_expected
):
    spikes, v = lif_step(
        np.array([current], np.float32),
        np.array([0.0], np.float32),
        threshold=np.float32(1.0),
        alpha_decay=np.float32(alpha_decay),
        i_offset=np.array([0.0], np.float32),
        reset="reset_by_subtraction",
        v_reset=np.float32(0.0),
    )
    assert spikes[0] == spikes_expected and v[0] == np.float32(v_expected)


def test_deterministic_encoder_counts_and_spacing():
    from hw.artifact import Encoder

    enc = Encoder(kind="deterministic", channels="signed", input_ticks=8, phase=0.5)
    p = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    raster = spike_raster(enc, p)
    np.testing.assert_array_equal(raster[0].sum(axis=0), [0, 2, 4, 8])
    np.testing.assert_array_equal(np.flatnonzero(raster[0, :, 2]), [0, 2, 4, 6])


def test_poisson_encoder_rates_and_seeds():
    from hw.artifact import Encoder

    enc = Encoder(kind="poisson", channels="signed", input_ticks=200)
    p = np.full((2, 3), 0.3, np.float32)
    a = spike_raster(enc, p, seeds=np.array([5, 6]))
    np.testing.assert_array_equal(a, spike_raster(enc, p, seeds=np.array([5, 6])))
    assert not np.array_equal(a[0], a[1])  # each row its own stream
    np.testing.assert_array_equal(a[1:], spike_raster(enc, p[:1], seeds=np.array([6])))
    assert 0.25 < a.mean() < 0.35
    with pytest.raises(ValueError, match="pass rng or seeds"):
        spike_raster(enc, p)


def test_a_repeated_seeded_raster_is_remembered_not_redrawn(monkeypatch):
    """The same rates and seeds twice in a row (an evaluation's emulator and its float
    check) draw once; the caller gets its own copy, and other rates or seeds draw anew."""
    from hw import encoding
    from hw.artifact import Encoder

    made = []
    real = np.random.PCG64
    monkeypatch.setattr(np.random, "PCG64", lambda s: made.append(s) or real(s))
    monkeypatch.setattr(encoding, "_last_seeded", None)
    enc = Encoder(kind="poisson", channels="signed", input_ticks=50)
    p = np.full((3, 4), 0.4, np.float32)
    seeds = np.array([1, 2, 3])
    a = spike_raster(enc, p, seeds=seeds)
    a[:] = 7  # the caller's copy: not what the next call gets
    b = spike_raster(enc, p, seeds=seeds)
    assert len(made) == 3 and b.max() == 1 and 0.3 < b.mean() < 0.5
    c = spike_raster(enc, p, seeds=np.array([1, 2, 4]))
    d = spike_raster(enc, p * 0.5, seeds=np.array([1, 2, 4]))
    assert len(made) == 9 and d.mean() < c.mean()
    np.testing.assert_array_equal(c[:2], b[:2])  # a seed's spikes do not depend on the memo


def test_backend_is_batched_and_deterministic(observations):
    art = random_artifact(seed=4, name="m")
    with EmulatorBackend() as be:
        be.load(art)
        full = be.infer("m", observations)
        single = [be.infer("m", o) for o in observations[:8]]
        again = be.infer("m", observations)
    np.testing.assert_array_equal(full.q_values, again.q_values)
    for k, r in enumerate(single):
        np.testing.assert_array_equal(r.q_values[0], full.q_values[k])
        assert r.actions[0] == full.actions[k]
    assert full.q_values.shape == (64, 2) and full.actions.dtype == np.int64
    assert full.ticks == art.ticks
    assert (full.synaptic_events > 0).all()
    np.testing.assert_array_equal(full.actions, greedy_actions(full.q_values))


def test_readout_scales_back_to_float_units():
    art = random_artifact(seed=4, readout="count_membrane")
    v = np.array([[10.0, -5.0]], np.float32)
    counts = np.array([[2, 0]], np.int32)
    thr, scale = art.layers[-1].threshold, art.layers[-1].weight_scale
    q = readout(art, v, counts)
    np.testing.assert_allclose(q, [[(2 * thr + 10.0) / scale, -5.0 / scale]], rtol=1e-6)


@pytest.mark.parametrize("bad", [[1.0, 2.0, 3.0], [[np.nan, 0, 0, 0]], [[0, np.inf, 0, 0]]])
def test_bad_observations_are_rejected(bad):
    art = random_artifact(seed=4, name="m")
    with EmulatorBackend() as be:
        be.load(art)
        with pytest.raises(ValueError, match="shape|finite"):
            be.infer("m", np.asarray(bad, dtype=np.float32))


# --------------------------------------------------------------- fused fast path


def _slow_path(art, obs, settings, seeds=None):
    """encode + run_raster + readout + greedy_actions: the reference for the fast path."""
    net = CompiledNetwork.from_artifact(art)
    out = run_raster(net, encode(art, obs, seeds=seeds), settings=settings)
    q = readout(art, out.v_final, out.counts)
    return q, greedy_actions(q), out.layer_spikes, out.synaptic_events


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"reset": "reset_to_v_reset", "readout": "count_membrane"},
        {"encoder": Encoder(kind="deterministic", channels="signed", input_ticks=9, phase=0.0)},
        {"encoder": Encoder(kind="deterministic", channels="tent", bins=7, input_ticks=12)},
        {"hidden": (40,), "actions": 3, "alpha_decay": 0.7},
    ],
)
@pytest.mark.parametrize("comparison", [">", ">="])
def test_fused_kernel_matches_encode_then_run(kw, comparison, observations):
    art = random_artifact(seed=13, **kw)
    settings = EmulatorSettings(threshold_comparison=comparison)
    net = CompiledNetwork.from_artifact(art)
    # include out-of-range, zero and exact-boundary observations
    extra = np.array(
        [[0, 0, 0, 0], [2.4, -3.0, 0.21, 3.0], [1e6, -1e6, 5.0, -5.0], [0.6, 0.75, -0.0525, 1.5]],
        np.float32,
    )
    obs = np.concatenate([observations, extra])
    fast = run_observations(net, obs, settings=settings)
    slow = _slow_path(art, obs, settings)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast[2][:, 0].sum() > 0


def test_threshold_comparison_setting_decides_equality():
    art = random_artifact(seed=2, hidden=(8,), ticks=4)
    lay = art.layers[0]
    # no input weights, i_offset == threshold: v hits the threshold exactly at tick 0
    lay = dataclasses.replace(
        lay,
        weight=np.zeros_like(lay.weight),
        i_offset=np.full(lay.size, lay.threshold, np.float32),
        alpha_decay=1.0,
    )
    art = dataclasses.replace(art, layers=(lay, *art.layers[1:]))
    obs = np.zeros((1, 4), np.float32)
    net = CompiledNetwork.from_artifact(art)
    for comparison, expected in ((">", 0), (">=", 8)):
        settings = EmulatorSettings(threshold_comparison=comparison)
        rec = run_raster(net, encode(art, obs), settings=settings, record=True).record
        assert rec[0, 0, :8].sum() == expected
        assert run_observations(net, obs, settings=settings)[2][0, 0] == rec[0, :, :8].sum()


def test_emulator_backend_poisson_uses_the_seeds(observations):
    enc = Encoder(kind="poisson", channels="tent", bins=5, input_ticks=12)
    art = random_artifact(seed=4, name="p", encoder=enc)
    seeds = np.arange(len(observations)) * 7
    with EmulatorBackend() as be:
        be.load(art)
        a = be.infer("p", observations, seeds)
        b = be.infer("p", observations, seeds)
        c = be.infer("p", observations, seeds + 1)
        d = be.infer("p", observations)
    np.testing.assert_array_equal(a.q_values, b.q_values)
    assert not np.array_equal(a.q_values, c.q_values)
    slow = _slow_path(art, observations, EmulatorSettings(), d.seeds)  # the seeds d reports
    np.testing.assert_array_equal(d.q_values, slow[0])


def test_non_contiguous_and_float64_observations_are_accepted(observations):
    art = random_artifact(seed=4, name="m")
    with EmulatorBackend() as be:
        be.load(art)
        ref = be.infer("m", observations[::2])
        strided = be.infer("m", np.asfortranarray(observations)[::2])
        as64 = be.infer("m", observations[::2].astype(np.float64).tolist())
    np.testing.assert_array_equal(ref.q_values, strided.q_values)
    np.testing.assert_array_equal(ref.q_values, as64.q_values)
