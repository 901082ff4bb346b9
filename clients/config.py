"""What ``s2loop run`` runs: the typed loop configuration, standard library only (the
command line is generated from it at start-up without importing the SDK or Gymnasium).

A field with :func:`cli` metadata is an option of ``s2loop run`` (``clients.cli``), with
that help, the field's default and type; other fields are for programs and tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from s2loop_client import PolicyClient

TRANSPORTS = ("http", "ws", "tcp")
DEFAULT_URL = "http://127.0.0.1:8000"


def cli(help: str, **option: Any) -> dict[str, Any]:
    """Field metadata that makes a config field an option of the generated command line:
    its ``help``, and ``flag`` (the option's name, default ``--field-name``), ``envvar``,
    ``min``/``max`` or other ``typer.Option`` settings (``clients.cli.options_from``)."""
    return {"cli": {"help": help, **option}}


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of a busy or unavailable server (429, 503): attempt ``k`` waits the
    server's ``retry_after_ms``, else ``min(backoff_max_s, backoff_s * 2**k)``."""

    retries: int = field(
        default=3,
        metadata=cli(
            "retries of a step answered 429 or 503 (after its retry_after_ms, at most 2 s)",
            flag="--retries", min=0,
        ),
    )  # fmt: skip
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0

    def delay(self, attempt: int, retry_after_ms: int | None = None) -> float:
        wait = self.backoff_s * (2**attempt) if retry_after_ms is None else retry_after_ms / 1e3
        return max(0.0, min(self.backoff_max_s, wait))


def model_name_for(env_id: str) -> str:
    """Default model name of an environment: ``CartPole-v1`` -> ``cartpole``."""
    return env_id.split("-v")[0].split("/")[-1].lower()


@dataclass
class LoopConfig:
    """What to run. ``rate_hz`` None or 0: as fast as answers come (no pacing).

    ``s2loop run`` is generated from these fields: each field with :func:`cli` metadata
    is an option with that help, this default and this type (``clients.cli``)."""

    env_id: str = field(
        default="CartPole-v1", metadata=cli("Gymnasium id: CartPole-v1, Acrobot-v1", flag="--env")
    )
    url: str = field(
        default=DEFAULT_URL,
        metadata=cli("base URL of the s2loop service", envvar="S2LOOP_SERVER_URL"),
    )
    model: str | None = field(
        default=None,
        metadata=cli("model name on the server (default: from --env, CartPole-v1 -> cartpole)"),
    )
    episodes: int = field(default=5, metadata=cli("episodes per client", min=1))
    seed: int = field(default=0, metadata=cli("episode i is reset with seed SEED + i"))
    transport: str = field(
        default="http",
        metadata=cli("http (keep-alive POST /v1/act), ws, or tcp (then --url tcp://HOST:PORT)"),
    )
    codec: str = field(default="json", metadata=cli("json or msgpack (tcp: always msgpack)"))
    api_key: str | None = field(
        default=None,
        metadata=cli("API key, when the server has keys on", envvar="S2LOOP_API_KEY"),
    )
    rate_hz: float | None = field(
        default=None,
        metadata=cli("control rate: pace steps and count late actions (0: no pacing)", min=0.0),
    )
    clients: int = field(
        default=1, metadata=cli("control loops running at once (load test)", min=1)
    )
    timeout_s: float = field(
        default=2.0, metadata=cli("seconds to wait for one action", flag="--timeout", min=0.001)
    )
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_consecutive_errors: int = 5
    max_steps: int | None = field(
        default=None,
        metadata=cli("cut episodes at this many steps (default: the env's limit)", min=1),
    )
    #: names this run's episodes for the server's flight recorder (``RUN-EPISODE``)
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    #: log every step to Rerun: ``desktop`` (spawn the viewer), ``web`` (serve the web
    #: viewer on ``view_port``) or ``FILE.rrd`` (save a recording); needs the ``view`` extra
    view: str | None = field(
        default=None,
        metadata=cli(
            "log every step to Rerun: --view spawns the desktop viewer, --view web serves the "
            "web viewer (--view-port), --view FILE.rrd saves a recording "
            "(pip install 's2loop\\[view]')",
            metavar="[desktop|web|FILE.rrd]",
        ),
    )  # fmt: skip
    #: port of the web viewer (``view="web"``)
    view_port: int = field(
        default=9090, metadata=cli("port of the web viewer (--view web)", min=1, max=65535)
    )
    #: ask the server for each step's spike trace (logged to the view as /spikes/...)
    trace: bool = field(
        default=False,
        metadata=cli("ask for each step's spike trace (logged by --view as /spikes/...)"),
    )
    #: tests: make the loop's PolicyClient (e.g. on a MockTransport)
    policy_factory: Callable[[], PolicyClient] | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = model_name_for(self.env_id)
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.episodes < 1 or self.clients < 1:
            raise ValueError("episodes and clients must be at least 1")
        if self.rate_hz is not None and self.rate_hz < 0:
            raise ValueError("rate_hz must be positive (or 0 for no pacing)")
        if self.view is not None:
            from clients.view import parse_target

            parse_target(self.view, self.view_port)  # ValueError naming what it takes


@dataclass(frozen=True)
class RunCommand:
    """What ``s2loop run`` does around its loops (options beside :class:`LoopConfig`'s)."""

    out: Path | None = field(
        default=None, metadata=cli("results folder (default: runs/TIME-MODEL-TRANSPORT)")
    )
    wait: float = field(default=10.0, metadata=cli("seconds to wait for /readyz at start", min=0.0))
    progress: bool = field(default=True, metadata=cli("show a progress bar"))
