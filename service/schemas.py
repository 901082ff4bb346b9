"""The API's bodies as pydantic models. The inference routes' requests, answers and
errors are built from the wire contract (``s2loop_client.contract``, declared once,
imported by the client too); the control-plane answers (models, readiness, reload)
are the server's own.

Requests are parsed in strict mode: numbers must be numbers (no strings, no
booleans), ``NaN`` and ``Infinity`` are rejected, unknown fields are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model

from s2loop_client import contract as wire

_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


def _field(marks: list[Any]) -> Any:
    """The contract's markers as one pydantic ``Field``."""
    kw: dict[str, Any] = {}
    for m in marks:
        if isinstance(m, wire.Doc):
            kw["description"] = m.text
        elif isinstance(m, wire.Bounds):
            kw.update({k: v for k, v in (("ge", m.ge), ("lt", m.lt)) if v is not None})
        elif isinstance(m, wire.Size):
            kw.update({k: v for k, v in (("min_length", m.min), ("max_length", m.max)) if v})
        elif isinstance(m, wire.Pattern):
            kw["pattern"] = m.regex
    return Field(**kw)


def _convert(hint: Any) -> Any:
    """A contract type hint in pydantic's terms: markers become Fields, nested contract
    dataclasses become models; unions and lists are walked."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *marks = get_args(hint)
        return Annotated[_convert(base), _field(marks)]
    if dataclasses.is_dataclass(hint):
        return model_of(hint)
    if origin in (Union, types.UnionType):
        return functools.reduce(lambda a, b: a | b, [_convert(a) for a in get_args(hint)])
    if origin is list:
        return list[_convert(get_args(hint)[0])]  # type: ignore[misc]
    return hint


@functools.cache
def model_of(cls: type, strict: bool = False) -> type[BaseModel]:
    """The pydantic model of a contract dataclass (``strict``: a request's parsing)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = ... if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (_convert(hints[f.name]), default)
    examples = getattr(cls, "EXAMPLES", None)
    config = ConfigDict(**_STRICT) if strict else ConfigDict()
    if examples:
        config["json_schema_extra"] = {"examples": examples}
    return create_model(cls.__name__, __config__=config, __doc__=cls.__doc__, **fields)


ActRequest = model_of(wire.ActRequest, strict=True)
BatchRequest = model_of(wire.BatchRequest, strict=True)
Timing = model_of(wire.Timing)
ActResponse = model_of(wire.ActAnswer)
BatchResponse = model_of(wire.BatchAnswer)
ErrorBody = model_of(wire.ErrorAnswer)


# --------------------------------------------------------------------- control plane


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
    recipe: str | None = Field(None, description="'dsqn' or 'distill': the recipe that made it")
    encoder: dict[str, Any] = Field(default_factory=dict, description="input encoder")
    layers: list[dict[str, Any]] = Field(
        default_factory=list, description="per layer: neuron (LIF/IF), alpha_decay, threshold"
    )
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
