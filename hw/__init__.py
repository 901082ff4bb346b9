"""s2loop hardware layer: what executes a model artifact.

numpy and the standard library only (plus numba for the emulator kernel); the
py-spinnaker2 SDK is imported lazily inside the board backend. Nothing here
imports torch, FastAPI or Gymnasium.
"""

from hw.artifact import (
    FORMAT_VERSION,
    ArtifactError,
    Encoder,
    Layer,
    ModelArtifact,
    Readout,
    load_artifact,
    resolve_model_path,
    save_artifact,
)

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "Encoder",
    "Layer",
    "ModelArtifact",
    "Readout",
    "load_artifact",
    "resolve_model_path",
    "save_artifact",
]
