"""``s2loop run`` and ``s2loop demo`` (imports stay inside the commands)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

DEFAULT_URL = "http://127.0.0.1:8000"


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        env: str = typer.Option(
            "CartPole-v1", "--env", help="Gymnasium id: CartPole-v1, Acrobot-v1"
        ),
        episodes: int = typer.Option(5, min=1, help="episodes per client"),
        seed: int = typer.Option(0, help="episode i is reset with seed SEED + i"),
        url: str = typer.Option(
            DEFAULT_URL, envvar="S2LOOP_SERVER_URL", help="base URL of the s2loop service"
        ),
        model: str | None = typer.Option(
            None, help="model name on the server (default: from --env, CartPole-v1 -> cartpole)"
        ),
        transport: str = typer.Option(
            "http", help="http (keep-alive POST /v1/act), ws, or tcp (then --url tcp://HOST:PORT)"
        ),
        codec: str = typer.Option("json", help="json or msgpack (tcp: always msgpack)"),
        api_key: str | None = typer.Option(
            None, envvar="S2LOOP_API_KEY", help="API key, when the server has keys on"
        ),
        rate_hz: float = typer.Option(
            0.0, min=0.0, help="control rate: pace steps and count late actions (0: no pacing)"
        ),
        clients: int = typer.Option(1, min=1, help="control loops running at once (load test)"),
        out: Path | None = typer.Option(
            None, help="results folder (default: runs/TIME-MODEL-TRANSPORT)"
        ),
        timeout: float = typer.Option(2.0, min=0.001, help="seconds to wait for one action"),
        retries: int = typer.Option(
            3,
            min=0,
            help="retries of a step answered 429 or 503 (after its retry_after_ms, at most 2 s)",
        ),
        max_steps: int | None = typer.Option(
            None, min=1, help="cut episodes at this many steps (default: the env's limit)"
        ),
        wait: float = typer.Option(10.0, min=0.0, help="seconds to wait for /readyz at start"),
        progress: bool = typer.Option(True, help="show a progress bar"),
        view: str | None = typer.Option(
            None,
            "--view",
            flag_value="desktop",
            is_flag=False,
            metavar="[web|FILE.rrd]",
            help="log every step to Rerun: --view spawns the desktop viewer, --view web serves "
            "the web viewer (--view-port), --view FILE.rrd saves a recording "
            "(pip install 's2loop\\[view]')",
        ),
        view_port: int = typer.Option(
            9090, min=1, max=65535, help="port of the web viewer (--view web)"
        ),
        trace: bool = typer.Option(
            False, help="ask for each step's spike trace (logged by --view as /spikes/...)"
        ),
    ) -> None:
        """Drive seeded episodes through the service; write steps.csv, summary.json, PNGs."""
        from rich.console import Console

        from clients.loop import LoopConfig, RetryPolicy
        from clients.report import summary_table
        from clients.session import PreflightError, run_and_report
        from clients.view import ViewUnavailable

        console = Console()
        try:
            cfg = LoopConfig(
                env_id=env,
                url=url,
                model=model,
                episodes=episodes,
                seed=seed,
                transport=transport,
                codec=codec,
                api_key=api_key,
                rate_hz=rate_hz or None,
                clients=clients,
                timeout_s=timeout,
                retry=RetryPolicy(retries=retries),
                max_steps=max_steps,
                view=view,
                view_port=view_port,
                trace=trace,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{stamp}-{cfg.model}-{transport}"
        try:
            _, summary = run_and_report(
                cfg, out, console=console, progress=progress, wait_s=wait, hold_view=True
            )
        except (PreflightError, ViewUnavailable) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        console.print(summary_table([summary]))
        if clients > 1:
            console.print(
                f"{clients} clients: {summary['steps']} steps in {summary['wall_s']:.2f}s = "
                f"{summary['steps_per_s']:,.0f} steps/s aggregate, "
                f"{summary['error_steps']} steps without an action"
            )
        console.print(f"results in {out}/ (steps.csv, summary.json, latency.png, returns.png)")
        if summary["aborted"]:
            for line in summary["aborted"]:
                console.print(f"[red]aborted:[/] {line}")
            raise typer.Exit(1)

    @app.command("demo")
    def demo(
        episodes: int = typer.Option(3, min=1, help="episodes per task and transport"),
        out: Path = typer.Option(Path("demo-out"), help="results folder"),
        port: int = typer.Option(0, min=0, max=65535, help="server port on 127.0.0.1 (0: free)"),
        models: Path | None = typer.Option(
            None, help="folder of .s2l models (default: the shipped models/)"
        ),
        rate_hz: float = typer.Option(
            100.0, min=0.0, help="control rate for pacing and deadline misses (0: no pacing)"
        ),
        seed: int = typer.Option(0, help="episode i is reset with seed SEED + i"),
        ready_timeout: float = typer.Option(180.0, min=1.0, help="seconds to wait for /readyz"),
        progress: bool = typer.Option(True, help="show progress bars"),
    ) -> None:
        """Start a server with the shipped models on the emulator, run CartPole-v1 and
        Acrobot-v1 over HTTP and WebSocket, print the table, write plots, stop the server."""
        from rich.console import Console

        from clients.demo import ServerFailed, run_demo, shipped_models_dir
        from clients.report import summary_table
        from clients.session import PreflightError

        console = Console()
        try:
            outcome = run_demo(
                models_dir=models or shipped_models_dir(),
                out_dir=out,
                episodes=episodes,
                seed=seed,
                port=port,
                rate_hz=rate_hz or None,
                ready_timeout_s=ready_timeout,
                console=console,
                progress=progress,
            )
        except (ServerFailed, PreflightError) as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            raise typer.Exit(1) from None
        for line in outcome.skipped:
            console.print(f"[yellow]skipped[/] {line}")
        if not outcome.runs:
            console.print("[red]nothing ran[/]")
            raise typer.Exit(1)
        console.print(summary_table([r.summary for r in outcome.runs], title="s2loop demo"))
        for r in outcome.runs:
            s = r.summary
            if s["solved"] is not None:
                verdict = "solved" if s["solved"] else "NOT solved"
                console.print(
                    f"{s['env_id']} over {s['transport']}: {verdict} "
                    f"(mean return {s['returns']['mean']:.1f}, threshold {s['reward_threshold']:g})"
                )
        console.print(
            f"plots: {out}/latency.png, {out}/returns.png; per run: {out}/<model>-<transport>/; "
            f"server log: {outcome.server_log} (exit code {outcome.server_exit_code})"
        )
        if any(r.summary["aborted"] for r in outcome.runs):
            raise typer.Exit(1)
