"""``s2loop bench record``: what the flight recorder costs, ``bench/RECORD.md``.

Two ``s2loop serve`` processes, one recording (small files, so that rotations happen
during the run) and one not, measured in interleaved blocks by the same bare HTTP
client: /v1/act p50 with and without recording, the round trips of requests that met
a file rotation, the bytes on disk per million answers, rows lost on a graceful stop
(every answer sent is counted), and replay speed of the recording on the emulator.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import BENCH_DIR

MD_NAME = "RECORD.md"
JSON_NAME = "record.json"


@dataclass
class RecordBenchConfig:
    """The flight recorder's cost (``s2loop bench record``)."""

    rounds: int = 20  # interleaved rounds, recorder on and off
    block: int = 500  # requests per server per round
    rotate_rows: int = 2_000  # several rotations during the 10,000 measured answers
    replay_rows: int = 100_000  # rows of the replay speed run
    quick: bool = False  # few requests (a smoke test)
    out: Path = BENCH_DIR  # folder for RECORD.md and record.json

    @classmethod
    def make(cls, quick: bool = False) -> RecordBenchConfig:
        if quick:
            return cls(rounds=2, block=100, rotate_rows=150, replay_rows=2_000, quick=True)
        return cls()


def run_record_bench(cfg: RecordBenchConfig, command: str = "", log: Any = print) -> dict:
    import orjson

    from bench.common import report_head, summarize_us
    from bench.suite import HttpBare, env_observations
    from clients.demo import ServerProcess, shipped_models_dir
    from service.replay import read_acts, replay

    tmp = Path(tempfile.mkdtemp(prefix="s2loop-bench-record-"))
    rec = tmp / "rec"
    models = shipped_models_dir()
    on = ServerProcess(
        models,
        log_path=tmp / "on.log",
        extra_args=["--record-dir", str(rec), "--record-rotate-rows", str(cfg.rotate_rows)],
    )
    off = ServerProcess(models, log_path=tmp / "off.log")
    pool = env_observations("CartPole-v1", 4096, 0)
    bodies = [orjson.dumps({"model": "cartpole", "observation": o.tolist()}) for o in pool]
    rtt: dict[str, list[float]] = {"off": [], "on": []}
    stamps: list[float] = []  # wall time of each recording-on request
    sent_on = 0
    with on, off:
        on.wait_ready(180)
        off.wait_ready(180)
        clients = {"on": HttpBare(on.url, "/v1/act"), "off": HttpBare(off.url, "/v1/act")}
        for name, client in clients.items():  # warm-up
            for i in range(200):
                client.roundtrip(bodies[i])
                sent_on += name == "on"
        j = 0
        for r in range(cfg.rounds):
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                for _ in range(cfg.block):
                    us, _ = clients[name].roundtrip(bodies[j % len(bodies)])
                    j += 1
                    rtt[name].append(us)
                    if name == "on":
                        stamps.append(time.time())
                        sent_on += 1
            log(f"  round {r + 1}/{cfg.rounds}")
        for client in clients.values():
            client.close()
    # the graceful stop (SIGINT) has written everything
    files = sorted(rec.glob("acts-*.parquet"))
    table = read_acts(rec)
    rows = table.num_rows
    size = sum(f.stat().st_size for f in files)
    rotations = [f.stat().st_mtime for f in files[:-1]]  # the last one is the stop's
    on_us = np.asarray(rtt["on"])
    near = np.zeros(len(on_us), bool)
    t = np.asarray(stamps)
    for m in rotations:  # requests answered within 50 ms of a file being written
        near |= np.abs(t - m) < 0.05
    near_max = float(on_us[near].max()) if near.any() else None
    far_max = float(on_us[~near].max()) if (~near).any() else None
    # replay speed: the recording, repeated to replay_rows rows
    from service.recorder import Recorder
    from service.records import ActRow

    grow = tmp / "replay"
    recorder = Recorder(grow, rotate_rows=50_000)
    base = table.to_pylist()
    for i in range(cfg.replay_rows):
        r = base[i % len(base)]
        recorder.act(ActRow(r["time"].timestamp(), r["request_id"], f"e{i // 500}", i % 500,
                            r["model"], r["weights_sha256"], r["backend"], r["fallback"],
                            r["transport"], np.asarray(r["observation"], np.float32),
                            np.asarray(r["q_values"], np.float32), r["action"], r["seed"],
                            r["server_us"], r["compute_us"]))  # fmt: skip
    recorder.close()
    best = None
    for _ in range(3):
        rep = replay(grow, models_dir=models)
        best = rep if best is None or rep["rows_per_s"] > best["rows_per_s"] else best
    assert best is not None
    config = {"rounds": cfg.rounds, "block": cfg.block, "rotate_rows": cfg.rotate_rows}
    return {
        **report_head(command, cfg.quick, config),
        "rtt_us": {k: summarize_us(v) for k, v in rtt.items()},
        "ratio_p50": float(np.median(rtt["on"]) / np.median(rtt["off"])),
        "answers_sent": sent_on,
        "rows_recorded": rows,
        "rows_lost": sent_on - rows,
        "files": len(files),
        "bytes": size,
        "bytes_per_million": size / rows * 1e6 if rows else None,
        "rotations_during_run": len(rotations),
        "requests_near_rotation": int(near.sum()),
        "near_rotation_max_us": near_max,
        "far_from_rotation_max_us": far_max,
        "near_rotation_p99_us": float(np.percentile(on_us[near], 99)) if near.any() else None,
        "far_from_rotation_p99_us": float(np.percentile(on_us[~near], 99))
        if (~near).any()
        else None,
        "replay": {
            "rows": best["rows"],
            "seconds": best["seconds"],
            "rows_per_s": best["rows_per_s"],
            "agreement": best["agreement"],
        },
    }


def _ms(us: float | None) -> str:
    return "n/a" if us is None else f"{us / 1e3:.2f} ms"


def markdown(r: dict[str, Any]) -> str:
    from bench.common import table

    on, off = r["rtt_us"]["on"], r["rtt_us"]["off"]
    # a single slowest answer is mostly the machine (the server that does not record has
    # outliers as slow): a rotation delays answers by what the slowest one near it takes
    # beyond the slowest elsewhere, on either server
    near_max = r["near_rotation_max_us"]
    elsewhere = max(x for x in (r["far_from_rotation_max_us"], off["max"]) if x is not None)
    excess = None if near_max is None else near_max - elsewhere
    met = {
        "p50": r["ratio_p50"] <= 1.05,
        "rotation": excess is not None and excess <= 1000,
        "replay": r["replay"]["rows_per_s"] >= 50_000,
        "lost": r["rows_lost"] == 0,
    }

    def ok(flag: bool) -> str:
        return "met" if flag else "**not met**"

    lines = [
        "# The flight recorder: what it costs",
        "",
        f"Written by `{r['command']}` on {r['date']}, {r['machine']['cpu_model']}, "
        f"{r['machine']['cpus']} CPUs. Two `s2loop serve` processes with the shipped models, "
        f"one recording (files of {r['config']['rotate_rows']:,} rows) and one not, measured "
        f"by one bare HTTP client in {r['config']['rounds']} interleaved rounds of "
        f"{r['config']['block']} requests each. All figures measured by that command.",
        "",
    ]
    if r["quick"]:
        lines += ["**Quick mode**: too few requests for the figures to mean much.", ""]
    lines += [
        *table(
            ["what", "target", "measured", ""],
            [
                [
                    "/v1/act p50 with recording ÷ without",
                    "<= 1.05",
                    f"{r['ratio_p50']:.3f} ({on['p50']:.0f} vs {off['p50']:.0f} µs)",
                    ok(met["p50"]),
                ],
                [
                    "slowest answer within 50 ms of a file rotation, beyond the slowest elsewhere",
                    "<= 1 ms",
                    ("n/a" if excess is None else f"{max(excess, 0.0) / 1e3:.2f} ms")
                    + f" ({r['requests_near_rotation']} answers near "
                    f"{r['rotations_during_run']} rotations: slowest {_ms(near_max)}, p99 "
                    f"{_ms(r['near_rotation_p99_us'])}; far from them: slowest "
                    f"{_ms(r['far_from_rotation_max_us'])}, p99 "
                    f"{_ms(r['far_from_rotation_p99_us'])}; not recording: slowest "
                    f"{_ms(off['max'])})",
                    ok(met["rotation"]),
                ],
                [
                    "rows lost on a graceful stop",
                    "0",
                    f"{r['rows_lost']} of {r['answers_sent']:,} answers",
                    ok(met["lost"]),
                ],
                [
                    f"replay on the emulator, {r['replay']['rows']:,} rows",
                    ">= 50,000 rows/s",
                    f"{r['replay']['rows_per_s']:,.0f} rows/s "
                    f"(agreement {r['replay']['agreement']:.4f})",
                    ok(met["replay"]),
                ],
            ],
        ),
        "",
        f"On disk: {r['bytes'] / 1e6:.2f} MB for {r['rows_recorded']:,} rows in {r['files']} "
        f"files, about {r['bytes_per_million'] / 1e6:.0f} MB per million answers (Parquet, "
        "default compression; CartPole rows: 4 observations, 2 Q-values).",
        "",
        f"p99 round trip: {on['p99']:.0f} µs recording, {off['p99']:.0f} µs not.",
        "",
    ]
    return "\n".join(lines)
