"""Request and response bodies of the public API.

Requests are parsed straight from the raw body with pydantic's JSON parser in
strict mode: numbers must be JSON numbers (no strings, no booleans), ``NaN`` and
``Infinity`` literals are rejected, unknown fields are ignored. The response
models document the answers (the hot routes serialize with orjson directly).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

ModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="a served model (see GET /v1/models)",
        examples=["cartpole"],
    ),
]

Seed = Annotated[int, Field(ge=0, lt=2**53, description="Poisson encoder seed")]

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class ActRequest(BaseModel):
    """One observation for one model."""

    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={
            "examples": [{"model": "cartpole", "observation": [0.01, -0.2, 0.03, 0.25]}]
        },
    )

    model: ModelName
    observation: list[float] = Field(
        ...,
        description="the environment's observation, finite numbers, as many as the model expects",
        min_length=1,
        max_length=4096,
    )
    id: str | int | None = Field(
        None, description="optional client tag, echoed back (handy to match WebSocket answers)"
    )
    seed: Seed | None = Field(
        None,
        description="Poisson-coded models: seed of this request's input spikes (reproducible "
        "draws); without it the server draws fresh spikes and reports the seed it used. "
        "Deterministic models ignore it.",
    )


class BatchRequest(BaseModel):
    """Many observations for one model, run in one backend call."""

    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={
            "examples": [
                {
                    "model": "cartpole",
                    "observations": [[0.01, -0.2, 0.03, 0.25], [0.0, 0.0, 0.0, 0.0]],
                }
            ]
        },
    )

    model: ModelName
    observations: list[list[float]] = Field(..., min_length=1)
    id: str | int | None = None
    seeds: list[Seed] | None = Field(
        None,
        description="Poisson-coded models: one seed per observation (row i with seed s draws "
        "the spikes /v1/act would with seed s); without them fresh draws, reported back",
    )


class Timing(BaseModel):
    server_us: float = Field(
        ..., description="time the server spent on the request, body read to answer, us"
    )
    compute_us: float = Field(..., description="time of the backend call, us")
    ticks: int = Field(..., description="chip ticks run per inference")
    chip_time_s: float | None = Field(
        None,
        description="estimated chip run time (hw.mapping; for a batch: runs x ticks x tick, "
        "as many observations per run as copies fit on one chip)",
    )
    energy_j: float | None = Field(
        None, description="estimated chip energy (hw.mapping; for a batch: all observations)"
    )
    batch_size: int | None = None


class ActResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "cartpole",
                    "action": 1,
                    "q_values": [12.5, 13.25],
                    "backend": "emulator",
                    "fallback": False,
                    "timing": {
                        "server_us": 74.1,
                        "compute_us": 52.3,
                        "ticks": 16,
                        "chip_time_s": 0.016,
                        "energy_j": 0.0038,
                    },
                }
            ]
        }
    )

    model: str
    action: int
    q_values: list[float]
    backend: str = Field(..., description="the backend that answered")
    fallback: bool = Field(..., description="true when the fallback backend answered")
    timing: Timing
    id: str | int | None = Field(None, description="the request's id, when it had one")
    seed: int | None = Field(
        None, description="Poisson-coded models: the seed of the input spikes used"
    )


class BatchResponse(BaseModel):
    model: str
    actions: list[int]
    q_values: list[list[float]]
    backend: str
    fallback: bool
    timing: Timing
    id: str | int | None = None
    seeds: list[int] | None = Field(
        None, description="Poisson-coded models: the seed of each row's input spikes"
    )


class ErrorDetail(BaseModel):
    kind: str = Field(..., examples=["validation_error"])
    message: str = Field(..., examples=["observation has 3 values, model 'cartpole' expects 4"])
    details: list[dict[str, Any]] | None = None
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    env_id: str
    observation_size: int
    action_count: int
    action_names: list[str]
    ticks: int
    weight_bits: int
    layer_sizes: list[int]
    sha256: str
    mapping: dict[str, Any] | None = Field(
        None, description="hw.mapping report: PEs, copies per chip, chip time, energy"
    )
    mapping_error: str | None = None
    model_card: dict[str, Any] = Field(
        default_factory=dict, description="figures recorded at export (provenance.model_card)"
    )


class ModelList(BaseModel):
    models: list[ModelInfo]


class ReloadResponse(BaseModel):
    model: str
    reloaded: bool
    sha256: str
    previous_sha256: str | None
    path: str


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(..., description="ready | degraded | not_ready")
    reasons: list[str]
