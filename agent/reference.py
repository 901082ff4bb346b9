"""The float reference backend: an artifact's unquantized master network, run in torch
with the same tick semantics as the chip (``agent.snn.simulate``).

Registered for the service as ``agent.reference:ReferenceBackend`` (name
``reference``); ``hw`` never imports it. Comparing its actions with the emulator's
gives the float vs 8-bit decision agreement. With ``device="cuda"`` it runs on a GPU
(the paper's comparison axis); encoding stays on the host, as for the chip.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from agent.snn import LayerParams, float_params, greedy, simulate
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


class ReferenceBackend(Backend):
    """Float (unquantized) spiking network from ``float_weight`` / ``float_i_offset`` /
    ``float_threshold``; same encoder, ticks, resets and readout as the emulator."""

    name = "reference"
    thread_safe = True  # torch releases the GIL; no state changes during a call
    gives_traces = True

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU here")
        self.device = torch.device(device)

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

    def infer(
        self,
        model: str,
        observations: np.ndarray,
        seeds: np.ndarray | None = None,
        *,
        trace: bool = False,
    ) -> InferenceResult:
        art, params = self._get(model)
        start = time.perf_counter()
        obs = check_observations(art, observations)
        seeds = request_seeds(art, obs.shape[0], seeds)
        raster = encode(art, obs, seeds=seeds)
        spikes_in = torch.from_numpy(raster.astype(np.float32)).to(self.device)
        with torch.no_grad():
            out = simulate(spikes_in, params, art.ticks, art.readout.kind, record=True)
            traces = None
            if trace:
                # Q after tick t is, by definition, the answer of a run of t + 1 ticks:
                # the same simulate, stopped there (ticks - 1 shorter runs; the float
                # reference is no hot path)
                per_tick = [
                    simulate(spikes_in, params, t + 1, art.readout.kind).q_values
                    for t in range(art.ticks - 1)
                ]
                q_ticks = torch.stack([*per_tick, out.q_values], dim=1).cpu().numpy()
        q = out.q_values.cpu().numpy().astype(np.float32)  # waits for a GPU to finish
        rec = out.record.cpu().numpy() if out.record is not None else None
        assert rec is not None
        sizes = [lay.size for lay in art.layers]
        if trace:
            traces = build_traces(art, raster, rec, q_ticks)
        elapsed = (time.perf_counter() - start) * 1e6
        return InferenceResult(
            q_values=q,
            actions=greedy(q),
            ticks=art.ticks,
            spikes_per_layer=out.spikes_per_layer.cpu().numpy().astype(np.int64),
            synaptic_events=synaptic_events(rec, raster, sizes),
            backend=self.name,
            compute_us=elapsed,
            seeds=seeds,
            traces=traces,
        )

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "device": str(self.device)}
