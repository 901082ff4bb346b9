"""Observation -> input spike ticks. The one encoder, shared by the emulator,
the board backend and the torch model (which calls it on the host), so all of
them see the same input spikes bit for bit."""

from __future__ import annotations

import numpy as np

from hw.artifact import Encoder, ModelArtifact


def normalize(artifact: ModelArtifact, observations: np.ndarray) -> np.ndarray:
    """``clip((obs - obs_offset) / obs_scale, -1, 1)`` in float32, shape [B, obs]."""
    obs = np.asarray(observations, dtype=np.float32)
    z = (obs - artifact.obs_offset) / artifact.obs_scale
    return np.clip(z, np.float32(-1.0), np.float32(1.0))


def intensities(encoder: Encoder, z: np.ndarray) -> np.ndarray:
    """Per-input-neuron firing probability in [0, 1], float32 [B, obs * channels].

    Neuron order: dimension-major (all channels of dimension 0 first).
    """
    b, d = z.shape
    if encoder.channels == "signed":
        p = np.empty((b, d, 2), dtype=np.float32)
        p[:, :, 0] = np.maximum(z, np.float32(0.0))
        p[:, :, 1] = np.maximum(-z, np.float32(0.0))
    else:
        k = encoder.bins
        centres = np.linspace(-1.0, 1.0, k, dtype=np.float32)
        inv_width = np.float32((k - 1) / 2.0)
        dist = np.abs(z[:, :, None] - centres[None, None, :]) * inv_width
        p = np.maximum(np.float32(1.0) - dist, np.float32(0.0))
    return p.reshape(b, -1)


def spike_raster(
    encoder: Encoder, p: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Input spikes, uint8 [B, input_ticks, n_inputs]; ``raster[b, t, i] == 1`` means
    input neuron ``i`` fires at tick ``t``.

    ``rng`` overrides the encoder's seed for Poisson coding (ignored otherwise).
    """
    t_in = encoder.input_ticks
    if encoder.kind == "poisson":
        gen = rng if rng is not None else np.random.Generator(np.random.PCG64(encoder.seed))
        draws = gen.random((p.shape[0], t_in, p.shape[1]), dtype=np.float32)
        return (draws < p[:, None, :]).astype(np.uint8)
    raster = np.empty((p.shape[0], t_in, p.shape[1]), dtype=np.uint8)
    acc = np.full(p.shape, np.float32(encoder.phase), dtype=np.float32)
    one = np.float32(1.0)
    for t in range(t_in):
        acc += p
        fired = acc >= one
        raster[:, t, :] = fired
        acc -= fired.astype(np.float32)
    return raster


def encode(
    artifact: ModelArtifact, observations: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Observations [B, obs] -> input spike raster uint8 [B, input_ticks, n_inputs]."""
    z = normalize(artifact, observations)
    return spike_raster(artifact.encoder, intensities(artifact.encoder, z), rng)


def spike_times(raster: np.ndarray) -> dict[int, list[int]]:
    """One observation's raster [input_ticks, n_inputs] as the SDK's ``spike_list``
    params: ``{neuron_idx: [tick, ...]}`` (every input neuron present, maybe empty)."""
    return {i: [int(t) for t in np.flatnonzero(raster[:, i])] for i in range(raster.shape[1])}
