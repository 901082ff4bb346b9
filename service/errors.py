"""Every answer but a 200: :class:`ApiError`, and the one place its body and headers
are made, whichever door (HTTP route, fast path, WebSocket) the request came in by."""

from __future__ import annotations

import math
from typing import Any

#: HTTP status -> error kind, for errors raised by the framework (routing, path params)
STATUS_KIND = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


class ApiError(Exception):
    """An answer other than 200: status, a machine-readable kind and a message for people.

    ``retry_after_s``: when the client may try again (overload); it becomes the
    ``Retry-After`` header (whole seconds, as HTTP wants) and ``retry_after_ms`` in the
    body (what a WebSocket client reads)."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))

    def body(self, request_id: str | None = None, *, with_status: bool = False) -> dict:
        err: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.details:
            err["details"] = self.details
        if request_id:
            err["request_id"] = request_id
        if self.retry_after_s is not None:
            err["retry_after_ms"] = round(self.retry_after_s * 1e3)
        if with_status:  # a WebSocket answer has no status line of its own
            err["status"] = self.status
        return {"error": err}


INTERNAL = ApiError(500, "internal", "internal server error")
