"""Client of the s2loop control server: ``PolicyClient`` / ``AsyncPolicyClient`` over
HTTP, WebSocket or TCP, JSON or msgpack, one wire contract (``s2loop_client.contract``)."""

from s2loop_client.client import (
    Answer,
    AsyncPolicyClient,
    Episode,
    PolicyClient,
    Timing,
    run_episode,
)
from s2loop_client.errors import (
    ActError,
    BadAnswer,
    BadRequest,
    ConnectionFailed,
    DeadlineExceeded,
    Forbidden,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    ValidationFailed,
)
from s2loop_client.transports import (
    HTTPTransport,
    MockTransport,
    TCPTransport,
    Transport,
    WSTransport,
)

__all__ = [
    "ActError",
    "Answer",
    "AsyncPolicyClient",
    "BadAnswer",
    "BadRequest",
    "ConnectionFailed",
    "DeadlineExceeded",
    "Episode",
    "Forbidden",
    "HTTPTransport",
    "MockTransport",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PolicyClient",
    "ServerError",
    "TCPTransport",
    "Timeout",
    "Timing",
    "Transport",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WSTransport",
    "run_episode",
]
