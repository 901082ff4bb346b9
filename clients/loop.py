"""The closed loop: Gymnasium episodes whose actions come from the service, through
the client SDK (``s2loop_client.PolicyClient``; HTTP, WebSocket or TCP).

One *client* is one control loop on its own connection. ``run_loops`` runs
``clients`` of them at once (threads: the loop waits on the network almost all
the time) and returns every step they took.

Episodes are numbered across clients: client ``k`` runs episodes
``k * episodes .. (k + 1) * episodes - 1``, and episode ``i`` is reset with
seed ``seed + i``, so one client with the same seed replays the same episodes.

Pacing (``rate_hz``): a controller at rate f starts step n at ``t0 + n / f``,
sends the observation, and must have the action before the period ends. A step
whose action arrives later is *late* (a deadline miss). A late step does not
make the next ones burst to catch up: the schedule restarts from now.

A busy or unavailable server (429, 503) is asked again after its ``retry_after_ms``,
``RetryPolicy.retries`` times at most (the SDK itself only resends requests that
never left). A step that gets no action (timeout, unreachable, refused, ...) is
recorded with its category (:data:`ERROR_KINDS`); the controller holds its previous
action for that step, as a real one would. ``max_consecutive_errors`` failed steps in
a row abort the run with :class:`LoopAborted`.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from clients.config import (  # noqa: F401  (re-exported: the loop's public names)
    DEFAULT_URL,
    TRANSPORTS,
    LoopConfig,
    RetryPolicy,
    model_name_for,
)
from s2loop_client import (
    ActError,
    BadAnswer,
    ConnectionFailed,
    DeadlineExceeded,
    Overloaded,
    PolicyClient,
    ServerError,
    Timeout,
    Unavailable,
)

# what became of a step that got no action, in the order the summary lists them
ERROR_KINDS = ("timeout", "unavailable", "overloaded", "rejected", "server_error", "bad_answer")


def error_kind(exc: ActError) -> str:
    """The summary's category of a failed step."""
    for types, kind in (
        ((Timeout, DeadlineExceeded), "timeout"),
        ((ConnectionFailed, Unavailable), "unavailable"),
        ((Overloaded,), "overloaded"),
        ((ServerError,), "server_error"),
        ((BadAnswer,), "bad_answer"),
    ):
        if isinstance(exc, types):
            return kind
    return "rejected"


# one row per step; CSV column order
STEP_FIELDS = (
    "client",
    "episode",
    "episode_id",
    "seed",
    "step",
    "action",
    "reward",
    "rtt_us",
    "server_us",
    "backend_us",
    "chip_us",
    "energy_uj",
    "ticks",
    "backend",
    "fallback",
    "late",
    "retries",
    "error",
    "observation",  # what was sent, space-separated (joins the server's flight recorder)
    "q_values",
)


@dataclass
class Episode:
    client: int
    episode: int
    seed: int
    steps: int
    total_reward: float
    terminated: bool


@dataclass
class LoopResult:
    """Everything the loops did: per-step rows (tuples in ``STEP_FIELDS`` order)."""

    config: LoopConfig
    rows: list[tuple] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    wall_s: float = 0.0
    aborted: list[str] = field(default_factory=list)  # one message per aborted client
    view: str | None = None  # where the Rerun view went (file, URL), when on

    def column(self, name: str) -> list[Any]:
        i = STEP_FIELDS.index(name)
        return [r[i] for r in self.rows]


class LoopAborted(RuntimeError):
    """Too many failed steps in a row: the service is gone or unusable."""


def _timing(t: Any) -> tuple[float, ...]:
    """server_us, backend_us, chip_us, energy_uj, ticks of an answer's timing."""
    nan = math.nan
    return (
        t.server_us,
        t.compute_us,
        nan if t.chip_time_s is None else t.chip_time_s * 1e6,
        nan if t.energy_j is None else t.energy_j * 1e6,
        float(t.ticks),
    )


def _act(
    policy: PolicyClient,
    observation: Any,
    retry: RetryPolicy,
    episode_id: str,
    step: int,
    trace: bool = False,
) -> tuple[Any, int, int]:
    """(answer, round trip ns of the attempt that answered, retries before it)."""
    attempt = 0
    while True:
        t0 = time.perf_counter_ns()
        try:
            if trace:
                answer = policy.act(observation, episode_id=episode_id, step=step, trace=True)
            else:
                answer = policy.act(observation, episode_id=episode_id, step=step)
            return answer, time.perf_counter_ns() - t0, attempt
        except (Overloaded, Unavailable) as exc:
            if attempt >= retry.retries:
                raise
            time.sleep(retry.delay(attempt, exc.retry_after_ms))
            attempt += 1


def _floats(values: Any) -> str:
    """A vector as one CSV cell: space-separated, float32 precision."""
    return " ".join(f"{float(v):.7g}" for v in values)


def _sleep_until(t_ns: int) -> None:
    remaining = (t_ns - time.perf_counter_ns()) / 1e9
    if remaining > 0:
        time.sleep(remaining)


def make_policy(cfg: LoopConfig) -> PolicyClient:
    """The SDK client of one loop (``LoopConfig.policy_factory`` overrides it, for tests)."""
    if cfg.policy_factory is not None:
        return cfg.policy_factory()
    return PolicyClient(
        cfg.url,
        cfg.model or "",
        transport=cfg.transport,
        codec="msgpack" if cfg.transport == "tcp" else cfg.codec,
        api_key=cfg.api_key,
        timeout_s=cfg.timeout_s,
    )


def run_client(
    cfg: LoopConfig,
    client: int,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    view: Any = None,
) -> tuple[list[tuple], list[Episode], str | None]:
    """Run one control loop; returns (rows, episodes, abort message or None). ``view``:
    a :class:`clients.view.LoopView` that logs each step (with the env's render)."""
    import gymnasium as gym

    render_mode = "rgb_array" if view is not None else None
    env = gym.make(cfg.env_id, max_episode_steps=cfg.max_steps, render_mode=render_mode)
    policy = make_policy(cfg)
    client_step = 0  # the view's step timeline: this client's steps across episodes
    period_ns = round(1e9 / cfg.rate_hz) if cfg.rate_hz else 0
    rows: list[tuple] = []
    episodes: list[Episode] = []
    nan = math.nan
    consecutive_errors = 0
    pending_steps = 0
    try:
        for i in range(cfg.episodes):
            episode = client * cfg.episodes + i
            seed = cfg.seed + episode
            episode_id = f"{cfg.run_id}-{episode}"
            observation, _ = env.reset(seed=seed)
            total = 0.0
            action = 0  # held if the very first step gets no answer
            step = 0
            done = False
            terminated = False
            next_start = time.perf_counter_ns()
            while not done:
                if stop is not None and stop.is_set():
                    return rows, episodes, "stopped"
                if period_ns:
                    _sleep_until(next_start)
                    period_start = next_start
                else:
                    period_start = time.perf_counter_ns()
                sent = observation
                answer = None
                try:
                    answer, rtt_ns, retries = _act(
                        policy, sent, cfg.retry, episode_id, step, cfg.trace
                    )
                except ActError as exc:
                    arrived = time.perf_counter_ns()
                    consecutive_errors += 1
                    error = error_kind(exc)
                    rtt_us = server_us = backend_us = chip_us = energy_uj = ticks = nan
                    backend, fallback, retries = "", False, 0
                    q_values: list[float] = []
                    if consecutive_errors >= cfg.max_consecutive_errors:
                        rows.append(
                            (client, episode, episode_id, seed, step, action, nan)
                            + (nan,) * 6
                            + ("", False, False, 0, error, _floats(sent), "")
                        )
                        return (
                            rows,
                            episodes,
                            f"{consecutive_errors} steps in a row got no action; last: {exc}",
                        )
                else:
                    arrived = time.perf_counter_ns()
                    consecutive_errors = 0
                    error = ""
                    action = answer.action
                    rtt_us = rtt_ns / 1e3
                    server_us, backend_us, chip_us, energy_uj, ticks = _timing(answer.timing)
                    backend, fallback = answer.backend, answer.fallback
                    q_values = answer.q_values
                late = bool(period_ns) and arrived - period_start > period_ns
                if view is not None:  # the state the policy saw, before the step
                    view.step(client=client, step=client_step, episode=episode, observation=sent,
                              frame=env.render(), answer=answer, rtt_us=rtt_us)  # fmt: skip
                client_step += 1
                observation, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                rows.append(
                    (
                        client,
                        episode,
                        episode_id,
                        seed,
                        step,
                        action,
                        float(reward),
                        rtt_us,
                        server_us,
                        backend_us,
                        chip_us,
                        energy_uj,
                        ticks,
                        backend,
                        fallback,
                        late,
                        retries,
                        error,
                        _floats(sent),
                        _floats(q_values),
                    )
                )
                step += 1
                done = terminated or truncated
                if period_ns:
                    next_start = period_start + period_ns
                    now = time.perf_counter_ns()
                    if next_start < now:  # late: restart the schedule, don't burst
                        next_start = now
                pending_steps += 1
                if progress is not None and (pending_steps >= 50 or done):
                    progress(pending_steps, int(done))
                    pending_steps = 0
            episodes.append(Episode(client, episode, seed, step, total, bool(terminated)))
    finally:
        policy.close()
        env.close()
    return rows, episodes, None


def open_view(cfg: LoopConfig, model_info: dict[str, Any] | None = None) -> Any:
    """The Rerun view ``cfg.view`` asks for (:class:`clients.view.LoopView`), or None."""
    if cfg.view is None:
        return None
    from clients.view import LoopView, parse_target

    info = model_info or {}
    return LoopView(
        parse_target(cfg.view, cfg.view_port),
        env_id=cfg.env_id,
        run_id=cfg.run_id,
        clients=cfg.clients,
        observation_size=info.get("observation_size"),
        input_size=info.get("input_size"),
    )


def run_loops(
    cfg: LoopConfig,
    progress: Callable[[int, int], None] | None = None,
    view: Any = None,
) -> LoopResult:
    """Run ``cfg.clients`` loops at once and gather their steps (ordered by client).

    ``view``: an open :class:`clients.view.LoopView` (else one is opened when
    ``cfg.view`` asks for it); a view opened here is closed here."""
    result = LoopResult(config=cfg)
    own_view = view is None and cfg.view is not None
    if own_view:
        view = open_view(cfg)
    if view is not None:
        result.view = view.where
    try:
        _run_loops(cfg, result, progress, view)
    finally:
        if own_view:
            view.close()
    return result


def _run_loops(
    cfg: LoopConfig,
    result: LoopResult,
    progress: Callable[[int, int], None] | None,
    view: Any,
) -> None:
    stop = threading.Event()
    # Imports and set-up objects live for the whole run: freeze them so a full cyclic
    # GC (tens of ms with gymnasium, numpy and friends loaded) never stalls a step.
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    if cfg.clients == 1:
        outcomes = [run_client(cfg, 0, progress, stop, view)]
    else:
        with ThreadPoolExecutor(max_workers=cfg.clients, thread_name_prefix="s2loop-client") as ex:
            futures = [
                ex.submit(run_client, cfg, k, progress, stop, view) for k in range(cfg.clients)
            ]
            try:
                outcomes = [f.result() for f in futures]
            except BaseException:
                stop.set()  # Ctrl-C or a crash in one loop: let the others end
                raise
    result.wall_s = time.perf_counter() - t0
    for k, (rows, episodes, aborted) in enumerate(outcomes):
        result.rows.extend(rows)
        result.episodes.extend(episodes)
        if aborted:
            result.aborted.append(f"client {k}: {aborted}")
