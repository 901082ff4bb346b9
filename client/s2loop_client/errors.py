"""Every failure of a request, as one :class:`ActError` subclass per HTTP status,
mapped from the server's own error schema (``contract.ERROR_KINDS``)."""

from __future__ import annotations

from typing import Any

from s2loop_client.contract import ERROR_KINDS


class ActError(Exception):
    """A request got no answer. ``kind``: the server's error kind (``contract.ERROR_KINDS``)
    or, for failures on this side, ``connection`` / ``timeout`` / ``bad_answer``;
    ``status``: the HTTP status (None when the server never answered)."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        *,
        request_id: str | None = None,
        retry_after_ms: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{kind}: {message}" + (f" (HTTP {status})" if status else ""))
        self.kind = kind
        self.message = message
        self.status = status
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms
        self.details = details


class BadRequest(ActError):
    """400: the body is not JSON/msgpack, or the request is malformed."""


class Unauthorized(ActError):
    """401: API keys are on and no valid one was sent."""


class Forbidden(ActError):
    """403."""


class NotFound(ActError):
    """404: unknown model (or route)."""


class PayloadTooLarge(ActError):
    """413: the body is over the server's limit."""


class ValidationFailed(ActError):
    """422: the observation does not fit the model (size, values, types)."""


class Overloaded(ActError):
    """429: nothing on the server can take the request now; see ``retry_after_ms``."""


class ServerError(ActError):
    """500: a server bug."""


class Unavailable(ActError):
    """503: no backend could answer."""


class DeadlineExceeded(ActError):
    """504: no answer within the server's deadline (never a late action)."""


class ConnectionFailed(ActError):
    """The server could not be reached, or the connection broke (kind ``connection``)."""


class Timeout(ActError):
    """No answer within the client's ``timeout_s`` (kind ``timeout``)."""


class BadAnswer(ActError):
    """The server's answer could not be read (kind ``bad_answer``)."""


BY_STATUS: dict[int, type[ActError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: BadRequest,
    413: PayloadTooLarge,
    415: BadRequest,
    422: ValidationFailed,
    429: Overloaded,
    500: ServerError,
    503: Unavailable,
    504: DeadlineExceeded,
}


def from_error_body(body: Any, status: int | None = None) -> ActError:
    """The :class:`ActError` for an error answer ``{"error": {"kind", "message", ...}}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or "kind" not in err:
        return BadAnswer("bad_answer", f"not an s2loop error answer: {str(body)[:200]}", status)
    kind = str(err["kind"])
    status = status or err.get("status") or ERROR_KINDS.get(kind, (None, ""))[0]
    cls = BY_STATUS.get(status or 0, ServerError if (status or 0) >= 500 else ActError)
    return cls(
        kind,
        str(err.get("message", "")),
        status,
        request_id=err.get("request_id"),
        retry_after_ms=err.get("retry_after_ms"),
        details=err.get("details"),
    )
