"""Ways to ask the service for an action: keep-alive HTTP and WebSocket.

Both transports send the ``POST /v1/act`` body ``{"model", "observation"}`` and
return the service's answer with the client round-trip time (RTT) measured
tightly around the request: from just before the request bytes are written to
just after the answer bytes are read, JSON encoding and decoding left out.

The hot path uses ``http.client`` on one persistent connection (TCP_NODELAY)
rather than ``httpx``: the RTT is the product here, and ``httpx`` adds a few
hundred microseconds of its own per request. Control-plane calls (``/readyz``,
``/v1/models``) are rare and use ``httpx``.

Failures are bounded: a connection that cannot be made, or is lost, is retried
``RetryPolicy.retries`` times with exponential backoff; ``429`` and ``503`` are
retried after ``Retry-After`` (capped); an answer that does not come within
``timeout_s`` (or a ``504`` from the service) is *not* retried: the step's
deadline has passed and the caller counts it. Every failure surfaces as
:class:`ActError` with a ``kind``.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

ACT_PATH = "/v1/act"
WS_PATH = "/v1/act/ws"

# ActError.kind values, in the order the summary lists them
ERROR_KINDS = ("timeout", "unavailable", "overloaded", "rejected", "server_error", "bad_answer")


class ActError(Exception):
    """One step got no action. ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ServerNotReady(RuntimeError):
    """The service did not answer ``/readyz`` with 200 in time (message says why)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: attempt ``k`` (0-based) waits ``min(backoff_max_s, backoff_s * 2**k)``."""

    retries: int = 3
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = self.backoff_s * (2**attempt) if retry_after is None else retry_after
        return max(0.0, min(self.backoff_max_s, wait))


@dataclass(frozen=True)
class Answer:
    """A successful ``/v1/act`` answer."""

    action: int
    rtt_ns: int  # round trip of the attempt that succeeded
    retries: int  # failed attempts before it
    body: dict[str, Any]


def base_url(url: str) -> str:
    """``url`` without a trailing slash; ``host:port`` alone means ``http://host:port``."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"service URL must look like http://HOST:PORT, got {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def ws_url(url: str) -> str:
    """The WebSocket endpoint under a service base URL (http -> ws, https -> wss)."""
    parts = urlsplit(base_url(url))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + WS_PATH, "", ""))


def _encode(prefix: bytes, observation: Any) -> bytes:
    # OPT_SERIALIZE_NUMPY writes float32 arrays with their shortest exact repr
    return prefix + orjson.dumps(observation, option=orjson.OPT_SERIALIZE_NUMPY) + b"}"


def _error_text(data: bytes | str, limit: int = 300) -> str:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        return text[:limit]
    if isinstance(body, dict):
        detail = body.get("error", body.get("detail", body))
        if isinstance(detail, dict) and "message" in detail:
            detail = detail["message"]
        return str(detail)[:limit]
    return str(body)[:limit]


def _parse_answer(data: bytes | str, rtt_ns: int, retries: int) -> Answer:
    try:
        body = orjson.loads(data)
        return Answer(action=int(body["action"]), rtt_ns=rtt_ns, retries=retries, body=body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ActError("bad_answer", f"unreadable answer ({exc}): {_error_text(data)}") from None


class ActClient(ABC):
    """One connection to the service, asking for actions for one model."""

    transport: str = ""

    def __init__(
        self, url: str, model: str, *, timeout_s: float = 2.0, retry: RetryPolicy | None = None
    ) -> None:
        self.url = base_url(url)
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._prefix = b'{"model":' + orjson.dumps(model) + b',"observation":'

    @abstractmethod
    def act(self, observation: Any) -> Answer:
        """Send one observation (list or float32 array); raise :class:`ActError` on failure."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ActClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpActClient(ActClient):
    """``POST /v1/act`` over one keep-alive HTTP/1.1 connection."""

    transport = "http"

    def __init__(self, url: str, model: str, **kwargs: Any) -> None:
        super().__init__(url, model, **kwargs)
        parts = urlsplit(self.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path + ACT_PATH
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout_s)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def act(self, observation: Any) -> Answer:
        body = _encode(self._prefix, observation)
        failures = 0  # failed attempts so far (reported as Answer.retries)
        attempt = 0  # attempts that counted against the retry budget
        while True:
            reused = self._conn is not None
            problem = ""
            try:
                if self._conn is None:
                    self._conn = self._connect()
            except OSError as exc:  # refused, unreachable, connect timed out
                problem = f"{type(exc).__name__}: {exc}"
            else:
                conn = self._conn
                try:
                    t0 = time.perf_counter_ns()
                    conn.request("POST", self._path, body, self._headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    t1 = time.perf_counter_ns()
                except TimeoutError:
                    self._drop()
                    raise ActError("timeout", f"no answer within {self.timeout_s}s") from None
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    if reused and failures == 0:
                        failures += 1
                        continue  # the server closed an idle keep-alive connection: reconnect
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.will_close:
                        self._drop()
                    status = resp.status
                    if status == 200:
                        return _parse_answer(data, t1 - t0, failures)
                    if status == 504:
                        raise ActError("timeout", f"server deadline passed: {_error_text(data)}")
                    if status < 500 and status != 429:
                        raise ActError("rejected", f"HTTP {status}: {_error_text(data)}")
                    kind = {429: "overloaded", 503: "unavailable"}.get(status, "server_error")
                    if attempt >= self.retry.retries:
                        raise ActError(kind, f"HTTP {status} from {self.url}: {_error_text(data)}")
                    time.sleep(self.retry.delay(attempt, _retry_after(resp)))
                    attempt += 1
                    failures += 1
                    continue
            # no connection, or it broke: back off and retry, boundedly
            self._drop()
            if attempt >= self.retry.retries:
                where = self.url
                raise ActError(
                    "unavailable", f"cannot reach {where} after {attempt + 1} attempts ({problem})"
                )
            time.sleep(self.retry.delay(attempt))
            attempt += 1
            failures += 1

    def close(self) -> None:
        self._drop()


def _retry_after(resp: http.client.HTTPResponse) -> float | None:
    value = resp.getheader("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class WsActClient(ActClient):
    """``/v1/act`` bodies as text messages on one WebSocket (``/v1/act/ws``)."""

    transport = "ws"

    def __init__(self, url: str, model: str, **kwargs: Any) -> None:
        super().__init__(url, model, **kwargs)
        self._uri = ws_url(self.url)
        self._ws: Any = None
        self._stack = contextlib.ExitStack()

    def _connect(self) -> Any:
        from websockets.sync.client import connect

        # entered as a context manager, which every websockets version >= 12 supports;
        # no per-message compression: the messages are tiny and it costs time
        return self._stack.enter_context(
            connect(self._uri, open_timeout=self.timeout_s, close_timeout=1.0, compression=None)
        )

    def _drop(self) -> None:
        self._ws = None
        # closing a broken connection may fail; it is gone either way
        with contextlib.suppress(Exception):
            self._stack.close()
        self._stack = contextlib.ExitStack()

    def act(self, observation: Any) -> Answer:
        from websockets.exceptions import WebSocketException

        text = _encode(self._prefix, observation).decode()
        failures = 0
        attempt = 0
        while True:
            reused = self._ws is not None
            problem = ""
            try:
                if self._ws is None:
                    self._ws = self._connect()
            except (OSError, WebSocketException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                ws = self._ws
                try:
                    t0 = time.perf_counter_ns()
                    ws.send(text)
                    msg = ws.recv(timeout=self.timeout_s)
                    t1 = time.perf_counter_ns()
                except TimeoutError:
                    # a late answer would be read as the next step's: start a fresh connection
                    self._drop()
                    raise ActError("timeout", f"no answer within {self.timeout_s}s") from None
                except (OSError, WebSocketException) as exc:
                    self._drop()
                    if reused and failures == 0:
                        failures += 1
                        continue  # connection dropped while idle: reconnect now
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if isinstance(msg, bytes):
                        msg = msg.decode(errors="replace")
                    if '"error"' not in msg[:16]:  # cheap check; answers start with "model"
                        return _parse_answer(msg, t1 - t0, failures)
                    kind, retryable, message = _ws_error(msg)
                    if not retryable or attempt >= self.retry.retries:
                        raise ActError(kind, message)
                    time.sleep(self.retry.delay(attempt))
                    attempt += 1
                    failures += 1
                    continue
            self._drop()
            if attempt >= self.retry.retries:
                where = self._uri
                raise ActError(
                    "unavailable", f"cannot reach {where} after {attempt + 1} attempts ({problem})"
                )
            time.sleep(self.retry.delay(attempt))
            attempt += 1
            failures += 1

    def close(self) -> None:
        self._drop()


def _ws_error(msg: str) -> tuple[str, bool, str]:
    """(kind, retryable, message) for an ``{"error": {...}}`` WebSocket answer."""
    try:
        err = orjson.loads(msg).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        return "bad_answer", False, msg[:300]
    if not isinstance(err, dict):
        return "rejected", False, str(err)[:300]
    status = err.get("status", err.get("code", err.get("kind")))
    message = str(err.get("message", err.get("detail", err)))[:300]
    if status in (429, "429", "queue_full", "overloaded"):
        return "overloaded", True, f"server busy: {message}"
    if status in (504, "504", "deadline", "timeout"):
        return "timeout", False, f"server deadline passed: {message}"
    if status in (503, "503", "backend_error", "unavailable", "not_ready"):
        return "unavailable", True, f"server unavailable: {message}"
    if isinstance(status, int) and status >= 500:
        return "server_error", False, message
    return "rejected", False, message


def make_act_client(transport: str, url: str, model: str, **kwargs: Any) -> ActClient:
    if transport == "http":
        return HttpActClient(url, model, **kwargs)
    if transport == "ws":
        return WsActClient(url, model, **kwargs)
    raise ValueError(f"transport must be 'http' or 'ws', got {transport!r}")


# --- control plane (rare calls: httpx) -------------------------------------------------------


def wait_ready(url: str, timeout_s: float = 10.0, poll_s: float = 0.2) -> dict[str, Any]:
    """Poll ``GET /readyz`` until 200; return its JSON body.

    Raises :class:`ServerNotReady` saying whether nothing answered at ``url`` or
    the server answered but was not ready (with its reason)."""
    import httpx

    url = base_url(url)
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt made"
    answered = False
    with httpx.Client(base_url=url, timeout=min(2.0, max(timeout_s, 0.1))) as http:
        while True:
            try:
                resp = http.get("/readyz")
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                answered = True
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        return {}
                last_error = f"HTTP {resp.status_code}: {_error_text(resp.content)}"
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
    if answered:
        raise ServerNotReady(f"server at {url} is not ready after {timeout_s:g}s ({last_error})")
    raise ServerNotReady(
        f"no s2loop server answers at {url} ({last_error}); start one with `s2loop serve` "
        "or point --url at a running one"
    )


def get_models(url: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """``GET /v1/models`` as a list of model descriptions (each with at least ``name``)."""
    import httpx

    resp = httpx.get(base_url(url) + "/v1/models", timeout=timeout_s)
    resp.raise_for_status()
    body = resp.json()
    if isinstance(body, dict):  # {"models": [...]} or {name: {...}}
        body = body["models"] if "models" in body else [{"name": k, **v} for k, v in body.items()]
    return [m if isinstance(m, dict) else {"name": str(m)} for m in body]
