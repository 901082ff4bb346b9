"""One measured run against a service: check it is ready and serves the model,
drive the loops under a progress bar, write the results."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from clients.loop import LoopConfig, LoopResult, open_view, run_loops
from clients.report import summarize, write_run
from s2loop_client.server import ServerNotReady, base_url, list_models, wait_ready


class PreflightError(RuntimeError):
    """The service is unreachable, not ready, or does not serve what the run needs."""


def _tcp_info(cfg: LoopConfig, wait_s: float) -> dict[str, Any]:
    """The model's description over the TCP endpoint (``{"model_info": NAME}``), waiting
    up to ``wait_s`` for the endpoint to accept connections."""
    from s2loop_client import PolicyClient
    from s2loop_client.errors import ActError, ConnectionFailed

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with PolicyClient(cfg.url, cfg.model, transport="tcp", api_key=cfg.api_key) as p:
                return p.model_info()
        except ConnectionFailed as exc:
            if time.monotonic() >= deadline:
                raise PreflightError(
                    f"no s2loop TCP endpoint answers at {cfg.url} ({exc.message}); start the "
                    "server with --tcp-bind HOST:PORT or point --url at a running one"
                ) from None
            time.sleep(0.2)
        except ActError as exc:  # unknown model (the message lists the served ones), key, ...
            raise PreflightError(f"the server at {cfg.url} refused: {exc.message}") from None


def _http_info(cfg: LoopConfig, wait_s: float) -> dict[str, Any]:
    try:
        wait_ready(cfg.url, timeout_s=wait_s)
    except ServerNotReady as exc:
        raise PreflightError(str(exc)) from None
    try:
        models = list_models(cfg.url, api_key=cfg.api_key)
    except Exception as exc:
        raise PreflightError(f"cannot list the server's models: {exc}") from None
    by_name = {m.get("name"): m for m in models}
    if cfg.model not in by_name:
        raise PreflightError(
            f"the server at {base_url(cfg.url)} does not serve a model named {cfg.model!r}; "
            f"it serves {sorted(n for n in by_name if n)} (choose one with --model)"
        )
    return by_name[cfg.model]


def preflight(cfg: LoopConfig, wait_s: float) -> dict[str, Any]:
    """Wait for the server (``/readyz``, or the TCP endpoint); check it serves the model
    and that the model fits the environment. Returns the model's description."""
    if cfg.policy_factory is not None:
        return {}  # a test's own client: the first step tells
    info = _tcp_info(cfg, wait_s) if cfg.transport == "tcp" else _http_info(cfg, wait_s)
    import gymnasium as gym

    env = gym.make(cfg.env_id)
    env_obs = env.observation_space.shape
    env.close()
    if env_obs and int(info["observation_size"]) != int(env_obs[0]):
        raise PreflightError(
            f"model {cfg.model!r} takes {info['observation_size']} observations but "
            f"{cfg.env_id} gives {env_obs[0]}"
        )
    return info


def run_and_report(
    cfg: LoopConfig,
    out_dir: Path,
    *,
    console: Any = None,
    progress: bool = True,
    wait_s: float = 10.0,
    label: str | None = None,
    hold_view: bool = False,
) -> tuple[LoopResult, dict[str, Any]]:
    """Preflight, run with a progress bar, write CSV/JSON/PNGs to ``out_dir``.

    With ``cfg.view`` each step is logged to Rerun; ``hold_view``: a web viewer keeps
    serving after the run until Ctrl-C (else the process's end would take it away).
    Raises :class:`PreflightError` before any step if the service can't be used."""
    model_info = preflight(cfg, wait_s)
    label = label or f"{cfg.model} {cfg.transport}"
    view = open_view(cfg, model_info)
    try:
        if view is not None and console is not None:
            console.print(f"Rerun view: {view.where}")
        result = _run(cfg, console, progress, label, view)
        summary = summarize(result)
        summary["model_info"] = model_info
        write_run(result, summary, out_dir, label)
        if view is not None and hold_view and view.target.kind == "web":
            if console is not None:
                console.print(f"results in {out_dir}/; the web viewer serves on at {view.where}")
                console.print("Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:  # sleeps, so that Ctrl-C is seen at once
                    time.sleep(1)
    finally:
        if view is not None:
            view.close()
    return result, summary


def _run(cfg: LoopConfig, console: Any, progress: bool, label: str, view: Any) -> LoopResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    if progress:
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes · {task.fields[steps]} steps"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        task = bar.add_task(label, total=cfg.episodes * cfg.clients, steps=0)
        lock = threading.Lock()
        steps = [0]

        def advance(new_steps: int, new_episodes: int) -> None:
            with lock:
                steps[0] += new_steps
                bar.update(task, advance=new_episodes, steps=steps[0])

        with bar:
            return run_loops(cfg, progress=advance, view=view)
    return run_loops(cfg, view=view)
