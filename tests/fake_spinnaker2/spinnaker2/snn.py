"""Fake ``spinnaker2.snn``: Population, Projection, Network, with strict checks.

Checks mirror what the real SDK packs into chip memory: sizes and indices are
plain ints, parameters plain floats (or per-neuron lists of them), weights of
``lif_no_delay`` are ints in [-127, 127], ``lif_no_delay`` has no delays.
"""

from __future__ import annotations

from typing import Any

NEURON_MODELS = ("spike_list", "lif_no_delay")
LIF_PARAMS = {
    "threshold": 1.0,
    "alpha_decay": 1.0,
    "i_offset": 0.0,
    "v_init": 0.0,
    "v_reset": 0.0,
    "reset": "reset_by_subtraction",
}
RESETS = ("reset_by_subtraction", "reset_to_v_reset")
RECORDABLE = {"spike_list": ("spikes",), "lif_no_delay": ("spikes", "v", "v_last")}


class FakeSDKError(ValueError):
    """What the fake raises when it is used in a way the SDK documents no support for."""


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_number(x: Any) -> bool:
    return type(x) in (int, float)


class Population:
    def __init__(
        self,
        size: int,
        neuron_model: str,
        params: dict | None = None,
        name: str = "",
        record: list[str] | None = None,
    ) -> None:
        if not _is_int(size) or size < 1:
            raise FakeSDKError(f"size must be a plain int >= 1, got {size!r} ({type(size)})")
        if neuron_model not in NEURON_MODELS:
            raise FakeSDKError(f"neuron_model {neuron_model!r} not supported by the fake")
        if not isinstance(name, str):
            raise FakeSDKError("name must be a str")
        record = ["spikes"] if record is None else record
        if not isinstance(record, list) or any(r not in RECORDABLE[neuron_model] for r in record):
            raise FakeSDKError(f"record {record!r} invalid for {neuron_model}")
        self.size = size
        self.neuron_model = neuron_model
        self.name = name
        self.record = list(record)
        self.max_atoms_per_core = 250
        self.params = {} if params is None else params
        self._spikes: dict[int, list[int]] | None = None
        self._voltages: dict[int, Any] | None = None

    # params are checked on every assignment (users set inp.params between runs)
    @property
    def params(self) -> dict:
        return self._params

    @params.setter
    def params(self, params: dict) -> None:
        if not isinstance(params, dict):
            raise FakeSDKError("params must be a dict")
        if self.neuron_model == "spike_list":
            for idx, ticks in params.items():
                if not _is_int(idx) or not 0 <= idx < self.size:
                    raise FakeSDKError(f"spike_list key {idx!r} is not a neuron index")
                if not isinstance(ticks, list) or not all(_is_int(t) and t >= 0 for t in ticks):
                    raise FakeSDKError(f"spike_list ticks of neuron {idx} must be a list of ints")
        else:
            for key, value in params.items():
                if key not in LIF_PARAMS:
                    raise FakeSDKError(f"unknown lif_no_delay parameter {key!r}")
                if key == "reset":
                    if value not in RESETS:
                        raise FakeSDKError(f"reset {value!r} not in {RESETS}")
                elif isinstance(value, list):
                    if len(value) != self.size or not all(_is_number(v) for v in value):
                        raise FakeSDKError(f"{key}: list must hold {self.size} plain numbers")
                elif not _is_number(value):
                    raise FakeSDKError(f"{key} must be a plain number or list, got {type(value)}")
        self._params = params

    def param(self, key: str) -> Any:
        return self._params.get(key, LIF_PARAMS.get(key))

    def set_max_atoms_per_core(self, n: int) -> None:
        if not _is_int(n) or n < 1:
            raise FakeSDKError("max atoms per core must be a plain int >= 1")
        self.max_atoms_per_core = n

    def get_spikes(self) -> dict[int, list[int]]:
        if "spikes" not in self.record:
            raise FakeSDKError(f"population {self.name!r} does not record spikes")
        if self._spikes is None:
            raise FakeSDKError("no results: run the network first")
        return self._spikes

    def get_voltages(self) -> dict[int, Any]:
        if "v" not in self.record:
            raise FakeSDKError(f"population {self.name!r} does not record 'v'")
        if self._voltages is None:
            raise FakeSDKError("no results: run the network first")
        return self._voltages


class Projection:
    def __init__(self, pre: Population, post: Population, connections: list) -> None:
        if not isinstance(pre, Population) or not isinstance(post, Population):
            raise FakeSDKError("pre and post must be snn.Population")
        if post.neuron_model == "spike_list":
            raise FakeSDKError("a spike_list population cannot be a projection target")
        if not isinstance(connections, list):
            raise FakeSDKError("connections must be a list of [pre, post, weight, delay]")
        for c in connections:
            if not isinstance(c, list | tuple) or len(c) != 4:
                raise FakeSDKError(f"connection {c!r} is not [pre, post, weight, delay]")
            i, j, w, d = c
            if not (_is_int(i) and _is_int(j) and _is_int(w) and _is_int(d)):
                raise FakeSDKError(f"connection {c!r}: entries must be plain ints")
            if not (0 <= i < pre.size and 0 <= j < post.size):
                raise FakeSDKError(f"connection {c!r}: index out of range")
            if not -127 <= w <= 127:
                raise FakeSDKError(f"connection {c!r}: lif_no_delay weights lie in [-127, 127]")
            if d != 0:
                raise FakeSDKError(f"connection {c!r}: lif_no_delay has no synaptic delay")
        self.pre = pre
        self.post = post
        self.connections = connections


class Network:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.populations: list[Population] = []
        self.projections: list[Projection] = []

    def add(self, *objs: Population | Projection) -> None:
        for o in objs:
            if isinstance(o, Population):
                if any(o is p for p in self.populations):
                    raise FakeSDKError(f"population {o.name!r} added twice")
                self.populations.append(o)
            elif isinstance(o, Projection):
                self.projections.append(o)
            else:
                raise FakeSDKError(f"cannot add {type(o)} to a Network")

    def reset(self) -> None:
        for p in self.populations:
            p._spikes = None
            p._voltages = None
