"""The model artifact, format v1: the only thing that passes from training to serving.

One file per model: a zip holding

- ``manifest.json``: everything but the arrays (names, encoder, per-layer neuron
  parameters, readout, provenance), the format version, the sha256 of
  ``weights.npz`` and a digest of the manifest itself;
- ``weights.npz``: int8 weights and float32 ``i_offset`` per layer, observation
  normalisation, optionally the float master weights; read with
  ``allow_pickle=False``.

Any truncated, corrupted, tampered or wrong-version file raises
:class:`ArtifactError` with a message that names the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from s2loop_client.contract import MODEL_NAME_PATTERN

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
SUFFIX = ".s2l"
MODEL_NAME = re.compile(MODEL_NAME_PATTERN)  # the wire contract's, for files and commands

ResetMode = Literal["reset_by_subtraction", "reset_to_v_reset"]
RESET_MODES = ("reset_by_subtraction", "reset_to_v_reset")
ENCODER_KINDS = ("deterministic", "poisson")
ENCODER_CHANNELS = ("signed", "tent")
READOUT_KINDS = ("membrane", "count_membrane")


class ArtifactError(ValueError):
    """A model artifact could not be read, or its content is inconsistent."""


@dataclass(frozen=True)
class Encoder:
    """How an observation becomes input spike ticks.

    1. ``z = clip((observation - obs_offset) / obs_scale, -1, 1)`` (float32).
    2. ``z`` becomes intensities ``p`` in [0, 1], one per input neuron:
       ``signed``: two neurons per dimension, ``max(z, 0)`` and ``max(-z, 0)``;
       ``tent``: ``bins`` neurons per dimension with centres evenly spaced on
       [-1, 1], each ``max(0, 1 - |z - c| / width)`` (linear interpolation);
       each of them ``copies`` times, side by side (independent Poisson draws of
       the same intensity: the input noise falls as ``1 / sqrt(copies)``).
    3. ``p`` becomes spikes during ticks ``0 .. input_ticks-1``:
       ``deterministic``: an accumulator starts at ``phase``, adds ``p`` each
       tick and spikes (subtracting 1) once it reaches 1, so a neuron fires
       ``floor(input_ticks * p + phase)`` times, evenly spread;
       ``poisson``: a Bernoulli(p) draw per tick, fresh on every run (the
       reference paper's rate coding; see :mod:`hw.encoding` for the seeds).
    """

    kind: str = "deterministic"
    channels: str = "tent"
    bins: int = 5
    input_ticks: int = 8
    phase: float = 0.5
    copies: int = 1

    def channels_per_dim(self) -> int:
        return (2 if self.channels == "signed" else self.bins) * self.copies


@dataclass(frozen=True)
class Layer:
    """One ``lif_no_delay`` population and its incoming projection.

    Per tick: ``v = alpha_decay * v + I_syn + i_offset`` (float32, in that
    order), spike when ``v > threshold``, then ``v -= threshold``
    (``reset_by_subtraction``) or ``v = v_reset`` (``reset_to_v_reset``).
    ``I_syn`` is the sum of the int8 weights of the presynaptic neurons that
    spiked on the previous tick. ``weight_scale`` is the factor the float
    network was multiplied by (``127 / max|w|``): ``threshold`` and
    ``i_offset`` are already scaled by it.
    """

    name: str
    weight: np.ndarray  # int8 [size, fan_in]
    i_offset: np.ndarray  # float32 [size]
    threshold: float
    alpha_decay: float = 1.0
    reset: str = "reset_by_subtraction"
    v_reset: float = 0.0
    v_init: float = 0.0
    weight_scale: float = 1.0
    neuron_model: str = "lif_no_delay"
    weight_bits: int = 8
    # Float master parameters (before quantization, unscaled), for the reference backend.
    float_weight: np.ndarray | None = None
    float_i_offset: np.ndarray | None = None
    float_threshold: float | None = None

    @property
    def size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def neuron(self) -> str:
        """'IF' without leak (alpha_decay 1), else 'LIF'."""
        return "IF" if self.alpha_decay == 1.0 else "LIF"

    @property
    def fan_in(self) -> int:
        return int(self.weight.shape[1])


@dataclass(frozen=True)
class Readout:
    """How the output layer becomes Q-values.

    ``membrane``: ``q = v_final / weight_scale``.
    ``count_membrane``: ``q = (spike_count * threshold + v_final) / weight_scale``
    (spike count plus final membrane, as in arXiv 2009.14456); with
    ``alpha_decay = 1`` and subtractive reset this is the total input charge.
    """

    kind: str = "membrane"


@dataclass(frozen=True)
class ModelArtifact:
    name: str
    env_id: str
    action_names: tuple[str, ...]
    obs_offset: np.ndarray  # float32 [observation_size]
    obs_scale: np.ndarray  # float32 [observation_size]
    encoder: Encoder
    layers: tuple[Layer, ...]
    ticks: int
    readout: Readout = Readout()
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of weights.npz, filled in on load/save

    @property
    def observation_size(self) -> int:
        return int(self.obs_offset.shape[0])

    @property
    def action_count(self) -> int:
        return len(self.action_names)

    @property
    def input_size(self) -> int:
        return self.observation_size * self.encoder.channels_per_dim()

    @property
    def layer_sizes(self) -> list[int]:
        return [layer.size for layer in self.layers]

    def summary(self) -> dict[str, Any]:
        """JSON-able description without arrays (for /v1/models and reports)."""
        return {
            "name": self.name,
            "env_id": self.env_id,
            "observation_size": self.observation_size,
            "action_count": self.action_count,
            "action_names": list(self.action_names),
            "input_size": self.input_size,
            "layer_sizes": self.layer_sizes,
            "ticks": self.ticks,
            "input_ticks": self.encoder.input_ticks,
            "weight_bits": max(layer.weight_bits for layer in self.layers),
            "encoder": asdict(self.encoder),
            "readout": asdict(self.readout),
            "neuron_model": self.layers[0].neuron_model,
            "recipe": self.provenance.get("recipe"),
            "layers": [
                {
                    "name": lay.name,
                    "size": lay.size,
                    "neuron": lay.neuron,
                    "alpha_decay": lay.alpha_decay,
                    "threshold": lay.threshold,
                    "reset": lay.reset,
                    "weight_scale": lay.weight_scale,
                }
                for lay in self.layers
            ],
            "sha256": self.sha256,
            "provenance": self.provenance,
        }

    def validate(self) -> None:
        """Raise :class:`ArtifactError` if the parts do not fit together."""
        enc = self.encoder
        if enc.kind not in ENCODER_KINDS:
            raise ArtifactError(f"encoder.kind {enc.kind!r} is not one of {ENCODER_KINDS}")
        if enc.channels not in ENCODER_CHANNELS:
            raise ArtifactError(
                f"encoder.channels {enc.channels!r} is not one of {ENCODER_CHANNELS}"
            )
        if enc.channels == "tent" and enc.bins < 2:
            raise ArtifactError(f"encoder.bins must be >= 2 for tent channels, got {enc.bins}")
        if enc.input_ticks < 1:
            raise ArtifactError(f"encoder.input_ticks must be >= 1, got {enc.input_ticks}")
        if enc.copies < 1:
            raise ArtifactError(f"encoder.copies must be >= 1, got {enc.copies}")
        if self.readout.kind not in READOUT_KINDS:
            raise ArtifactError(f"readout.kind {self.readout.kind!r} is not one of {READOUT_KINDS}")
        if self.obs_offset.shape != self.obs_scale.shape or self.obs_offset.ndim != 1:
            raise ArtifactError("obs_offset and obs_scale must be 1-D arrays of the same length")
        if not np.all(np.isfinite(self.obs_scale)) or np.any(self.obs_scale <= 0):
            raise ArtifactError("obs_scale must be finite and > 0")
        if not np.all(np.isfinite(self.obs_offset)):
            raise ArtifactError("obs_offset must be finite")
        if not self.layers:
            raise ArtifactError("an artifact needs at least one layer")
        if self.ticks < enc.input_ticks:
            raise ArtifactError(f"ticks ({self.ticks}) < encoder.input_ticks ({enc.input_ticks})")
        fan_in = self.input_size
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({layer.name})"
            w = layer.weight
            if w.dtype != np.int8 or w.ndim != 2:
                raise ArtifactError(f"{where}: weight must be a 2-D int8 array, got {w.dtype}")
            if w.shape[1] != fan_in:
                raise ArtifactError(f"{where}: weight has fan-in {w.shape[1]}, expected {fan_in}")
            if int(np.min(w, initial=0)) < -127:
                raise ArtifactError(f"{where}: weights must lie in [-127, 127]")
            if layer.i_offset.shape != (w.shape[0],) or layer.i_offset.dtype != np.float32:
                raise ArtifactError(f"{where}: i_offset must be float32 of shape ({w.shape[0]},)")
            if layer.reset not in RESET_MODES:
                raise ArtifactError(f"{where}: reset {layer.reset!r} is not one of {RESET_MODES}")
            if layer.neuron_model != "lif_no_delay":
                raise ArtifactError(f"{where}: neuron_model {layer.neuron_model!r} unsupported")
            for pname in ("threshold", "alpha_decay", "v_reset", "v_init", "weight_scale"):
                if not np.isfinite(getattr(layer, pname)):
                    raise ArtifactError(f"{where}: {pname} must be finite")
            if layer.weight_scale <= 0:
                raise ArtifactError(f"{where}: weight_scale must be > 0")
            if not np.all(np.isfinite(layer.i_offset)):
                raise ArtifactError(f"{where}: i_offset must be finite")
            fan_in = w.shape[0]
        if fan_in != self.action_count:
            raise ArtifactError(
                f"output layer has {fan_in} neurons but there are {self.action_count} actions"
            )


# --------------------------------------------------------------------------- save


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(_canonical(body)).hexdigest()


_LAYER_SCALARS = (
    "name",
    "threshold",
    "alpha_decay",
    "reset",
    "v_reset",
    "v_init",
    "weight_scale",
    "neuron_model",
    "weight_bits",
    "float_threshold",
)


def to_bytes(artifact: ModelArtifact) -> bytes:
    """Serialize an artifact (validated first) to the bytes of a v1 file."""
    artifact.validate()
    arrays: dict[str, np.ndarray] = {
        "obs_offset": np.asarray(artifact.obs_offset, dtype=np.float32),
        "obs_scale": np.asarray(artifact.obs_scale, dtype=np.float32),
    }
    layers_meta = []
    for i, layer in enumerate(artifact.layers):
        arrays[f"layer{i}.weight"] = layer.weight
        arrays[f"layer{i}.i_offset"] = layer.i_offset
        if layer.float_weight is not None:
            arrays[f"layer{i}.float_weight"] = np.asarray(layer.float_weight, np.float32)
        if layer.float_i_offset is not None:
            arrays[f"layer{i}.float_i_offset"] = np.asarray(layer.float_i_offset, np.float32)
        meta = {k: getattr(layer, k) for k in _LAYER_SCALARS}
        for k in ("threshold", "alpha_decay", "v_reset", "v_init", "weight_scale"):
            meta[k] = float(meta[k])
        if meta["float_threshold"] is not None:
            meta["float_threshold"] = float(meta["float_threshold"])
        meta["size"] = layer.size
        layers_meta.append(meta)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    weights = buf.getvalue()
    manifest: dict[str, Any] = {
        "format": "s2loop-model",
        "format_version": FORMAT_VERSION,
        "name": artifact.name,
        "env_id": artifact.env_id,
        "observation_size": artifact.observation_size,
        "action_names": list(artifact.action_names),
        "encoder": asdict(artifact.encoder),
        "ticks": int(artifact.ticks),
        "layers": layers_meta,
        "readout": asdict(artifact.readout),
        "provenance": artifact.provenance,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        zf.writestr(WEIGHTS, weights)
    return out.getvalue()


def save_artifact(artifact: ModelArtifact, path: str | os.PathLike[str]) -> Path:
    """Write ``artifact`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    data = to_bytes(artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- load


def from_bytes(data: bytes, source: str = "<bytes>") -> ModelArtifact:
    """Parse and check the bytes of a v1 file; any problem is an :class:`ArtifactError`."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArtifactError(
            f"{source}: not a model artifact (not a zip archive, or truncated): {exc}"
        ) from None
    with zf:
        names = set(zf.namelist())
        for required in (MANIFEST, WEIGHTS):
            if required not in names:
                raise ArtifactError(f"{source}: missing {required} in the archive")
        try:
            manifest_raw = zf.read(MANIFEST)
            weights = zf.read(WEIGHTS)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            raise ArtifactError(f"{source}: archive is corrupted or truncated: {exc}") from None
    try:
        manifest = json.loads(manifest_raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{source}: manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "s2loop-model":
        raise ArtifactError(f"{source}: manifest.json is not an s2loop model manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{source}: unsupported format_version {version!r}; this s2loop reads version "
            f"{FORMAT_VERSION}"
        )
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise ArtifactError(
            f"{source}: manifest digest mismatch: manifest.json was modified after export"
        )
    digest = hashlib.sha256(weights).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ArtifactError(
            f"{source}: weights sha256 mismatch (expected {manifest.get('weights_sha256')}, "
            f"got {digest}): weights.npz was modified or corrupted"
        )
    try:
        with np.load(io.BytesIO(weights), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{source}: weights.npz cannot be read: {exc}") from None
    try:
        layers = []
        for i, meta in enumerate(manifest["layers"]):
            layers.append(
                Layer(
                    name=str(meta["name"]),
                    weight=arrays[f"layer{i}.weight"],
                    i_offset=arrays[f"layer{i}.i_offset"],
                    threshold=float(meta["threshold"]),
                    alpha_decay=float(meta["alpha_decay"]),
                    reset=str(meta["reset"]),
                    v_reset=float(meta["v_reset"]),
                    v_init=float(meta["v_init"]),
                    weight_scale=float(meta["weight_scale"]),
                    neuron_model=str(meta["neuron_model"]),
                    weight_bits=int(meta["weight_bits"]),
                    float_weight=arrays.get(f"layer{i}.float_weight"),
                    float_i_offset=arrays.get(f"layer{i}.float_i_offset"),
                    float_threshold=(
                        None
                        if meta.get("float_threshold") is None
                        else float(meta["float_threshold"])
                    ),
                )
            )
        artifact = ModelArtifact(
            name=str(manifest["name"]),
            env_id=str(manifest["env_id"]),
            action_names=tuple(str(a) for a in manifest["action_names"]),
            obs_offset=arrays["obs_offset"],
            obs_scale=arrays["obs_scale"],
            encoder=encoder_from_dict(manifest["encoder"]),
            layers=tuple(layers),
            ticks=int(manifest["ticks"]),
            readout=Readout(**manifest["readout"]),
            provenance=dict(manifest.get("provenance") or {}),
            sha256=digest,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{source}: manifest is missing or has a bad field: {exc!r}") from None
    if artifact.observation_size != manifest.get("observation_size"):
        raise ArtifactError(f"{source}: observation_size disagrees with obs_offset")
    try:
        artifact.validate()
    except ArtifactError as exc:
        raise ArtifactError(f"{source}: {exc}") from None
    return artifact


def encoder_from_dict(fields: dict[str, Any]) -> Encoder:
    """An :class:`Encoder` from its JSON fields. Files written before per-request seeds
    carry an encoder "seed" that no longer means anything (every run of a Poisson
    model draws fresh spikes): it is dropped."""
    return Encoder(**{k: v for k, v in fields.items() if k != "seed"})


def default_models_dir() -> Path:
    """``$S2LOOP_MODELS`` if set, else the repository's ``models/`` folder."""
    env = os.environ.get("S2LOOP_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def resolve_model_path(
    name_or_path: str | os.PathLike[str], models_dir: Path | None = None
) -> Path:
    """A path as given if it exists, else ``<models_dir>/<name>.s2l``."""
    p = Path(name_or_path)
    if p.exists():
        return p
    d = models_dir or default_models_dir()
    candidate = d / (p.name if p.suffix == SUFFIX else p.name + SUFFIX)
    if candidate.exists():
        return candidate
    raise ArtifactError(f"no model artifact at {p} or {candidate}")


def load_artifact(
    name_or_path: str | os.PathLike[str], models_dir: Path | None = None
) -> ModelArtifact:
    """Load a model by path or by name (``cartpole`` -> ``models/cartpole.s2l``)."""
    path = resolve_model_path(name_or_path, models_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc}") from None
    return from_bytes(data, source=str(path))
