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
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgpack
import numpy as np

from s2loop_client import codec as wirecodec
from s2loop_client import contract as wire
from s2loop_client.errors import BadAnswer, ConnectionFailed, from_error_body
from s2loop_client.transports import KINDS, TCP_SCHEMES, AsyncTransport, NotSent, Transport

Answer = wire.ActAnswer
Timing = wire.Timing
TRANSPORTS = ("http", "ws", "tcp")
SMALL = 64  # observations up to this many values travel as a msgpack list
_FLOAT32 = np.dtype(np.float32)


_NAMES = {cls: frozenset(f.name for f in dataclasses.fields(cls)) for cls in (Answer, Timing)}


def _fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has (fields a newer server adds are skipped)."""
    names = _NAMES[cls]
    return {k: v for k, v in data.items() if k in names}


def _timing(data: dict[str, Any]) -> Timing:
    return Timing(**_fields(Timing, data))


def read_answer(status: int, body: Any) -> dict[str, Any]:
    """The answer map of a 200; the matching ActError otherwise (the status is the one
    the transport read: the status line, or the error map's own ``status``)."""
    if status != 200:
        raise from_error_body(body, status)
    if type(body) is not dict:
        raise BadAnswer("bad_answer", f"not an answer map: {str(body)[:200]}", status)
    return body


def to_trace(data: dict[str, Any]) -> wire.Trace:
    """An answer's ``trace`` map as a :class:`~s2loop_client.contract.Trace`."""
    layers = [wire.LayerSpikes(lay["name"], lay["size"], lay["spikes"]) for lay in data["layers"]]
    return wire.Trace(data["ticks"], data["input"], layers, data["output_q"])


def to_answer(body: dict[str, Any]) -> Answer:
    try:
        try:  # the server's own fields: no filtering (a newer server's extra ones: below)
            answer = Answer(**body)
            answer.timing = Timing(**answer.timing)  # type: ignore[arg-type]
        except TypeError:
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


class _Client:
    """What both clients share: the options, the transport, and building request bodies
    in its codec. ``transport``: ``http``, ``ws`` or ``tcp`` (then ``url`` is
    ``tcp://HOST:PORT`` and the codec is always msgpack); left out, ``tcp`` for a
    ``tcp://`` or ``tcps://`` URL and ``http`` for any other; ``codec``: ``json`` or
    ``msgpack``; ``verify``: TLS verification (a CA file path, or False);
    ``transport_impl``: a transport of the client's flavour (e.g. a
    :class:`~s2loop_client.transports.MockTransport`) instead of one made from these."""

    asynchronous: ClassVar[bool] = False  # which flavour of transport the client drives

    def __init__(
        self,
        url: str,
        model: str,
        *,
        transport: str | None = None,
        codec: str = "json",
        api_key: str | None = None,
        timeout_s: float = 1.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        verify: bool | str = True,
        transport_impl: Any = None,
    ) -> None:
        self.transport = transport_impl or make_transport(
            url, transport, codec, api_key, timeout_s, verify, self.asynchronous
        )
        codec = self.transport.codec
        if codec not in wire.CODECS:
            raise ValueError(f"codec must be one of {wire.CODECS}, got {codec!r}")
        self.model, self.codec = model, codec
        self.retries, self.backoff_s = retries, backoff_s
        if self.asynchronous:  # one request at a time on a ws/tcp connection
            self._lock = asyncio.Lock()
        if codec == "msgpack":  # one packer per client (a client is used by one thread)
            self._dumps = msgpack.Packer(default=wirecodec.pack_default, use_bin_type=True).pack
        else:
            self._dumps = lambda body: wirecodec.dumps(body, "json")

    def _obs(self, observation: Any, rank: int) -> Any:
        arr = observation
        if type(arr) is not np.ndarray or arr.dtype is not _FLOAT32:
            arr = np.asarray(observation, dtype=np.float32)
        if arr.ndim != rank:
            raise ValueError(f"observation{'s' if rank == 2 else ''} must be {rank}-D")
        if self.codec == "msgpack" and arr.size > SMALL:
            return arr  # raw float32 bytes (codec): cheaper than a list past a few values
        return arr.tolist()  # the exact float32 values, as Python floats

    def act_body(
        self, observation: Any, seed: Any, id: Any, episode_id: Any, step: Any, trace: bool = False
    ) -> bytes:
        body: dict[str, Any] = {"model": self.model, "observation": self._obs(observation, 1)}
        if seed is not None or id is not None or episode_id is not None or step is not None:
            for key, value in (("seed", seed), ("id", id), ("episode_id", episode_id),
                               ("step", step)):  # fmt: skip
                if value is not None:
                    body[key] = value
        if trace:
            body["trace"] = True
        return self._dumps(body)

    def batch_body(
        self, observations: Any, seeds: Sequence[int] | None, trace: bool = False
    ) -> bytes:
        body: dict[str, Any] = {"model": self.model, "observations": self._obs(observations, 2)}
        if seeds is not None:
            body["seeds"] = [int(s) for s in seeds]
        if trace:
            body["trace"] = True
        return self._dumps(body)


def make_transport(
    url: str,
    transport: str | None,
    codec: str,
    api_key: str | None,
    timeout_s: float,
    verify: Any,
    asynchronous: bool = False,
) -> Any:
    """The :class:`Transport` (or :class:`AsyncTransport`) of ``transport``; None: from
    the URL (``tcp://`` and ``tcps://`` the TCP endpoint, anything else HTTP)."""
    tcp_url = urlsplit(url).scheme in TCP_SCHEMES
    if transport is None:
        transport = "tcp" if tcp_url else "http"
    elif tcp_url and transport != "tcp":
        msg = f"{url!r} is the TCP endpoint's URL: leave transport out, or give it as 'tcp'"
        raise ValueError(msg)
    if transport not in KINDS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    cls = KINDS[transport][1 if asynchronous else 0]
    return cls(url, "msgpack" if transport == "tcp" else codec, api_key, timeout_s, verify)


class PolicyClient(_Client):
    """A blocking client of one model (options: :class:`_Client`)."""

    transport: Transport

    def _send(self, route: str, payload: bytes | None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                if payload is None:
                    return read_answer(*self.transport.info(self.model))
                return read_answer(*self.transport.request(route, payload))
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


class AsyncPolicyClient(_Client):
    """:class:`PolicyClient` for asyncio code: the same options and API with ``await``,
    on the asyncio transports."""

    asynchronous = True
    transport: AsyncTransport

    async def _send(self, route: str, payload: bytes | None) -> Any:
        for attempt in range(self.retries + 1):
            try:
                async with self._lock:
                    if payload is None:
                        reply = await self.transport.ainfo(self.model)
                    else:
                        reply = await self.transport.arequest(route, payload)
                return read_answer(*reply)
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
        await self.transport.aclose()

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
