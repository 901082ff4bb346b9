"""``s2loop bench ...``: a typer sub-app. A benchmark's options are the fields of its
config dataclass (``s2loop.commands.generated``: tyro reads them, with their comments as
help); imports stay inside the command bodies."""

from __future__ import annotations

from typing import Any

import typer

from s2loop.commands import command_line, generated

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks (long measurements; figures depend on the machine and its load).",
    no_args_is_help=True,
)


def _quick(config_type: type, args: list[str]):
    """A bench config's presets: ``--quick`` among the arguments picks the quick one."""
    return config_type.make(quick="--quick" in args)


def _one_thread() -> None:
    """One thread per process for every measurement (numba, BLAS), unless set already."""
    import os

    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def _bench(name: str, config: str, preset: Any = _quick) -> Any:
    """``s2loop bench NAME``, its options the fields of ``config``."""
    return generated(
        bench_app, name, config, prog=f"s2loop bench {name}", preset=preset, setup=_one_thread
    )


@_bench("emulator", "bench.emulator:EmulatorBenchConfig")
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


@_bench("suite", "bench.suite:SuiteConfig")
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


def _page(page: Any, measure: Any, cfg: Any) -> None:
    """``measure(cfg, command, log)`` -> report, written as the page ``page.MD_NAME``
    (``page.markdown(report)``) and ``page.JSON_NAME`` in ``cfg.out``; says what it wrote."""
    from bench.common import write_page

    report = measure(cfg, command=command_line(), log=typer.echo)
    markdown = page.markdown(report)
    for path in write_page(cfg.out, page.MD_NAME, markdown, page.JSON_NAME, report):
        typer.echo(f"wrote {path}")


@_bench("record", "bench.record:RecordBenchConfig")
def _record(cfg) -> None:
    """The flight recorder's cost: /v1/act with and without it, rotations, bytes per
    million answers, rows lost on a graceful stop, replay speed. Writes OUT/RECORD.md."""
    import bench.record as page

    _page(page, page.run_record_bench, cfg)


@_bench("trace", "bench.trace:TraceBenchConfig")
def _trace(cfg) -> None:
    """What a spike trace costs: /v1/act with and without "trace": true (HTTP, TCP) and
    the emulator alone, traced and not. Writes OUT/TRACE.md."""
    import bench.trace as page

    _page(page, page.run_trace_bench, cfg)


@_bench("fleet", "bench.fleet:FleetConfig")
def _fleet(cfg) -> None:
    """Coalescing on a (modelled) board, HAProxy in front of replicas (latency, failover),
    one replica's throughput curve and the capacity plan. Writes OUT/FLEET.md."""
    import bench.fleet as page

    _page(page, page.run_fleet_bench, cfg)


@_bench("training", "bench.training:TrainingBenchConfig", preset=None)
def _training(cfg) -> None:
    """dsqn's gradient step and acting forward (reference tick loop vs fast forward) and
    env steps/s of dsqn against the float teacher, in the same run."""
    from bench.training import run, write

    typer.echo(f"wrote {write(run(quick=cfg.quick), cfg.out)}")


@_bench("recipes", "bench.recipes:RecipesConfig")
def _recipes(cfg) -> None:
    """The reproduction page OUT/RECIPES.md with a plot, from the models of a sweep
    (`s2loop sweep --out DIR`, then `s2loop bench recipes --results DIR/results.parquet`)."""
    if not cfg.results.is_file():
        raise typer.BadParameter(
            f"{cfg.results} does not exist: run `s2loop sweep --out DIR` first",
            param_hint="--results",
        )
    from bench.recipes import run_recipes, write_recipes

    report = run_recipes(cfg, command=command_line(), log=typer.echo)
    for path in write_recipes(report, cfg.out):  # the page, its figures and a plot
        typer.echo(f"wrote {path}")


_bench("all", "bench.suite:SuiteConfig")(_suite)  # the same as `suite`


@_bench("tcp-floor", "bench.tcp_floor:TcpFloorConfig", preset=None)
def _tcp_floor(cfg) -> None:
    """The TCP door against the framed echo floor, in the same runs: p50 of a bare socket
    and of PolicyClient over the floor's (issue 21's targets: <= 2.5x and <= 3.0x).
    Writes OUT/TCP_FLOOR.md and OUT/tcp_floor.json."""
    import bench.tcp_floor as page

    _page(page, page.run, cfg)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
