"""``s2loop demo``: start a server on loopback, drive both tasks over both transports.

The server is a separate process (``python -m s2loop.cli serve``), reached over
the network like any other: the demo measures what a robot on the same machine
would see.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from clients.loop import LoopConfig, LoopResult, model_name_for
from s2loop_client.server import ServerNotReady, list_models, wait_ready

DEMO_ENVS = ("CartPole-v1", "Acrobot-v1")
DEMO_TRANSPORTS = ("http", "ws")


class ServerFailed(RuntimeError):
    """The server process died or never became ready (message carries its log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def shipped_models_dir() -> Path:
    """``models/`` of this checkout (next to the ``clients`` package)."""
    return Path(__file__).resolve().parent.parent / "models"


class ServerProcess:
    """``s2loop serve`` as a child process; its stdout and stderr go to ``log_path``.

    Use as a context manager: ``stop()`` runs on exit (SIGINT, then SIGKILL
    after ``stop_timeout_s``)."""

    def __init__(
        self,
        models_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        backend: str = "emulator",
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        stop_timeout_s: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.host = host
        self.port = port or free_port(host)
        self.backend = backend
        self.extra_args = extra_args or []
        self.stop_timeout_s = stop_timeout_s
        self.log_path = log_path
        self.verify = verify  # TLS: the CA to trust (with --ssl-certfile in extra_args)
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if "--ssl-certfile" in self.extra_args else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "s2loop.cli",
            "serve",
            "--models",
            str(self.models_dir),
            "--backend",
            self.backend,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def start(self) -> ServerProcess:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="s2loop-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # its own session: a Ctrl-C in the terminal reaches the demo, which then stops
        # the server in order (a second SIGINT would make uvicorn skip its shutdown)
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        return self

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def wait_ready(self, timeout_s: float = 180.0) -> dict[str, Any]:
        """Poll ``/readyz`` until 200; raise :class:`ServerFailed` if the process
        exits first or the time runs out (with the server's log tail)."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerFailed(
                    f"the server exited with code {rc} before it was ready.\n"
                    f"command: {' '.join(self.command)}\n"
                    f"its output ({self.log_path}):\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            try:
                wait_s = min(1.0, max(remaining, 0.0))
                return wait_ready(self.url, timeout_s=wait_s, poll_s=0.1, verify=self.verify)
            except ServerNotReady as exc:
                if remaining <= 0:
                    self.stop()
                    raise ServerFailed(
                        f"the server was not ready after {timeout_s:g}s ({exc}).\n"
                        f"its output ({self.log_path}):\n{self.log_tail()}"
                    ) from None

    def stop(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL after the timeout."""
        proc = self.proc
        rc = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class DemoConfig:
    """What ``s2loop demo`` runs: every env x transport against a server it starts with
    the models on the emulator."""

    episodes: int = 3  # episodes per task and transport
    out: Path = Path("demo-out")  # results folder
    port: int = 0  # server port on 127.0.0.1 (0: free)
    models: Path | None = None  # folder of .s2l models (default: the shipped models/)
    rate_hz: float = 100.0  # control rate for pacing and deadline misses (0: no pacing)
    seed: int = 0  # episode i is reset with seed SEED + i
    ready_timeout: float = 180.0  # seconds to wait for /readyz
    progress: bool = True  # show progress bars
    envs: tuple[str, ...] = DEMO_ENVS  # Gymnasium ids, each served by its model
    transports: tuple[str, ...] = DEMO_TRANSPORTS  # http, ws and/or tcp

    def check(self) -> None:
        """``ValueError`` naming the option out of its range."""
        for name, ok in (
            ("episodes", self.episodes >= 1),
            ("port", 0 <= self.port <= 65535),
            ("rate-hz", self.rate_hz >= 0),
            ("ready-timeout", self.ready_timeout >= 1),
        ):
            if not ok:
                raise ValueError(
                    f"--{name} is out of range: {getattr(self, name.replace('-', '_'))}"
                )


@dataclass
class DemoRun:
    label: str
    result: LoopResult
    summary: dict[str, Any]


@dataclass
class DemoOutcome:
    runs: list[DemoRun] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    server_exit_code: int | None = None
    server_log: Path | None = None


def run_demo(
    cfg: DemoConfig, *, console: Any = None, server_args: list[str] | None = None
) -> DemoOutcome:
    """Serve ``cfg.models`` on the emulator and run every env x transport.

    Results go to ``cfg.out/<model>-<transport>/`` plus combined plots and
    ``summary.json`` in ``cfg.out``. Envs whose model is not served are skipped."""
    import json

    from clients.report import plot_latency, plot_returns
    from clients.session import run_and_report

    models_dir = Path(cfg.models) if cfg.models is not None else shipped_models_dir()
    out_dir, rate_hz = cfg.out, cfg.rate_hz or None
    if not sorted(models_dir.glob("*.s2l")):
        raise ServerFailed(
            f"no model artifacts (*.s2l) in {models_dir}. The trained models ship as "
            "models/cartpole.s2l and models/acrobot.s2l; pass --models DIR to use others."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    outcome = DemoOutcome(server_log=out_dir / "server.log")
    say = console.print if console is not None else print
    server = ServerProcess(
        models_dir, port=cfg.port, log_path=outcome.server_log, extra_args=server_args
    )
    say(f"starting the server on {server.url} with {models_dir} (emulator) ...")
    with server:
        t0 = time.monotonic()
        server.wait_ready(cfg.ready_timeout)
        say(f"server ready after {time.monotonic() - t0:.1f}s")
        served = {m["name"] for m in list_models(server.url)}
        for env_id in cfg.envs:
            model = model_name_for(env_id)
            if model not in served:
                outcome.skipped.append(f"{env_id}: no model named {model!r} in {models_dir}")
                continue
            for transport in cfg.transports:
                loop = LoopConfig(
                    env_id=env_id,
                    url=server.url,
                    model=model,
                    episodes=cfg.episodes,
                    seed=cfg.seed,
                    transport=transport,
                    rate_hz=rate_hz,
                )
                label = f"{model} {transport}"
                result, summary = run_and_report(
                    loop,
                    out_dir / f"{model}-{transport}",
                    console=console,
                    progress=cfg.progress,
                    label=label,
                )
                outcome.runs.append(DemoRun(label, result, summary))
    outcome.server_exit_code = server.proc.returncode if server.proc else None
    if outcome.runs:
        runs = [(r.label, r.result, r.summary) for r in outcome.runs]
        plot_latency(runs, out_dir / "latency.png")
        plot_returns(runs, out_dir / "returns.png")
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "runs": [r.summary for r in outcome.runs],
                "skipped": outcome.skipped,
                "server_exit_code": outcome.server_exit_code,
            },
            indent=2,
        )
        + "\n"
    )
    return outcome
