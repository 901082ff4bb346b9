"""Spike traces (``infer(..., trace=True)``, ``hw.trace``) on every backend: the
documented shape, ``output_q``'s last row is ``q_values``, spike counts match what the
backend reports, a seed fixes the trace, and the board's trace on the fake SDK is the
emulator's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hw.artifact import Encoder
from hw.emulator import EmulatorBackend, run_raster
from hw.encoding import encode
from hw.synthetic import random_artifact
from hw.trace import SpikeTrace, trace_cells

POISSON = Encoder(kind="poisson", channels="tent", bins=4, input_ticks=12)


def _artifacts():
    return {
        "membrane": random_artifact(seed=21, name="m", hidden=(32, 24)),
        "count": random_artifact(
            seed=5, name="c", hidden=(16,), readout="count_membrane", alpha_decay=0.8
        ),
        "poisson": random_artifact(seed=7, name="p", hidden=(24, 24), encoder=POISSON),
    }


def _check_shape(tr: dict, art) -> None:
    """The documented wire shape, every value in range."""
    assert set(tr) == {"ticks", "input", "layers", "output_q"}
    assert tr["ticks"] == art.ticks
    for t, i in tr["input"]:
        assert 0 <= t < art.ticks and 0 <= i < art.input_size
    assert [(lay["name"], lay["size"]) for lay in tr["layers"]] == [
        (lay.name, lay.size) for lay in art.layers
    ]
    for lay in tr["layers"]:
        assert all(0 <= t < art.ticks and 0 <= i < lay["size"] for t, i in lay["spikes"])
        assert lay["spikes"] == sorted(lay["spikes"]), "pairs ordered by tick, then neuron"
    assert len(tr["output_q"]) == art.ticks
    assert all(len(row) == art.action_count for row in tr["output_q"])


def _backends(fake: bool):
    from agent.reference import ReferenceBackend

    out = [EmulatorBackend(), ReferenceBackend()]
    if fake:
        from hw.board import SpiNNaker2Backend

        out.append(SpiNNaker2Backend(max_copies=4))
    return out


@pytest.mark.parametrize("kind", ["membrane", "count", "poisson"])
def test_trace_shape_last_row_and_counts_on_every_backend(fake_sdk, observations, kind):
    art = _artifacts()[kind]
    obs = observations[:6]
    seeds = 100 + np.arange(len(obs))
    for backend in _backends(fake=True):
        with backend:
            backend.load(art)
            traced = backend.infer(art.name, obs, seeds, trace=True)
            plain = backend.infer(art.name, obs, seeds)
        assert plain.traces is None
        np.testing.assert_array_equal(traced.q_values, plain.q_values)
        np.testing.assert_array_equal(traced.actions, plain.actions)
        assert len(traced.traces) == len(obs)
        for b, tr in enumerate(traced.traces):
            _check_shape(json.loads(tr.to_json()), art)
            # the last row is the answer itself, bit for bit
            np.testing.assert_array_equal(tr.output_q[-1], traced.q_values[b])
            counts = [len(lay.spikes) for lay in tr.layers]
            assert counts == traced.spikes_per_layer[b].tolist(), backend.name
        assert traced.spikes_per_layer[:, 0].sum() > 0, "the hidden layer must spike"


@pytest.mark.parametrize("kind", ["membrane", "count", "poisson"])
def test_board_trace_on_fake_sdk_equals_emulator_trace(fake_sdk, observations, kind):
    from hw.board import SpiNNaker2Backend

    art = _artifacts()[kind]
    obs = observations[:10]
    seeds = 7 + np.arange(len(obs))
    with EmulatorBackend() as emu, SpiNNaker2Backend(max_copies=4) as board:
        emu.load(art)
        board.load(art)
        a = emu.infer(art.name, obs, seeds, trace=True)
        b = board.infer(art.name, obs, seeds, trace=True)
    assert board.runs == 3  # 10 observations, 4 copies per run
    assert [t.to_json() for t in a.traces] == [t.to_json() for t in b.traces]


def test_emulator_trace_matches_its_spike_record_and_membranes(observations):
    """The trace holds exactly the emulator's full record, and output_q row t is the
    readout of the output layer after tick t (membrane readout: v_t / scale)."""
    art = _artifacts()["membrane"]
    with EmulatorBackend() as emu:
        emu.load(art)
        res = emu.infer(art.name, observations[:4], trace=True)
        net = emu._get(art.name)
    out = run_raster(net, encode(art, observations[:4]), record=True)
    scale = np.float32(art.layers[-1].weight_scale)
    for b, tr in enumerate(res.traces):
        dense = np.concatenate([tr.raster(k) for k in range(len(tr.layers))], axis=1)
        np.testing.assert_array_equal(dense, out.record[b])
        np.testing.assert_array_equal(tr.output_q, out.v_record[b] / scale)
    # a network that needs a few ticks to answer: early rows differ from the last
    assert any(not np.array_equal(tr.output_q[0], tr.output_q[-1]) for tr in res.traces)


def test_same_poisson_seed_gives_the_same_trace(observations):
    art = _artifacts()["poisson"]
    obs = observations[:1]
    with EmulatorBackend() as emu:
        emu.load(art)
        one = emu.infer(art.name, obs, np.array([42]), trace=True).traces[0].to_json()
        two = emu.infer(art.name, obs, np.array([42]), trace=True).traces[0].to_json()
        other = emu.infer(art.name, obs, np.array([43]), trace=True).traces[0].to_json()
    assert one == two
    assert json.loads(one)["input"] != json.loads(other)["input"]


def test_trace_round_trips_through_its_wire_form(observations):
    art = _artifacts()["count"]
    with EmulatorBackend() as emu:
        emu.load(art)
        tr = emu.infer(art.name, observations[:1], trace=True).traces[0]
    back = SpikeTrace.from_dict(json.loads(tr.to_json()))
    assert back.to_json() == tr.to_json()
    assert trace_cells(art) == art.ticks * (art.input_size + sum(x.size for x in art.layers))


def test_compiled_msgpack_of_a_trace_is_byte_for_byte_the_packers(observations):
    """hw.trace.to_msgpack (what a traced msgpack answer carries) against msgpack-python
    on the plain lists; a wide layer and many ticks exercise the 1-, 2- and 3-byte ints
    and the 16-bit array headers."""
    import msgpack

    from hw.trace import to_msgpack

    arts = [*_artifacts().values(), random_artifact(seed=2, name="w", hidden=(300,), ticks=40)]
    for art in arts:
        with EmulatorBackend() as emu:
            emu.load(art)
            res = emu.infer(art.name, observations[:8], 3 + np.arange(8), trace=True)
        for tr in res.traces:
            want = msgpack.packb(tr.to_dict(), default=lambda a: a.tolist(), use_bin_type=True)
            assert to_msgpack(tr) == want
    assert max(len(lay.spikes) for lay in tr.layers) > 15  # arrays past a fixarray
    assert int(tr.layers[0].spikes[:, 1].max()) >= 256  # neurons past one byte


@pytest.mark.parametrize("x", [0, 15, 16, 127, 128, 255, 256, 65535, 65536, 2**32 - 1])
def test_compiled_ints_and_array_headers_are_msgpacks_at_every_width(x):
    import msgpack

    from hw.trace import _pack_array_header, _pack_uint

    buf = np.zeros(8, np.uint8)
    assert bytes(buf[: _pack_uint(buf, 0, x)]) == msgpack.packb(x)
    assert bytes(buf[: _pack_array_header(buf, 0, x)]) == msgpack.Packer().pack_array_header(x)


def test_a_traced_non_finite_observation_is_refused_like_an_untraced_one():
    art = _artifacts()["membrane"]
    with EmulatorBackend() as emu:
        emu.load(art)
        bad = np.array([[0.0, np.nan, 0.0, 0.0]], np.float32)
        for trace in (False, True):
            with pytest.raises(ValueError, match="finite"):
                emu.infer(art.name, bad, trace=trace)
        with pytest.raises(ValueError, match=r"shape \[batch, 4\]"):
            emu.infer(art.name, np.zeros((1, 3), np.float32), trace=True)
