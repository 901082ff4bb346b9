"""Fake ``spinnaker2.hardware``: a SpiNNaker2Chip that simulates the network itself.

The simulation is written independently of ``hw.emulator`` (dense integer
weight matrices per projection, numpy float32 state, one Python loop over ticks).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from spinnaker2.snn import FakeSDKError, Network

USABLE_PES = 148

#: the timing model (for tests and benchmarks; assumptions, not board measurements): a
#: run takes at least RUN_OVERHEAD_S (load, start, read back over Ethernet) plus
#: TICK_S per tick, whatever the simulation itself takes
RUN_OVERHEAD_S = float(os.environ.get("S2LOOP_FAKE_BOARD_RUN_S", "0"))
TICK_S = float(os.environ.get("S2LOOP_FAKE_BOARD_TICK_S", "0"))

#: every run, for tests: {"eth_ip", "timesteps", "sys_tick_in_s", "populations", "pes"}
RUN_LOG: list[dict[str, Any]] = []


def _as_f32(value: Any, size: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.float32), (size,)).astype(np.float32)


class SpiNNaker2Chip:
    def __init__(self, eth_ip: str | None = None) -> None:
        if eth_ip is not None and not isinstance(eth_ip, str):
            raise FakeSDKError("eth_ip must be a str")
        self.eth_ip = eth_ip

    def run(
        self,
        net: Network,
        timesteps: int,
        sys_tick_in_s: float = 1e-3,
        debug: bool = False,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {"mapping_only", "experiment_backend_settings"}
        if unknown:
            raise FakeSDKError(f"unknown run() arguments {sorted(unknown)}")
        if not isinstance(net, Network):
            raise FakeSDKError("net must be an snn.Network")
        if type(timesteps) is not int or timesteps < 1:
            raise FakeSDKError(f"timesteps must be a plain int >= 1, got {timesteps!r}")
        if type(sys_tick_in_s) is not float or not sys_tick_in_s > 0:
            raise FakeSDKError("sys_tick_in_s must be a float > 0")
        pops = net.populations
        for proj in net.projections:
            if not any(proj.pre is p for p in pops) or not any(proj.post is p for p in pops):
                raise FakeSDKError("a projection connects a population not added to the network")
        pes = sum(-(-p.size // p.max_atoms_per_core) for p in pops)
        if pes > USABLE_PES:
            raise FakeSDKError(f"network needs {pes} PEs, the chip has {USABLE_PES}")
        RUN_LOG.append(
            {
                "eth_ip": self.eth_ip,
                "timesteps": timesteps,
                "sys_tick_in_s": sys_tick_in_s,
                "populations": len(pops),
                "pes": pes,
            }
        )
        start = time.perf_counter()
        _simulate(net, timesteps)
        rest = RUN_OVERHEAD_S + timesteps * TICK_S - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)


def _simulate(net: Network, timesteps: int) -> None:
    pops = net.populations
    index = {id(p): k for k, p in enumerate(pops)}
    # dense integer weights per (post, pre) pair of populations
    incoming: list[list[tuple[int, np.ndarray]]] = [[] for _ in pops]
    for proj in net.projections:
        w = np.zeros((proj.post.size, proj.pre.size), dtype=np.int64)
        for i, j, weight, _delay in proj.connections:
            w[j, i] += weight
        incoming[index[id(proj.post)]].append((index[id(proj.pre)], w))

    lif = {}
    for k, p in enumerate(pops):
        if p.neuron_model == "lif_no_delay":
            lif[k] = {
                "thr": np.float32(p.param("threshold")),
                "alpha": np.float32(p.param("alpha_decay")),
                "ioff": _as_f32(p.param("i_offset"), p.size),
                "v_reset": np.float32(p.param("v_reset")),
                "sub": p.param("reset") == "reset_by_subtraction",
                "v": _as_f32(p.param("v_init"), p.size).copy(),
            }
    # spike_list inputs as a [timesteps, size] table; spikes outside the run are dropped
    fired = [np.zeros((timesteps, p.size), dtype=bool) for p in pops]
    for k, p in enumerate(pops):
        if p.neuron_model == "spike_list":
            for idx, ticks in p.params.items():
                for t in ticks:
                    if t < timesteps:
                        fired[k][t, idx] = True
    volts = {k: np.zeros((timesteps, pops[k].size), dtype=np.float32) for k in lif}

    for t in range(timesteps):
        for k, s in lif.items():
            current = np.zeros(pops[k].size, dtype=np.int64)
            if t >= 1:
                for pre_k, w in incoming[k]:
                    current += w @ fired[pre_k][t - 1].astype(np.int64)
            v = s["alpha"] * s["v"]
            v = v + current.astype(np.float32)
            v = v + s["ioff"]
            spike = v > s["thr"]
            if s["sub"]:
                v = np.where(spike, v - s["thr"], v).astype(np.float32)
            else:
                v = np.where(spike, s["v_reset"], v).astype(np.float32)
            s["v"] = v
            fired[k][t] = spike
            volts[k][t] = v

    for k, p in enumerate(pops):
        p._spikes = {i: [int(t) for t in np.flatnonzero(fired[k][:, i])] for i in range(p.size)}
        if k in volts:
            p._voltages = {i: volts[k][:, i].copy() for i in range(p.size)}
