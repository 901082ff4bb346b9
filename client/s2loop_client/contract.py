"""The wire contract of s2loop, declared once: the request, answer and error shapes of
the inference routes, their limits, the error kinds and their statuses, the paths and
the TCP framing. The server builds its validation and its OpenAPI schema from these
declarations (``service/schemas.py``); the client reads answers with them.

Field constraints are plain markers inside ``Annotated`` (no pydantic here, so the
client installs with nothing but httpx, websockets, numpy and msgpack):
:class:`Doc` (what the field is), :class:`Bounds` (numeric range) and :class:`Size`
(length of a string or list), :class:`Pattern` (regular expression).

Codecs: JSON, or msgpack (``Content-Type: application/msgpack`` over HTTP, binary
frames over WebSocket, always over TCP) with the same maps; in msgpack an observation
may also be a numpy array (see :mod:`s2loop_client.codec`).

TCP framing (``S2LOOP_TCP_BIND``): each frame is a 4-byte little-endian unsigned
length, then that many bytes of msgpack. A request map with ``observation`` is an
``/v1/act`` request, one with ``observations`` a batch; each gets one answer frame (an
answer map or an error map), in order. With API keys on, the first frame is
``{"hello": {"api_key": KEY}}``, answered ``{"hello": "ok"}`` or with a 401 error
frame and a close. A frame over ``MAX_FRAME_BYTES`` or a broken length closes the
connection. With a server certificate the endpoint speaks TLS only (``tcps://``). The
framing is written once, in :mod:`s2loop_client.framing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar


@dataclass(frozen=True)
class Doc:
    text: str


@dataclass(frozen=True)
class Bounds:
    ge: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class Size:
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class Pattern:
    regex: str


# --------------------------------------------------------------------- paths, media, framing

ACT_PATH = "/v1/act"
BATCH_PATH = "/v1/act/batch"
WS_PATH = "/v1/act/ws"
MODELS_PATH = "/v1/models"
JSON = "application/json"
MSGPACK = "application/msgpack"
CODECS = ("json", "msgpack")
FRAME_HEADER_BYTES = 4  # little-endian uint32 length of the msgpack body that follows
MAX_FRAME_BYTES = 1 << 20
SEED_LIMIT = 2**53  # seeds in [0, 2**53): exact in every JSON client
#: a traced request covers at most this many tick x neuron cells, over all its rows:
#: rows x ticks x (inputs + neurons); past it, 422 (a full trace is at most ~1 MB)
MAX_TRACE_CELLS = 1 << 17

# --------------------------------------------------------------------- field types

#: what a served model may be named (models/NAME.s2l, /v1/models/NAME/...): no leading
#: '.', so a name is never a hidden file or a path step
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$"
ModelName = Annotated[
    str,
    Size(1, 128),
    Pattern(MODEL_NAME_PATTERN),
    Doc("a served model (see GET /v1/models)"),
]
Tag = Annotated[
    str | int | None, Doc("optional client tag, echoed back (handy to match WebSocket answers)")
]
Seed = Annotated[int, Bounds(ge=0, lt=SEED_LIMIT), Doc("Poisson encoder seed")]
EpisodeId = Annotated[str, Size(1, 128), Doc("the client's episode, for the flight recorder")]
Step = Annotated[int, Bounds(ge=0, lt=2**53), Doc("step within the episode")]
TraceFlag = Annotated[
    bool,
    Doc(
        "return the spike trace of the inference (input and layer spikes per tick, Q after "
        "each tick); capped at MAX_TRACE_CELLS tick x neuron cells per request"
    ),
]


# --------------------------------------------------------------------- requests


@dataclass
class ActRequest:
    """One observation for one model."""

    EXAMPLES: ClassVar[list[dict[str, Any]]] = [
        {"model": "cartpole", "observation": [0.01, -0.2, 0.03, 0.25]}
    ]

    model: ModelName
    observation: Annotated[
        list[float],
        Size(1, 4096),
        Doc("the environment's observation, finite numbers, as many as the model expects"),
    ]
    id: Tag = None
    seed: Annotated[
        Seed | None,
        Doc(
            "Poisson-coded models: seed of this request's input spikes (reproducible draws); "
            "without it the server draws fresh spikes and reports the seed it used. "
            "Deterministic models ignore it."
        ),
    ] = None
    episode_id: Annotated[
        EpisodeId | None, Doc("optional: the client's episode (recorded, echoed back)")
    ] = None
    step: Annotated[Step | None, Doc("optional: the step in that episode (recorded, echoed)")] = (
        None
    )
    trace: TraceFlag = False


@dataclass
class BatchRequest:
    """Many observations for one model, run in one backend call."""

    EXAMPLES: ClassVar[list[dict[str, Any]]] = [
        {"model": "cartpole", "observations": [[0.01, -0.2, 0.03, 0.25], [0.0, 0.0, 0.0, 0.0]]}
    ]

    model: ModelName
    observations: Annotated[list[list[float]], Size(1, None), Doc("one observation per row")]
    id: Tag = None
    seeds: Annotated[
        list[Seed] | None,
        Doc(
            "Poisson-coded models: one seed per observation (row i with seed s draws the "
            "spikes /v1/act would with seed s); without them fresh draws, reported back"
        ),
    ] = None
    episode_ids: Annotated[
        list[EpisodeId] | None, Doc("optional: each row's episode (recorded, echoed back)")
    ] = None
    steps: Annotated[list[Step] | None, Doc("optional: each row's step (recorded, echoed)")] = None
    trace: TraceFlag = False


# --------------------------------------------------------------------- answers

SpikePairs = Annotated[
    list[list[int]], Doc("spikes as [tick, neuron] pairs, ordered by tick, then neuron")
]


@dataclass
class LayerSpikes:
    """One LIF layer's spikes in a trace."""

    name: Annotated[str, Doc("the layer's name in the model")]
    size: Annotated[int, Doc("its neurons")]
    spikes: SpikePairs


@dataclass
class Trace:
    """What one inference did, tick by tick (``hw.trace``)."""

    ticks: Annotated[int, Doc("chip ticks run, T")]
    input: Annotated[
        list[list[int]],
        Doc(
            "input spikes as [tick, neuron] pairs: tick is when the input neuron fires "
            "(the first layer integrates it at tick + 1)"
        ),
    ]
    layers: Annotated[list[LayerSpikes], Doc("every LIF layer, first to output")]
    output_q: Annotated[
        list[list[float]],
        Doc(
            "T rows: row t is what q_values would be had the run stopped after tick t "
            "(the last row equals q_values)"
        ),
    ]


@dataclass
class Timing:
    server_us: Annotated[float, Doc("server time from the request's arrival to its answer, us")]
    compute_us: Annotated[float, Doc("time of the backend call, us")]
    ticks: Annotated[int, Doc("chip ticks run per inference")]
    chip_time_s: Annotated[
        float | None,
        Doc(
            "estimated chip run time (hw.mapping; for a batch: runs x ticks x tick, as many "
            "observations per run as copies fit on one chip)"
        ),
    ] = None
    energy_j: Annotated[
        float | None, Doc("estimated chip energy (hw.mapping; for a batch: all observations)")
    ] = None
    batch_size: int | None = None


@dataclass
class ActAnswer:
    EXAMPLES: ClassVar[list[dict[str, Any]]] = [
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

    model: str
    action: int
    q_values: list[float]
    backend: Annotated[str, Doc("the backend that answered")]
    fallback: Annotated[bool, Doc("true when the fallback backend answered")]
    timing: Timing
    id: Annotated[str | int | None, Doc("the request's id, when it had one")] = None
    seed: Annotated[int | None, Doc("Poisson-coded models: the seed of the input spikes")] = None
    episode_id: str | None = None
    step: int | None = None
    trace: Annotated[Trace | None, Doc("the spike trace, when the request asked for it")] = None


@dataclass
class BatchAnswer:
    model: str
    actions: list[int]
    q_values: list[list[float]]
    backend: str
    fallback: bool
    timing: Timing
    id: str | int | None = None
    seeds: Annotated[
        list[int] | None, Doc("Poisson-coded models: the seed of each row's input spikes")
    ] = None
    episode_ids: list[str] | None = None
    steps: list[int] | None = None
    traces: Annotated[
        list[Trace] | None, Doc("one spike trace per row, when the request asked for them")
    ] = None


@dataclass
class ErrorDetail:
    kind: Annotated[str, Doc("machine-readable kind, one of ERROR_KINDS")]
    message: Annotated[str, Doc("what was wrong, for people")]
    details: list[dict[str, Any]] | None = None
    request_id: str | None = None
    retry_after_ms: Annotated[
        int | None, Doc("overload (429): when to try again, from the measured service time")
    ] = None
    status: Annotated[int | None, Doc("WebSocket and TCP answers: the HTTP status")] = None


@dataclass
class ErrorAnswer:
    error: ErrorDetail


#: every error kind the server answers with, its HTTP status and what it means
ERROR_KINDS: dict[str, tuple[int, str]] = {
    "malformed_json": (400, "the body is not valid JSON (or msgpack)"),
    "bad_request": (400, "the request itself is malformed (headers, framing)"),
    "unauthorized": (401, "a valid API key or token is required"),
    "forbidden": (403, "not allowed"),
    "reload_disabled": (403, "reload is off: no reload token is configured"),
    "not_found": (404, "no such route"),
    "unknown_model": (404, "no model of that name is served"),
    "method_not_allowed": (405, "the route does not take that method"),
    "body_too_large": (413, "the body is over the server's limit"),
    "unsupported_media_type": (415, "neither JSON nor msgpack"),
    "validation_error": (422, "the body does not fit the model"),
    "bad_artifact": (422, "the model file cannot be loaded; the old model serves on"),
    "queue_full": (429, "nothing can take the request now; retry after retry_after_ms"),
    "internal": (500, "a server bug"),
    "backend_error": (503, "no backend could answer"),
    "too_many_connections": (503, "the TCP endpoint holds its most connections; retry later"),
    "deadline": (504, "no answer within the deadline; never a late action"),
    "http_error": (400, "another HTTP error of the framework"),
}
