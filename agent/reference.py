"""The float reference backend: an artifact's unquantized master network, run in torch
with the same tick semantics as the chip. On the CPU it runs the fast forward
(``agent.snn.simulate_fast``: a layer's input over all ticks in one matmul, the membrane
loop compiled), tested equal to the tick loop ``agent.snn.simulate`` to float rounding;
on a GPU the tick loop itself, captured whole in a graph (below).

Registered for the service as ``agent.reference:ReferenceBackend`` (name
``reference``); ``hw`` never imports it. Comparing its actions with the emulator's
gives the float vs 8-bit decision agreement.

With ``device="cuda"`` it runs on a GPU (the paper's comparison axis), as one captured
CUDA graph per (model, batch bucket): a batch of B observations runs in the graph of
the next power of two >= B (padding rows are zeros and are dropped), so a batch-1 call
is one copy in, one graph replay and one copy out instead of ~30 kernel launches per
tick. Encoding stays on the host, outside the graph, as for the chip. ``static=True``
on the CPU runs the very same path (static buffers, buckets, padding) with the capture
left out, so the code around the graph is tested where no GPU is.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from agent.snn import LayerParams, float_params, greedy, simulate, simulate_fast
from hw.artifact import ModelArtifact
from hw.backend import Backend, BackendError, InferenceResult, check_observations
from hw.encoding import encode, request_seeds
from hw.trace import build_traces


def synaptic_events(record: np.ndarray, raster: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Spikes delivered x fan-out, per observation, counted as the emulator does: a spike
    of tick t is delivered at t+1 if the run lasts that long. int64 [B]."""
    ticks = record.shape[1]
    t_in = raster.shape[1]
    delivered_in = raster[:, : max(0, min(t_in, ticks - 1))].sum(axis=(1, 2), dtype=np.int64)
    events = delivered_in * sizes[0]
    start = 0
    for k in range(len(sizes) - 1):
        block = record[:, : ticks - 1, start : start + sizes[k]]
        events = events + block.sum(axis=(1, 2), dtype=np.int64) * sizes[k + 1]
        start += sizes[k]
    return events


def _bucket(batch: int) -> int:
    """The graph a batch runs in: the next power of two (1, 2, 4, ...)."""
    return 1 << max(0, batch - 1).bit_length()


class _StaticForward:
    """The network of one model at one batch size on fixed buffers: ``x`` (the input
    raster, float32 [batch, input_ticks, n_in] on the device) is copied in, the forward
    runs (a CUDA graph replay when ``capture``; an eager run otherwise), and the outputs
    (q_values, record, spikes_per_layer) are copied to the host before the next call may
    overwrite them. Callers hold the backend's replay lock."""

    def __init__(
        self, forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], x: torch.Tensor,
        capture: bool,
    ) -> None:  # fmt: skip
        self.x = x
        self.forward = forward
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            # warm up on a side stream (lazy init, allocator), then record one forward
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(2):
                    forward(self.x)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.out = forward(self.x)

    def __call__(self, raster: torch.Tensor) -> list[np.ndarray]:
        """``raster``: float32 [b <= batch, input_ticks, n_in] on the host; outputs for
        its b rows, numpy arrays the caller owns."""
        b = raster.shape[0]
        self.x[:b].copy_(raster)
        self.x[b:].zero_()
        if self.graph is not None:
            self.graph.replay()
            out = self.out
        else:
            with torch.no_grad():
                out = self.forward(self.x)
        return [t[:b].to("cpu", copy=True).numpy() for t in out]  # waits for the GPU


class ReferenceBackend(Backend):
    """Float (unquantized) spiking network from ``float_weight`` / ``float_i_offset`` /
    ``float_threshold``; same encoder, ticks, resets and readout as the emulator.

    ``device``: ``cpu`` or ``cuda[:N]``. ``static``: run on fixed buffers per (model,
    batch bucket), captured as CUDA graphs on a GPU (default: on for CUDA, off on the
    CPU, where eager torch is as fast). ``max_graphs``: most static forwards kept, the
    least recently used dropped first."""

    name = "reference"
    thread_safe = True  # torch releases the GIL; no state changes during a call
    gives_traces = True

    def __init__(
        self, device: str = "cpu", static: bool | None = None, max_graphs: int = 64
    ) -> None:
        super().__init__()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
        self.device = torch.device(device)
        self.capture = self.device.type == "cuda"
        self.static = self.capture if static is None else static
        # the fast forward's membrane loop is a compiled CPU kernel: infer at batch 1, one
        # thread, idle machine, p50 497 against 2,974 us (cartpole-dsqn), 413 against 2,027
        # us (cartpole); on a GPU the captured graph removes the tick loop's per-op cost,
        # and the fast forward has not been captured on one
        self.simulate = simulate_fast if self.device.type == "cpu" else simulate
        self.max_graphs = max_graphs
        self._static: OrderedDict[tuple[str, int, int], _StaticForward] = OrderedDict()
        # one replay at a time: static buffers are shared by the calls of their bucket
        self._replay_lock = threading.Lock()

    def _prepare(self, artifact: ModelArtifact) -> tuple[ModelArtifact, list[LayerParams]]:
        params = float_params(artifact)  # raises if the artifact has no float masters
        moved = [
            LayerParams(
                **{
                    k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                    for k, v in vars(p).items()
                }
            )
            for p in params
        ]
        return artifact, moved

    def _forward(
        self, art: ModelArtifact, params: list[LayerParams]
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        def forward(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.simulate(x, params, art.ticks, art.readout.kind, record=True)
            assert out.record is not None
            return out.q_values, out.record, out.spikes_per_layer

        return forward

    def _run_static(
        self, art: ModelArtifact, params: list[LayerParams], raster: torch.Tensor
    ) -> list[np.ndarray]:
        batch = _bucket(raster.shape[0])
        # keyed by the prepared params too: a reloaded model gets fresh graphs
        key = (art.name, id(params), batch)
        with self._replay_lock, self._on_device():
            fwd = self._static.get(key)
            if fwd is None:
                x = torch.zeros((batch, *raster.shape[1:]), dtype=torch.float32, device=self.device)
                fwd = _StaticForward(self._forward(art, params), x, self.capture)
                self._static[key] = fwd
                while len(self._static) > self.max_graphs:
                    self._static.popitem(last=False)
            else:
                self._static.move_to_end(key)
            return fwd(raster)

    def _on_device(self) -> contextlib.AbstractContextManager:
        """Capture and replay on this backend's GPU, whichever is current."""
        return torch.cuda.device(self.device) if self.capture else contextlib.nullcontext()

    def load(self, artifact: ModelArtifact) -> None:
        super().load(artifact)
        self._drop_static(artifact.name)

    def unload(self, name: str) -> None:
        super().unload(name)
        self._drop_static(name)

    def _drop_static(self, name: str) -> None:
        with self._replay_lock:
            for key in [k for k in self._static if k[0] == name]:
                del self._static[key]

    def static_forwards(self) -> list[tuple[str, int]]:
        """(model, batch bucket) of the static forwards (graphs) held now."""
        with self._replay_lock:
            return [(k[0], k[2]) for k in self._static]

    def _infer(
        self, prepared: tuple, observations: np.ndarray, seeds: np.ndarray | None, trace: bool
    ) -> InferenceResult:
        art, params = prepared
        obs = check_observations(art, observations)
        seeds = request_seeds(art, obs.shape[0], seeds)
        raster = encode(art, obs, seeds=seeds)  # on the host, outside any graph
        spikes_host = torch.from_numpy(raster.astype(np.float32))
        if self.static and not trace:
            q, rec, per_layer = self._run_static(art, params, spikes_host)
        else:  # eager; a traced request also runs the shorter runs below
            # while a graph is captured no other thread may launch work on the GPU
            gpu_turn = self._replay_lock if self.capture else contextlib.nullcontext()
            with torch.no_grad(), gpu_turn, self._on_device():
                spikes_in = spikes_host.to(self.device)
                q_t, rec_t, per_layer_t = self._forward(art, params)(spikes_in)
                if trace:
                    # Q after tick t is, by definition, the answer of a run of t + 1
                    # ticks: the same forward, stopped there (ticks - 1 shorter runs;
                    # a traced request is no hot path)
                    per_tick = [
                        self.simulate(spikes_in, params, t + 1, art.readout.kind).q_values
                        for t in range(art.ticks - 1)
                    ]
                    q_ticks = torch.stack([*per_tick, q_t], dim=1).cpu().numpy()
                q, rec, per_layer = (t.cpu().numpy() for t in (q_t, rec_t, per_layer_t))
        q = q.astype(np.float32)
        traces = build_traces(art, raster, rec, q_ticks) if trace else None
        return InferenceResult(
            q_values=q,
            actions=greedy(q),
            ticks=art.ticks,
            spikes_per_layer=per_layer.astype(np.int64),
            synaptic_events=synaptic_events(rec, raster, [lay.size for lay in art.layers]),
            backend=self.name,
            seeds=seeds,
            traces=traces,
        )

    def close(self) -> None:
        with self._replay_lock:
            self._static.clear()
        super().close()

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "device": str(self.device),
            "static": self.static,
            "cuda_graphs": self.static and self.capture,
        }
