"""``PolicyClient`` (blocking) and ``AsyncPolicyClient`` (asyncio): one model on one
s2loop server, over HTTP, WebSocket or TCP, in JSON or msgpack.

    with PolicyClient("http://127.0.0.1:8000", model="cartpole", transport="ws") as policy:
        answer = policy.act(observation)       # Answer(action, q_values, timing, ...)

Retries: only requests that provably never reached the server (connection refused,
or a kept connection found closed while writing) are sent again, ``retries`` times
with exponential backoff; anything else raises at once (the caller's control loop
decides what a missed step means).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from s2loop_client import codec as wirecodec
from s2loop_client import contract as wire
from s2loop_client import framing
from s2loop_client.errors import BadAnswer, ConnectionFailed, Timeout, from_error_body
from s2loop_client.transports import (
    HTTPTransport,
    NotSent,
    TCPTransport,
    Transport,
    WSTransport,
    tcp_endpoint,
)

Answer = wire.ActAnswer
Timing = wire.Timing
TRANSPORTS = ("http", "ws", "tcp")


_NAMES = {cls: frozenset(f.name for f in dataclasses.fields(cls)) for cls in (Answer, Timing)}


def _fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has (fields a newer server adds are skipped)."""
    names = _NAMES[cls]
    return {k: v for k, v in data.items() if k in names}


def _timing(data: dict[str, Any]) -> Timing:
    return Timing(**_fields(Timing, data))


def read_answer(status: int, data: bytes, codec: str) -> Any:
    """The decoded answer of a 200; the matching ActError otherwise."""
    try:
        body = wirecodec.loads(data, codec)
    except wirecodec.DecodeError as exc:
        raise BadAnswer("bad_answer", f"unreadable answer: {exc}", status) from None
    if status != 200 or (isinstance(body, dict) and "error" in body):
        raise from_error_body(body, status)
    if not isinstance(body, dict):
        raise BadAnswer("bad_answer", f"not an answer map: {str(body)[:200]}", status)
    return body


def to_trace(data: dict[str, Any]) -> wire.Trace:
    """An answer's ``trace`` map as a :class:`~s2loop_client.contract.Trace`."""
    layers = [wire.LayerSpikes(lay["name"], lay["size"], lay["spikes"]) for lay in data["layers"]]
    return wire.Trace(data["ticks"], data["input"], layers, data["output_q"])


def to_answer(body: dict[str, Any]) -> Answer:
    try:
        answer = Answer(**{**_fields(Answer, body), "timing": _timing(body["timing"])})
        if answer.trace is not None:
            answer.trace = to_trace(answer.trace)  # type: ignore[arg-type]
        return answer
    except (KeyError, TypeError) as exc:
        raise BadAnswer("bad_answer", f"answer misses a field: {exc}") from None


def to_answers(body: dict[str, Any]) -> list[Answer]:
    """A batch answer as one :class:`Answer` per observation (the timing is the batch's)."""
    try:
        timing = _timing(body["timing"])
        seeds = body.get("seeds") or [None] * len(body["actions"])
        traces = body.get("traces") or [None] * len(body["actions"])
        return [
            Answer(body["model"], int(a), list(q), body["backend"], body["fallback"], timing,
                   body.get("id"), s, trace=None if t is None else to_trace(t))
            for a, q, s, t in zip(body["actions"], body["q_values"], seeds, traces, strict=True)
        ]  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise BadAnswer("bad_answer", f"batch answer misses a field: {exc}") from None


class _Requests:
    """What both clients share: building request bodies in the chosen codec."""

    def __init__(self, model: str, codec: str) -> None:
        if codec not in wire.CODECS:
            raise ValueError(f"codec must be one of {wire.CODECS}, got {codec!r}")
        self.model, self.codec = model, codec

    def _obs(self, observation: Any, rank: int) -> Any:
        arr = np.asarray(observation, dtype=np.float32)
        if arr.ndim != rank:
            raise ValueError(f"observation{'s' if rank == 2 else ''} must be {rank}-D")
        return arr if self.codec == "msgpack" else arr.tolist()

    def act_body(
        self, observation: Any, seed: Any, id: Any, episode_id: Any, step: Any, trace: bool = False
    ) -> bytes:
        body: dict[str, Any] = {"model": self.model, "observation": self._obs(observation, 1)}
        for key, value in (("seed", seed), ("id", id), ("episode_id", episode_id), ("step", step)):
            if value is not None:
                body[key] = value
        if trace:
            body["trace"] = True
        return wirecodec.dumps(body, self.codec)

    def batch_body(
        self, observations: Any, seeds: Sequence[int] | None, trace: bool = False
    ) -> bytes:
        body: dict[str, Any] = {"model": self.model, "observations": self._obs(observations, 2)}
        if seeds is not None:
            body["seeds"] = [int(s) for s in seeds]
        if trace:
            body["trace"] = True
        return wirecodec.dumps(body, self.codec)


def make_transport(
    url: str, transport: str, codec: str, api_key: str | None, timeout_s: float, verify: Any
) -> Transport:
    if transport == "http":
        return HTTPTransport(url, codec, api_key, timeout_s, verify)
    if transport == "ws":
        return WSTransport(url, codec, api_key, timeout_s, verify)
    if transport == "tcp":
        return TCPTransport(url, "msgpack", api_key, timeout_s, verify)
    raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")


class PolicyClient(_Requests):
    """A blocking client of one model. ``transport``: ``http``, ``ws`` or ``tcp`` (then
    ``url`` is ``tcp://HOST:PORT`` and the codec is always msgpack); ``codec``: ``json``
    or ``msgpack``; ``verify``: TLS verification (a CA file path, or False)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        transport: str = "http",
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        verify: bool | str = True,
        transport_impl: Transport | None = None,
    ) -> None:
        impl = transport_impl or make_transport(url, transport, codec, api_key, timeout_s, verify)
        super().__init__(model, impl.codec)
        self.transport = impl
        self.retries, self.backoff_s = retries, backoff_s

    def _send(self, route: str, payload: bytes | None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                if payload is None:
                    status, data = self.transport.info(self.model)
                    return read_answer(status, data, self.transport.info_codec)
                status, data = self.transport.request(route, payload)
                return read_answer(status, data, self.codec)
            except NotSent as exc:
                if attempt == self.retries:
                    raise ConnectionFailed("connection", f"server unreachable: {exc}") from None
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def act(
        self,
        observation: Any,
        *,
        seed: int | None = None,
        id: Any = None,
        episode_id: str | None = None,
        step: int | None = None,
        trace: bool = False,
    ) -> Answer:
        """The greedy action for one observation (list or numpy array). ``episode_id`` and
        ``step`` tag it in the server's flight recorder; ``seed`` fixes a Poisson model's
        input spikes; ``id`` is echoed back; ``trace``: the answer's ``.trace`` holds the
        inference's spikes per tick (:class:`~s2loop_client.contract.Trace`)."""
        body = self.act_body(observation, seed, id, episode_id, step, trace)
        return to_answer(self._send("act", body))

    def act_batch(
        self, observations: Any, *, seeds: Sequence[int] | None = None, trace: bool = False
    ) -> list[Answer]:
        """One answer per row of ``observations`` [N, obs], in one backend call."""
        return to_answers(self._send("batch", self.batch_body(observations, seeds, trace)))

    def model_info(self) -> dict[str, Any]:
        """What the server says of the model (``GET /v1/models/{name}``)."""
        return self._send("info", None)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------- asyncio


class AsyncPolicyClient(_Requests):
    """:class:`PolicyClient` for asyncio code: the same API with ``await``."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        transport: str = "http",
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        verify: bool | str = True,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        super().__init__(model, "msgpack" if transport == "tcp" else codec)
        self.url, self.kind, self.api_key = url, transport, api_key
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.verify = verify
        self._http: Any = None
        self._ws: Any = None
        self._tcp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()  # one request at a time on a ws/tcp connection

    def _headers(self) -> dict[str, str]:
        media = wire.MSGPACK if self.codec == "msgpack" else wire.JSON
        headers = {"Content-Type": media, "Accept": media}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _http_call(self, method: str, path: str, payload: bytes | None) -> tuple[int, bytes]:
        import httpx

        if self._http is None:
            from s2loop_client.server import tls

            self._http = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout_s, verify=tls(self.verify)
            )
        try:
            r = await self._http.request(method, path, content=payload, headers=self._headers())
        except httpx.ConnectError as exc:
            raise NotSent(str(exc)) from None
        except httpx.RemoteProtocolError as exc:  # closed before an answer: see transports
            raise NotSent(str(exc)) from None
        except httpx.TimeoutException:
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed("connection", str(exc)) from None
        return r.status_code, r.content

    async def _ws_call(self, payload: bytes) -> tuple[int, bytes]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        from s2loop_client.transports import _status_of

        if self._ws is None:
            parts = urlsplit(self.url)
            scheme = "wss" if parts.scheme == "https" else "ws"
            url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{wire.WS_PATH}"
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
            try:
                self._ws = await connect(url, additional_headers=headers, compression=None)
            except OSError as exc:
                raise NotSent(str(exc)) from None
        try:
            await self._ws.send(payload.decode() if self.codec == "json" else payload)
            data = await asyncio.wait_for(self._ws.recv(), self.timeout_s)
        except TimeoutError:
            await self._drop()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except ConnectionClosed as exc:
            await self._drop()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        data = data.encode() if isinstance(data, str) else data
        return _status_of(data, self.codec), data

    async def _tcp_call(self, payload: bytes) -> tuple[int, bytes]:

        if self._tcp is None:
            host, port, context = tcp_endpoint(self.url, self.verify)
            try:
                self._tcp = await asyncio.wait_for(
                    asyncio.open_connection(
                        host, port, ssl=context, server_hostname=host if context else None
                    ),
                    self.timeout_s,
                )
            except ConnectionRefusedError as exc:
                raise NotSent(str(exc)) from None
            except TimeoutError:
                raise Timeout("timeout", "connecting took longer than timeout_s") from None
            except (OSError, ssl.SSLError) as exc:
                raise ConnectionFailed("connection", str(exc)) from None
            if self.api_key is not None:
                status, data = await self._frame(
                    wirecodec.pack({"hello": {"api_key": self.api_key}})
                )
                if status != 200:
                    await self._drop()
                    raise from_error_body(wirecodec.unpack(data), status)
        return await self._frame(payload)

    async def _frame(self, payload: bytes) -> tuple[int, bytes]:
        from s2loop_client.transports import _status_of

        assert self._tcp is not None
        reader, writer = self._tcp
        writer.write(framing.frame(payload))
        try:
            data = await asyncio.wait_for(framing.read_frame_async(reader), self.timeout_s)
        except TimeoutError:
            await self._drop()
            raise Timeout("timeout", f"no answer within {self.timeout_s} s") from None
        except (OSError, asyncio.IncompleteReadError, framing.FrameTooLarge) as exc:
            await self._drop()
            raise ConnectionFailed("connection", f"connection lost: {exc}") from None
        return _status_of(data, "msgpack"), data

    async def _drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._tcp is not None:
            self._tcp[1].close()
            self._tcp = None

    async def _once(self, route: str, payload: bytes | None) -> tuple[int, bytes]:
        if payload is None:
            if self.kind == "tcp":
                return await self._tcp_call(wirecodec.pack({"model_info": self.model}))
            return await self._http_call("GET", f"{wire.MODELS_PATH}/{self.model}", None)
        if self.kind == "tcp":
            return await self._tcp_call(payload)
        if self.kind == "ws" and route == "act":
            return await self._ws_call(payload)
        path = wire.ACT_PATH if route == "act" else wire.BATCH_PATH
        return await self._http_call("POST", path, payload)

    async def _send(self, route: str, payload: bytes | None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                async with self._lock:
                    status, data = await self._once(route, payload)
                info_codec = "msgpack" if self.kind == "tcp" else "json"
                return read_answer(status, data, self.codec if payload else info_codec)
            except NotSent as exc:
                if attempt == self.retries:
                    raise ConnectionFailed("connection", f"server unreachable: {exc}") from None
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def act(
        self,
        observation: Any,
        *,
        seed: int | None = None,
        id: Any = None,
        episode_id: str | None = None,
        step: int | None = None,
        trace: bool = False,
    ) -> Answer:
        body = self.act_body(observation, seed, id, episode_id, step, trace)
        return to_answer(await self._send("act", body))

    async def act_batch(
        self, observations: Any, *, seeds: Sequence[int] | None = None, trace: bool = False
    ) -> list[Answer]:
        body = self.batch_body(observations, seeds, trace)
        return to_answers(await self._send("batch", body))

    async def model_info(self) -> dict[str, Any]:
        return await self._send("info", None)

    async def close(self) -> None:
        await self._drop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncPolicyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --------------------------------------------------------------------- episodes


@dataclasses.dataclass
class Episode:
    total_reward: float
    steps: int
    terminated: bool
    answers: list[Answer]


def run_episode(
    policy: PolicyClient, env: Any, *, seed: int | None = None, max_steps: int | None = None
) -> Episode:
    """One Gymnasium episode driven by ``policy`` (``env``: any Gymnasium 1.x env)."""
    observation, _ = env.reset(seed=seed)
    total, answers, terminated = 0.0, [], False
    while max_steps is None or len(answers) < max_steps:
        answer = policy.act(observation)
        answers.append(answer)
        observation, reward, terminated, truncated, _ = env.step(answer.action)
        total += float(reward)
        if terminated or truncated:
            break
    return Episode(total, len(answers), bool(terminated), answers)
