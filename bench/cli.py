"""``s2loop bench ...``: a typer sub-app; add sibling benchmarks with
``@bench_app.command("name")`` (imports stay inside the command bodies)."""

from __future__ import annotations

from pathlib import Path

import typer

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks (long measurements; figures depend on the machine and its load).",
    no_args_is_help=True,
)


@bench_app.command("emulator")
def emulator(
    quick: bool = typer.Option(False, "--quick", help="fewer calls, shorter runs"),
    out: Path | None = typer.Option(None, "--out", help="write the JSON report here"),
    repeats: int | None = typer.Option(None, help="repeats per measurement (best is reported)"),
    batch_sizes: str = typer.Option("1,16,256,4096", help="comma-separated batch sizes"),
    cpu: int | None = typer.Option(None, help="pin the process to this CPU"),
    model: str | None = typer.Option(None, help="artifact name/path (default: random 2x64)"),
) -> None:
    """Single-observation latency and batched throughput of the emulator on one core."""
    import json
    import os

    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from bench.emulator import EmulatorBenchConfig, print_report, run_emulator_benchmark

    cfg = EmulatorBenchConfig.make(
        quick=quick,
        repeats=repeats,
        batch_sizes=tuple(int(b) for b in batch_sizes.split(",") if b.strip()),
        cpu=cpu,
        model=model,
    )
    report = run_emulator_benchmark(cfg)
    print_report(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
