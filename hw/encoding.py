"""Observation -> input spike ticks. The one encoder, shared by the emulator,
the board backend and the torch model (which calls it on the host), so all of
them see the same input spikes bit for bit.

Poisson (rate) coding draws fresh spikes on every call: the caller passes either
one ``numpy.random.Generator`` for the whole batch (training) or one integer
seed per observation (serving: row ``b`` draws from ``PCG64(seeds[b])``, so an
observation sent alone with seed ``s`` gets the same spikes as in a batch row
with seed ``s``). :func:`request_seeds` picks fresh seeds where none were given.
"""

from __future__ import annotations

import numpy as np

from hw.artifact import Encoder, ModelArtifact

# Seeds lie in [0, 2**53): any JSON client (a JavaScript number included) and any
# JSON Schema validator reads them exactly.
SEED_LIMIT = 2**53


def normalize(artifact: ModelArtifact, observations: np.ndarray) -> np.ndarray:
    """``clip((obs - obs_offset) / obs_scale, -1, 1)`` in float32, shape [B, obs]."""
    obs = np.asarray(observations, dtype=np.float32)
    z = (obs - artifact.obs_offset) / artifact.obs_scale
    return np.clip(z, np.float32(-1.0), np.float32(1.0))


def intensities(encoder: Encoder, z: np.ndarray) -> np.ndarray:
    """Per-input-neuron firing probability in [0, 1], float32 [B, obs * channels].

    Neuron order: dimension-major (all channels of dimension 0 first), a channel's
    ``copies`` next to each other.
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
    if encoder.copies > 1:  # each channel's copies side by side
        p = np.repeat(p, encoder.copies, axis=2)
    return p.reshape(b, -1)


def request_seeds(
    artifact: ModelArtifact, n: int, seeds: np.ndarray | list[int] | None = None
) -> np.ndarray | None:
    """The per-observation seeds a run of ``n`` observations uses: ``None`` for a
    deterministic encoder (seeds are ignored), ``seeds`` checked, or fresh ones
    from the operating system's entropy. int64 [n]."""
    if artifact.encoder.kind != "poisson":
        return None
    if seeds is None:
        return np.random.default_rng().integers(0, SEED_LIMIT, n, dtype=np.int64)
    out = np.asarray(seeds)
    if out.shape != (n,) or out.dtype.kind not in "iu":
        raise ValueError(f"seeds must be {n} integers, one per observation")
    if n and (int(out.min()) < 0 or int(out.max()) >= SEED_LIMIT):
        raise ValueError("seeds must lie in [0, 2**53)")
    return out.astype(np.int64)


#: the last seeded Poisson raster and what made it (rates, seeds): an evaluation runs the
#: same observations and seeds through two forms of a model (the emulator and its float
#: check), and one PCG64 a row costs about 10 us (18 % of `s2loop finetune`, by py-spy)
_last_seeded: tuple[tuple, np.ndarray] | None = None


def spike_raster(
    encoder: Encoder,
    p: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Input spikes, uint8 [B, input_ticks, n_inputs]; ``raster[b, t, i] == 1`` means
    input neuron ``i`` fires at tick ``t``.

    Poisson coding needs a source of fresh draws: ``seeds`` (one per row) or
    ``rng`` (one generator for the batch); the deterministic encoder ignores both.
    """
    global _last_seeded
    t_in = encoder.input_ticks
    if encoder.kind == "poisson":
        shape = (p.shape[0], t_in, p.shape[1])
        if seeds is not None:
            seeds = np.asarray(seeds, dtype=np.int64)
            key = (t_in, p.shape, p.dtype.str, p.tobytes(), seeds.tobytes())
            last = _last_seeded
            if last is not None and last[0] == key:
                return last[1].copy()
            draws = np.empty(shape, dtype=np.float32)
            for b, seed in enumerate(seeds):
                gen = np.random.Generator(np.random.PCG64(int(seed)))
                draws[b] = gen.random(shape[1:], dtype=np.float32)
            raster = (draws < p[:, None, :]).astype(np.uint8)
            _last_seeded = (key, raster)
            return raster.copy()
        if rng is not None:
            draws = rng.random(shape, dtype=np.float32)
        else:
            raise ValueError("a Poisson encoder draws fresh spikes: pass rng or seeds")
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
    artifact: ModelArtifact,
    observations: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Observations [B, obs] -> input spike raster uint8 [B, input_ticks, n_inputs]."""
    z = normalize(artifact, observations)
    return spike_raster(artifact.encoder, intensities(artifact.encoder, z), rng=rng, seeds=seeds)


def spike_times(raster: np.ndarray) -> dict[int, list[int]]:
    """One observation's raster [input_ticks, n_inputs] as the SDK's ``spike_list``
    params: ``{neuron_idx: [tick, ...]}`` (every input neuron present, maybe empty)."""
    return {i: [int(t) for t in np.flatnonzero(raster[:, i])] for i in range(raster.shape[1])}
