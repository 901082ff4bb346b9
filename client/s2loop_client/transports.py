"""How a request reaches the server: one small interface, several transports (as
httpx does): keep-alive HTTP, WebSocket, plain TCP frames, and a mock for tests.

A transport moves bytes: ``request(route, payload) -> (status, answer bytes)`` for
``route`` ``act`` or ``batch``, and ``info(model) -> (status, bytes)``. It raises
:class:`NotSent` when the request may be sent again: it provably never left (connection
refused, or a kept connection found closed while writing), or it went out on a
kept-alive connection that the other end closed before a single byte of answer (the
keep-alive race every HTTP client meets; a proxy such as HAProxy closes the client's
connection that way when its own kept connection to a replica broke, and relies on the
client to resend). Resending is harmless here: an act is stateless, the same
observation gets the same answer (a Poisson one, fresh draws, as it would anyway). Any
other failure is :class:`~s2loop_client.errors.ConnectionFailed` or
:class:`~s2loop_client.errors.Timeout`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from s2loop_client import codec as wirecodec
from s2loop_client import contract as wire
from s2loop_client import framing
from s2loop_client.errors import ConnectionFailed, Timeout

PATHS = {"act": wire.ACT_PATH, "batch": wire.BATCH_PATH}


class NotSent(Exception):
    """The request never reached the server: safe to send again."""


class Transport(ABC):
    #: codec of ``info()`` answers (the HTTP control plane always answers JSON)
    info_codec = "json"

    def __init__(self, codec: str) -> None:
        if codec not in wire.CODECS:
            raise ValueError(f"codec must be one of {wire.CODECS}, got {codec!r}")
        self.codec = codec

    @abstractmethod
    def request(self, route: str, payload: bytes) -> tuple[int, bytes]: ...

    @abstractmethod
    def info(self, model: str) -> tuple[int, bytes]: ...

    def close(self) -> None:  # noqa: B027 - nothing to close by default
        pass


def _status_of(data: bytes, codec: str) -> int:
    """A WebSocket or TCP answer's status: the error's ``status``, else 200."""
    # errors start with the map key "error"; answers never do
    if codec == "msgpack":
        is_error = data[1:7] == b"\xa5error"
    else:
        is_error = data[:9] == b'{"error":'
    if not is_error:
        return 200
    try:
        return int(wirecodec.loads(data, codec)["error"].get("status") or 500)
    except Exception:
        return 500


class HTTPTransport(Transport):
    """One kept-alive connection (``http.client``, TCP_NODELAY): the lightest HTTP
    client in Python, a few microseconds per request over a raw socket."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an HTTP server URL looks like http://HOST:PORT, got {url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.context = None
        if self.https:
            self.context = ssl.create_default_context(
                cafile=verify if isinstance(verify, str) else None
            )
            if verify is False:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        media = wire.MSGPACK if codec == "msgpack" else wire.JSON
        self.headers = {"Content-Type": media, "Accept": media}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.conn is None:
            if self.https:
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.context
                )
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.connect()
            except (ConnectionRefusedError, socket.gaierror) as exc:
                raise NotSent(str(exc)) from None
            except TimeoutError:
                raise Timeout("timeout", "connecting took longer than timeout_s") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
        return self.conn

    def _call(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        kept = self.conn is not None  # a connection an earlier request already used
        conn = self._connect()
        try:
            conn.request(method, self.prefix + path, body=payload, headers=self.headers)
        except (BrokenPipeError, ConnectionResetError) as exc:  # a kept connection gone idle
            self.close()
            raise NotSent(str(exc)) from None
        except OSError as exc:
            self.close()
            raise ConnectionFailed("connection", str(exc)) from None
        try:
            resp = conn.getresponse()
            return resp.status, resp.read()
        except TimeoutError:
            self.close()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            self.close()
            if kept:  # closed before any answer byte on a kept connection: resend
                raise NotSent(f"kept connection closed before an answer: {exc}") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None

    def request(self, route: str, payload: bytes) -> tuple[int, bytes]:
        return self._call("POST", PATHS[route], payload)

    def info(self, model: str) -> tuple[int, bytes]:
        return self._call("GET", f"{wire.MODELS_PATH}/{model}", None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class WSTransport(Transport):
    """``/v1/act/ws``: text frames for JSON, binary frames for msgpack; batches and model
    info go over HTTP to the same server."""

    def __init__(
        self,
        url: str,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__(codec)
        self.http = HTTPTransport(url, codec, api_key, timeout_s, verify)
        parts = urlsplit(url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        self.url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{wire.WS_PATH}"
        self.api_key, self.timeout_s = api_key, timeout_s
        self.context = self.http.context
        self.ws: Any = None
        self._stack = contextlib.ExitStack()

    def _connect(self) -> Any:
        if self.ws is None:
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            try:
                self.ws = self._stack.enter_context(
                    connect(
                        self.url,
                        additional_headers=headers,
                        open_timeout=self.timeout_s,
                        ssl=self.context,
                        compression=None,
                        max_size=None,
                    )
                )
            except ConnectionRefusedError as exc:
                raise NotSent(str(exc)) from None
            except InvalidStatus as exc:  # refused at the handshake (401)
                raise _handshake_error(exc) from None
            except TimeoutError:
                raise Timeout("timeout", "the WebSocket handshake took too long") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            self.ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ws

    def request(self, route: str, payload: bytes) -> tuple[int, bytes]:
        if route != "act":
            return self.http.request(route, payload)
        from websockets.exceptions import ConnectionClosed

        ws = self._connect()
        try:
            ws.send(payload.decode() if self.codec == "json" else payload)
        except ConnectionClosed as exc:
            self.close()
            raise NotSent(str(exc)) from None
        try:
            data = ws.recv(timeout=self.timeout_s)
        except TimeoutError:
            self.close()  # its answer would come late and out of step: start afresh
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except ConnectionClosed as exc:
            self.close()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        data = data.encode() if isinstance(data, str) else data
        return _status_of(data, self.codec), data

    def info(self, model: str) -> tuple[int, bytes]:
        return self.http.info(model)

    def close(self) -> None:
        self.ws = None
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            self._stack.close()
        self._stack = contextlib.ExitStack()
        self.http.close()


def _handshake_error(exc: Any) -> Exception:
    from s2loop_client.errors import from_error_body

    try:
        body = wirecodec.loads(exc.response.body, "json")
    except Exception:
        body = {"error": {"kind": "connection", "message": str(exc)}}
    return from_error_body(body, exc.response.status_code)


class TCPTransport(Transport):
    """Length-prefixed msgpack frames (:mod:`s2loop_client.framing`): the shortest path
    to the server, for 1 kHz loops. ``tcp://HOST:PORT`` in plaintext, ``tcps://HOST:PORT``
    over TLS (the server's TCP endpoint speaks TLS whenever it has a certificate);
    ``verify``: True (the system's CAs), a CA file path, or False (no check)."""

    def __init__(
        self,
        url: str,
        codec: str = "msgpack",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        verify: bool | str = True,
    ) -> None:
        super().__init__("msgpack")  # TCP frames are always msgpack
        self.info_codec = "msgpack"
        self.host, self.port, self.context = tcp_endpoint(url, verify)
        self.address = (self.host, self.port)
        self.api_key, self.timeout_s = api_key, timeout_s
        self.sock: socket.socket | None = None
        self.buffer = bytearray()  # bytes read past the last answer (none, in lockstep)
        self.kept = False  # the connection has answered before (the server may close it idle)

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.buffer.clear()
            self.kept = False
            try:
                sock = socket.create_connection(self.address, timeout=self.timeout_s)
            except ConnectionRefusedError as exc:
                raise NotSent(str(exc)) from None
            except TimeoutError:
                raise Timeout("timeout", "connecting took longer than timeout_s") from None
            except OSError as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=self.host)
                except (ssl.SSLError, OSError) as exc:
                    sock.close()
                    raise ConnectionFailed("connection", f"TLS: {exc}") from None
            self.sock = sock
            if self.api_key is not None:
                status, data = self._roundtrip(wirecodec.pack({"hello": {"api_key": self.api_key}}))
                if status != 200:
                    self.close()
                    from s2loop_client.errors import from_error_body

                    raise from_error_body(wirecodec.unpack(data), status)
        return self.sock

    def _roundtrip(self, payload: bytes) -> tuple[int, bytes]:
        assert self.sock is not None
        kept, self.kept = self.kept, True
        try:
            self.sock.sendall(framing.frame(payload))
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            raise NotSent(str(exc)) from None
        except OSError as exc:
            self.close()
            raise ConnectionFailed("connection", str(exc)) from None
        try:
            data = framing.read_frame(self.sock, self.buffer)
        except TimeoutError:
            self.close()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except framing.NoAnswerBytes as exc:
            self.close()
            if kept:  # a kept connection the server closed (idle): send again
                raise NotSent(f"kept connection closed before an answer: {exc}") from None
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        except (OSError, framing.FrameTooLarge) as exc:
            self.close()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        return _status_of(data, "msgpack"), data

    def request(self, route: str, payload: bytes) -> tuple[int, bytes]:
        self._connect()
        return self._roundtrip(payload)

    def info(self, model: str) -> tuple[int, bytes]:
        self._connect()
        return self._roundtrip(wirecodec.pack({"model_info": model}))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def tcp_endpoint(url: str, verify: bool | str = True) -> tuple[str, int, ssl.SSLContext | None]:
    """``(host, port, TLS context or None)`` of a ``tcp://`` or ``tcps://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tcps") or not parts.hostname or not parts.port:
        raise ValueError(
            f"a TCP endpoint looks like tcp://HOST:PORT or tcps://HOST:PORT, got {url!r}"
        )
    context = None
    if parts.scheme == "tcps":
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return parts.hostname, parts.port, context


Handler = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


class MockTransport(Transport):
    """For tests of code that uses the client, without a server: ``handler(route,
    request) -> (status, answer)`` with ``route`` ``act``, ``batch`` or ``info``. The
    request and answer go through the codec, as on the wire."""

    def __init__(self, handler: Handler, codec: str = "json") -> None:
        super().__init__(codec)
        self.handler = handler
        self.info_codec = codec

    def request(self, route: str, payload: bytes) -> tuple[int, bytes]:
        status, answer = self.handler(route, wirecodec.loads(payload, self.codec))
        return status, wirecodec.dumps(answer, self.codec)

    def info(self, model: str) -> tuple[int, bytes]:
        status, answer = self.handler("info", {"model": model})
        return status, wirecodec.dumps(answer, self.codec)
