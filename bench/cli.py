"""``s2loop bench ...``: a typer sub-app; add sibling benchmarks with
``@bench_app.command("name")`` (imports stay inside the command bodies)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

BENCH_DIR = Path(__file__).resolve().parent

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


def suite(
    quick: bool = typer.Option(False, "--quick", help="fewer steps and rounds (about 1-2 min)"),
    out: Path = typer.Option(
        Path(__file__).resolve().parent,
        "--out",
        help="folder for RESULTS.md, results.json and the PNGs [default: bench/]",
    ),
    sections: str = typer.Option(
        "all", help="comma-separated: transport,backends,closed_loop,scaling,chip"
    ),
    models: Path | None = typer.Option(None, help="folder of *.s2l models [default: models/]"),
) -> None:
    """The whole performance suite in one run: transport vs a bare-FastAPI floor, emulator vs
    torch reference, closed-loop deadlines, client/worker scaling, chip estimates vs the
    reference paper. Writes OUT/RESULTS.md, OUT/results.json and OUT/*.png."""
    import os
    import shlex
    import sys

    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from bench.results import write_results
    from bench.suite import SECTIONS, SuiteConfig, run_suite

    chosen = SECTIONS if sections == "all" else tuple(s.strip() for s in sections.split(","))
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    cfg = SuiteConfig.make(quick=quick, sections=chosen, models_dir=models)
    command = shlex.join(["s2loop", *sys.argv[1:]])
    report = run_suite(cfg, command=command, log=typer.echo)
    for path in write_results(report, out):
        typer.echo(f"wrote {path}")


bench_app.command("suite")(suite)


def _quick(what: str) -> Any:
    return typer.Option(False, "--quick", help=what)


def _out(page: str) -> Any:
    return typer.Option(BENCH_DIR, "--out", help=f"folder for {page} [default: bench/]")


def _write_page(
    measure: Callable[[str], dict], write: Callable[..., list[Path]], out: Path
) -> None:
    """``measure(command)`` -> report, then ``write(report, out)``; says what it wrote."""
    import shlex
    import sys

    report = measure(shlex.join(["s2loop", *sys.argv[1:]]))
    for path in write(report, out):
        typer.echo(f"wrote {path}")


@bench_app.command("record")
def record(quick: bool = _quick("few requests (a smoke test)"), out: Path = _out("RECORD.md")):
    """The flight recorder's cost: /v1/act with and without it, rotations, bytes per
    million answers, rows lost on a graceful stop, replay speed. Writes OUT/RECORD.md."""
    from bench.record import RecordBenchConfig, run_record_bench, write_record

    cfg = RecordBenchConfig.make(quick)
    _write_page(lambda cmd: run_record_bench(cfg, command=cmd, log=typer.echo), write_record, out)


@bench_app.command("trace")
def trace(quick: bool = _quick("few requests (a smoke test)"), out: Path = _out("TRACE.md")):
    """What a spike trace costs: /v1/act with and without "trace": true (HTTP, TCP) and
    the emulator alone, traced and not. Writes OUT/TRACE.md."""
    from bench.trace import TraceBenchConfig, run_trace_bench, write_trace

    cfg = TraceBenchConfig.make(quick)
    _write_page(lambda cmd: run_trace_bench(cfg, command=cmd, log=typer.echo), write_trace, out)


@bench_app.command("tcp-floor")
def tcp_floor(
    floor: Path = typer.Option(
        Path("/work/shared/floors/tcp_echo.py"), help="the framed echo floor to run beside"
    ),
    rounds: int = typer.Option(20, min=1, help="interleaved rounds (one block per client)"),
    block: int = typer.Option(500, min=10, help="requests per client per round"),
    out: Path | None = typer.Option(None, help="also write the report here (JSON)"),
) -> None:
    """The TCP door against the framed echo floor in one run: p50 of a bare socket and of
    PolicyClient over the floor's (issue 21's targets: <= 2.5x and <= 3.0x)."""
    import json

    from bench.tcp_floor import measure

    report = measure(floor, rounds, block)
    text = json.dumps(report, indent=2)
    typer.echo(text)
    if out is not None:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")


@bench_app.command("training")
def training(
    quick: bool = typer.Option(False, "--quick", help="shorter runs (about a minute)"),
    out: Path = typer.Option(
        Path(__file__).resolve().parent, "--out", help="folder for TRAINING.md [default: bench/]"
    ),
) -> None:
    """dsqn's gradient step and acting forward (reference tick loop vs fast forward) and
    env steps/s of dsqn against the float teacher, in the same run."""
    from bench.training import run, write

    typer.echo(f"wrote {write(run(quick=quick), out)}")


@bench_app.command("fleet")
def fleet(quick: bool = _quick("short runs (a smoke test)"), out: Path = _out("FLEET.md")):
    """Coalescing on a (modelled) board, HAProxy in front of replicas (latency, failover),
    one replica's throughput curve and the capacity plan. Writes OUT/FLEET.md."""
    from bench.fleet import FleetConfig, run_fleet_bench, write_fleet

    cfg = FleetConfig.make(quick)
    _write_page(lambda cmd: run_fleet_bench(cfg, command=cmd, log=typer.echo), write_fleet, out)


@bench_app.command("recipes")
def recipes(
    results: Path = typer.Option(
        Path("runs/sweep/results.parquet"),
        "--results",
        help="results.parquet of an `s2loop sweep` (its trials' models are measured)",
    ),
    quick: bool = typer.Option(False, "--quick", help="fewer extra-metric episodes (a test)"),
    out: Path = typer.Option(
        Path(__file__).resolve().parent,
        "--out",
        help="folder for RECIPES.md, recipes.json and recipes.png [default: bench/]",
    ),
    tick_sweep: bool = typer.Option(True, help="also sweep input ticks of the shipped models"),
) -> None:
    """The reproduction page OUT/RECIPES.md with a plot, from the models of a sweep
    (`s2loop sweep --out DIR`, then `s2loop bench recipes --results DIR/results.parquet`)."""
    import shlex
    import sys

    if not results.is_file():
        raise typer.BadParameter(
            f"{results} does not exist: run `s2loop sweep --out DIR` first", param_hint="--results"
        )
    from bench.recipes import RecipesConfig, run_recipes, write_recipes

    cfg = RecipesConfig.make(quick=quick, results=results, tick_sweep=tick_sweep)
    command = shlex.join(["s2loop", *sys.argv[1:]])
    report = run_recipes(cfg, command=command, log=typer.echo)
    for path in write_recipes(report, out):
        typer.echo(f"wrote {path}")


bench_app.command("all", help="Same as `suite`.")(suite)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
