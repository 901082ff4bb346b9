"""``s2loop bench ...``: a typer sub-app; add sibling benchmarks with
``@bench_app.command("name")`` (imports stay inside the command bodies)."""

from __future__ import annotations

from pathlib import Path

import typer

from bench import BENCH_DIR
from s2loop.commands import command_line, generated

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks (long measurements; figures depend on the machine and its load).",
    no_args_is_help=True,
)


def _quick_preset(config_type: type):
    """The config's presets: ``--quick`` among the arguments picks the quick one."""
    return lambda args: config_type.make(quick="--quick" in args)


def _emulator(cfg) -> None:
    """Single-observation latency and batched throughput of the emulator on one core."""
    import json

    from bench.emulator import print_report, run_emulator_benchmark

    report = run_emulator_benchmark(cfg)
    print_report(report)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {cfg.out}")


def _suite(cfg) -> None:
    """The whole performance suite in one run: transport vs a bare-FastAPI floor, emulator vs
    torch reference, closed-loop deadlines, client/worker scaling, chip estimates vs the
    reference paper. Writes OUT/RESULTS.md, OUT/results.json and OUT/*.png."""
    from dataclasses import replace

    from bench.results import write_results
    from bench.suite import SECTIONS, run_suite

    # "transport,backends" (one word) or "transport backends"; "all": every section
    chosen = tuple(s.strip() for part in cfg.sections for s in part.split(",") if s.strip())
    if "all" in chosen:
        chosen = SECTIONS
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    report = run_suite(replace(cfg, sections=chosen), command=command_line(), log=typer.echo)
    for path in write_results(report, cfg.out):
        typer.echo(f"wrote {path}")


def _page(measure, write, cfg) -> None:
    """``measure(cfg, command, log)`` -> report, then ``write(report, cfg.out)``; says
    what it wrote."""
    report = measure(cfg, command=command_line(), log=typer.echo)
    for path in write(report, cfg.out):
        typer.echo(f"wrote {path}")


def _record(cfg) -> None:
    """The flight recorder's cost: /v1/act with and without it, rotations, bytes per
    million answers, rows lost on a graceful stop, replay speed. Writes OUT/RECORD.md."""
    from bench.record import run_record_bench, write_record

    _page(run_record_bench, write_record, cfg)


def _trace(cfg) -> None:
    """What a spike trace costs: /v1/act with and without "trace": true (HTTP, TCP) and
    the emulator alone, traced and not. Writes OUT/TRACE.md."""
    from bench.trace import run_trace_bench, write_trace

    _page(run_trace_bench, write_trace, cfg)


def _fleet(cfg) -> None:
    """Coalescing on a (modelled) board, HAProxy in front of replicas (latency, failover),
    one replica's throughput curve and the capacity plan. Writes OUT/FLEET.md."""
    from bench.fleet import run_fleet_bench, write_fleet

    _page(run_fleet_bench, write_fleet, cfg)


def _training(cfg) -> None:
    """dsqn's gradient step and acting forward (reference tick loop vs fast forward) and
    env steps/s of dsqn against the float teacher, in the same run."""
    from bench.training import run, write

    typer.echo(f"wrote {write(run(quick=cfg.quick), cfg.out)}")


def _recipes(cfg) -> None:
    """The reproduction page OUT/RECIPES.md with a plot, from the models of a sweep
    (`s2loop sweep --out DIR`, then `s2loop bench recipes --results DIR/results.parquet`)."""
    if not cfg.results.is_file():
        raise typer.BadParameter(
            f"{cfg.results} does not exist: run `s2loop sweep --out DIR` first", param_hint="--results"
        )
    from bench.recipes import run_recipes, write_recipes

    _page(run_recipes, write_recipes, cfg)


def _register_generated() -> None:
    """The commands whose options are their config's fields (imported here: a config
    module is light, its measurements import the heavy parts inside)."""
    import os

    # one thread per process for every measurement (numba, BLAS), unless set already
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


@bench_app.command("tcp-floor")
def tcp_floor(
    floor: Path = typer.Option(
        Path("/work/shared/floors/tcp_echo.py"), help="the framed echo floor to run beside"
    ),
    runs: int = typer.Option(3, min=1, help="runs, each with both servers started afresh"),
    rounds: int = typer.Option(20, min=1, help="interleaved rounds (one block per client)"),
    block: int = typer.Option(500, min=10, help="requests per client per round"),
    out: Path = _out("TCP_FLOOR.md"),
) -> None:
    """The TCP door against the framed echo floor, in the same runs: p50 of a bare socket
    and of PolicyClient over the floor's (issue 21's targets: <= 2.5x and <= 3.0x).
    Writes OUT/TCP_FLOOR.md and OUT/tcp_floor.json."""
    from bench.tcp_floor import run, write

    _write_page(lambda cmd: run(cmd, floor, runs, rounds, block, log=typer.echo), write, out)
