"""What a suite run leaves behind: ``RESULTS.md`` (tables), ``results.json`` (every
figure, no raw samples) and PNG plots, all written from the report of
:func:`bench.suite.run_suite`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import fmt, table
from bench.suite import PAPER, strip_raw

JSON_NAME = "results.json"
MD_NAME = "RESULTS.md"
PLOTS = {
    "transport": "transport.png",
    "backends": "backends.png",
    "closed_loop": "closed_loop.png",
    "scaling": "scaling.png",
}
#: fewer misses than this (service and floor control together) are not attributed
MISSES_TO_COMPARE = 10
#: a process using at least this share of a core counts as saturated in the findings
SATURATED = 0.85


def _cols(spec: str) -> list[str]:
    """Column headers written as one string: ``"a | b | c"``."""
    return [c.strip() for c in spec.split(" | ")]


def _figure(alt: str, key: str) -> list[str]:
    """A section's plot (written next to the page) and the blank line after it."""
    return [f"![{alt}]({PLOTS[key]})", ""]


def _met(flag: Any) -> str:
    return "met" if flag else "**not met**"


# ------------------------------------------------------------------ markdown


def _head(r: dict[str, Any]) -> list[str]:
    m = r["machine"]
    g = r["git"]
    if g["dirty_paths"] is None:
        dirty = "unknown (no git repository where it ran)"
    else:
        dirty = ", ".join(g["dirty_paths"]) or "none"
    v = m["versions"]
    lines = [
        "# s2loop benchmark results",
        "",
        "Every figure below comes from one run of the suite on one machine; nothing is "
        "copied in by hand except the figures quoted from the reference paper (section 5), "
        "which are marked as quoted. Rerun with the command below; figures will differ "
        "with the machine and its load.",
        "",
        f"- **Command**: `{r['command'] or 's2loop bench suite'}`"
        + (" (quick mode: fewer steps and rounds)" if r["quick"] else ""),
        f"- **Date**: {r['date_utc']} (UTC); the run took {r['seconds']:.0f} s",
        f"- **Code**: git commit `{g['commit']}`; files with uncommitted changes in the "
        f"working tree at the time: {dirty}",
        f"- **Machine**: {m['cpu_model']}, {m['cpus']} CPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else "")
        + f", {m['platform']}; Python {m['python']}, numpy {v['numpy']}, numba "
        f"{v['numba']}, torch {v['torch']}, FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}, "
        f"websockets {v['websockets']}, Gymnasium {v['gymnasium']}",
        f"- **Load**: load average {r['loadavg_start']} at the start, {r['loadavg_end']} at "
        "the end. Other work on the machine shows there and in the 'machine busy' figures; "
        "it makes the figures noisy, which is why the variants within each section are "
        "interleaved.",
        "- **Models**: "
        + ", ".join(f"`{k}` sha256 `{d[:12]}…`" for k, d in r["models"].items())
        + " (copied at the start; the servers serve the copies)",
        "",
    ]
    return lines


def _targets(r: dict[str, Any]) -> list[str]:
    rows = []
    names = {
        "act_http_p50_over_fastapi_floor": ("/v1/act HTTP p50 ÷ bare FastAPI floor p50", 2),
        "act_http_p50_over_asgi_floor": ("/v1/act HTTP p50 ÷ plain ASGI floor p50", 2),
        "ws_msgpack_p50_over_ws_json": ("WebSocket msgpack p50 ÷ WebSocket JSON p50", 2),
        "tcp_p50_us": ("TCP endpoint p50, µs", 1),
        "tcp_p50_over_ws_echo_floor": ("TCP p50 ÷ plain WebSocket echo floor p50", 2),
        "sdk_overhead_p50_us": ("client SDK overhead over a bare socket (TCP), p50 µs", 1),
        "batch_obs_per_s": ("/v1/act/batch observations/s (sustained)", 0),
        "emulator_single_median_us": ("emulator single inference, median µs", 1),
        "emulator_batched_per_s": ("emulator inferences/s, batched", 0),
        "zero_misses_200hz_10k_steps": ("CartPole deadline misses at 200 Hz", 0),
        "tcp_1khz_miss_rate": ("CartPole deadline misses at 1 kHz over TCP", 0),
    }
    for section in ("transport", "backends", "closed_loop"):
        for key, t in r.get(section, {}).get("targets", {}).items():
            label, digits = names.get(key, (key, 2))
            value = t["value"]
            met = _met(t["met"])
            if not t.get("steps_enough", True):
                met += " (too few steps for the target: quick mode)"
            rows.append([label, t["target"], fmt(value, digits), met])
    if not rows:
        return []
    return ["## Targets", "", *table(["what", "target", "measured", ""], rows), ""]


def _transport(t: dict[str, Any], cpus: str = "?") -> list[str]:
    c = t["config"]
    rows = []
    for name, e in t["transports"].items():
        s = e["rtt_us"]
        ratio = e["ratio_to_floor"]
        extra = ""
        if name == "batch":
            extra = (
                f"{fmt(e['obs_per_s_sustained'])} obs/s sustained, "
                f"{fmt(e['obs_per_s_at_p50'])} at p50"
            )
        rows.append(
            [
                e["what"],
                fmt(s["n"]),
                fmt(s["p50"]),
                fmt(s["p90"]),
                fmt(s["p99"]),
                f"{e.get('floor', 'floor_http')}: "
                + " / ".join(fmt(ratio[f"p{p}"], 2) for p in (50, 90, 99)),
                fmt(e.get("ratio_to_fastapi_floor"), 2),
                fmt(e["server_us"]["p50"]),
                extra,
            ]
        )
    cpu = t.get("cpu", {})
    return [
        "## 1. Transport",
        "",
        f"Round trips measured by the client from request written to answer read, µs; "
        "bodies encoded before the clock starts, except on the PolicyClient row, which "
        f"times `act()` whole. {c['rounds']} rounds; each round runs a block of "
        f"{c['block']} requests on every single-request transport and {c['batch_block']} "
        f"batch requests, {c['order']}. One client, one connection per transport, "
        f"sequential requests; model `{c['model']}` on the emulator; {c['observations']}. "
        "Floors (`bench/floor.py`, one process, uvicorn settings of `s2loop serve`): a bare "
        "FastAPI route returning a constant answer of the same size, a plain ASGI app "
        "returning it, a plain uvicorn WebSocket echo, a TCP server answering each frame "
        "with it. Each row is divided by its own floor (named) and by the bare FastAPI "
        "floor. 'server p50' is the time the service itself reports (`timing.server_us`).",
        "",
        *table(
            _cols(
                "transport | n | p50 | p90 | p99 | ÷ its floor (p50 / p90 / p99) | "
                "÷ FastAPI floor (p50) | server p50 | "
            ),
            rows,
        ),
        "",
        f"Cores busy during the interleaved rounds: this process (client) "
        f"{fmt(cpu.get('client_cores'), 2)}, whole machine {fmt(cpu.get('machine_busy_cores'), 2)}"
        f" (of {cpus} CPUs, other work included).",
        "",
        *_figure("transport round trips", "transport"),
    ]


def _backends(b: dict[str, Any]) -> list[str]:
    m = b["model"]
    th = b["threads"]
    rows1 = []
    for name, d in b["backends"].items():
        s = d["single"]["best"]
        rows1.append(
            [
                name,
                fmt(s["median_us"], 1),
                fmt(s["p90_us"], 1),
                fmt(s["p99_us"], 1),
                fmt(s["mean_us"], 1),
                ", ".join(fmt(x["median_us"], 1) for x in d["single"]["repeats"]),
            ]
        )
    batches = list(b["backends"]["emulator"]["batched"])
    rows2 = []
    for batch in batches:
        emu = b["backends"]["emulator"]["batched"][batch]["best"]["per_second"]
        ref = b["backends"]["reference"]["batched"][batch]["best"]["per_second"]
        rows2.append([batch, fmt(emu), fmt(ref), fmt(emu / ref if ref else None, 1)])
    agree = b["action_agreement"]
    return [
        "## 2. Backends (in process, one thread each)",
        "",
        f"Shipped `{m['name']}` network, layers {m['layer_sizes']} from {m['input_size']} "
        f"inputs, {m['ticks']} ticks, through `Backend.infer` (input checks, encoding, "
        "network, readout). Emulator: `hw.emulator.EmulatorBackend` (numba, 8-bit weights). "
        "Reference: `agent.reference.ReferenceBackend` (torch, float weights, same tick "
        f"semantics). Threads: torch {th['torch']} (interop {th['torch_interop']}), numba "
        f"{th['numba']}. Best of {b['config']['repeats']} interleaved repeats (a slow repeat "
        "measures the neighbours); every repeat's median is listed.",
        "",
        "Single observation, µs per call:",
        "",
        *table(["backend", "median", "p90", "p99", "mean", "medians of all repeats"], rows1),
        "",
        "Batched throughput, inferences/s:",
        "",
        *table(["batch", "emulator", "float reference", "emulator ÷ reference"], rows2),
        "",
        f"Same greedy action from both on {agree['value']:.1%} of {agree['states']} CartPole "
        "states (8-bit vs float weights).",
        "",
        *_figure("backend throughput", "backends"),
        *_gpu(b.get("gpu")),
    ]


def _paper_per_inference() -> tuple[float, float]:
    """The paper's CartPole energy figures (J per inference: SpiNNaker2, GTX 1650)."""
    claims = {c["what"]: c for c in PAPER["claims"]}
    return (
        claims["CartPole energy, SpiNNaker2"]["value_j"],
        claims["CartPole energy, GTX 1650"]["value_j"],
    )


def _gpu(g: dict[str, Any] | None) -> list[str]:
    """The paper's GPU axis: the float reference on CUDA beside our chip estimates and
    the paper's figures, all per inference."""
    if not g:
        return []
    chip_j, gpu_j = _paper_per_inference()
    reading = (
        f"The paper's CartPole figures, {chip_j} J (SpiNNaker2) and {gpu_j} J (GTX 1650), "
        "are read as energy per inference: its abstract names what it measured, 'energy "
        "cost per inference'; a secondary source's per-episode reading is doubtful."
    )
    if not g["available"]:
        return [
            "### GPU (the paper's comparison)",
            "",
            f"Not measured: {g['reason']}. {reading}",
            "",
        ]
    rows = []
    for name, m in g["models"].items():
        es, eb = m.get("energy_single"), m.get("energy_batched")
        rows.append(
            [
                f"`{name}`",
                fmt(m["graph_single"]["median_us"], 0),
                fmt(m["eager_single"]["median_us"], 0),
                fmt(m["graph_batched"]["per_second"], 0),
                fmt(es and es["energy_j_per_inference"] * 1e3, 2),
                fmt(es and es["dynamic_energy_j_per_inference"] * 1e3, 3),
                fmt(eb and eb["energy_j_per_inference"] * 1e3, 4),
                fmt(eb and eb["dynamic_energy_j_per_inference"] * 1e3, 4),
                f"{fmt(m['chip']['chip_time_s'] * 1e6, 0)} / "
                f"{fmt(m['chip']['energy_j'] * 1e3, 2)} / "
                f"{fmt(m['chip']['energy_dynamic_j'] * 1e3, 3)}",
                f"{fmt(chip_j * 1e3, 0)} / {fmt(gpu_j * 1e3, 0)}",
            ]
        )
    e = g.get("energy", {})
    energy = (
        f"Idle power {fmt(g.get('idle_power_w'), 1)} W. {e['how']}."
        if e.get("measured")
        else f"GPU energy not measured: {e.get('reason', 'unknown')}."
    )
    return [
        "### GPU (the paper's comparison)",
        "",
        f"The float reference (`ReferenceBackend('cuda')`) on {g['device']} (torch "
        f"{g['torch']}): the network as one captured CUDA graph per batch size, encoding on "
        "the host; eager (one kernel launch per op and tick) beside it for contrast. "
        f"Batched: {fmt(g['batch'])} observations per call. {energy} Chip: our **estimates** "
        f"(`hw.mapping`, section 5), per inference. {reading}",
        "",
        *table(
            _cols(
                f"model | GPU batch 1 p50 (µs), graph | eager | "
                f"GPU inferences/s at {g['batch']} | GPU mJ/inference, batch 1 | dynamic | "
                f"GPU mJ/inference at {g['batch']} | dynamic | "
                f"chip estimate: µs / mJ / dynamic mJ | paper (quoted): SpiNNaker2 / GTX 1650 mJ"
            ),
            rows,
        ),
        "",
    ]


def _closed_loop(c: dict[str, Any]) -> list[str]:
    rows = []
    for r in c["runs"]:
        s = r["rtt_us"]
        pacing = f"{r['rate_hz']:g} Hz" if r["rate_hz"] else "unpaced"
        misses = ""
        if r["rate_hz"] is not None:
            misses = (
                f"{r['deadline_misses']} ({r['miss_rate']:.2%}); "
                f"{r['misses_rtt_over_period']} with RTT > period"
            )
        floor = r.get("server") == "floor"
        rows.append(
            [
                "floor (control)" if floor else "s2loop",
                r["env_id"],
                r["transport"],
                pacing,
                fmt(r["steps"]),
                fmt(r["episodes"]),
                fmt(s["p50"]),
                fmt(s["p90"]),
                fmt(s["p99"]),
                fmt(s["max"]),
                fmt(r["server_us"]["p50"]),
                misses,
                fmt(r["errors"]),
                "n/a (constant action)" if floor else fmt(r["return_mean"], 1),
            ]
        )
    lengths = ", ".join(
        f"{e}: {fmt(v, 1)} steps over {c['episodes'][e]} episodes"
        for e, v in c["episode_length_mean"].items()
    )
    return [
        "## 3. Closed loop",
        "",
        "Real Gymnasium episodes, actions from the server (`clients.loop.run_client`, the "
        "code of `s2loop run`), one client in a process of its own (no torch loaded), whole "
        "episodes until the step count is reached; the runs advance in turns of a few seconds "
        "each, so load drift hits all alike. "
        "Round trip per step, µs. A step is a deadline miss when its action arrives after "
        "its period ends (1/rate after the period started); the pacing restarts from 'now' "
        "after a miss rather than bursting. 'with RTT > period': misses whose round trip "
        "alone was longer than the period; the others started late or lost the period on "
        "the client side (wake-up, JSON, Gymnasium). The 'floor (control)' row runs the same "
        "paced loop against the constant-answer floor server: misses there come from the "
        "machine and the client, not from the service.",
        "",
        *table(
            _cols(
                "server | env | transport | pacing | steps | episodes | p50 | p90 | p99 | max | "
                "server p50 | misses | errors | mean return"
            ),
            rows,
        ),
        "",
        f"Mean episode length (all runs above): {lengths}.",
        "",
        *_figure("closed-loop round trips", "closed_loop"),
    ]


def _scaling(s: dict[str, Any]) -> list[str]:
    c = s["config"]
    rows = []
    for r in s["rows"]:
        rows.append(
            [
                str(r["workers"]),
                str(r["clients"]),
                str(r.get("client_processes", 1)),
                fmt(r["steps_per_s"]),
                fmt(r["rtt_us"]["p50"]),
                fmt(r["rtt_us"]["p99"]),
                fmt(r["steps"]),
                fmt(r["errors"]),
                fmt(r["server_cores"], 2),
                fmt(r["client_cores"], 2),
                fmt(r["machine_busy_cores"], 2),
            ]
        )
    return [
        "## 4. Scaling",
        "",
        f"{c['env_id']} closed loops over {c['transport']}, unpaced; {c['clients']}; about "
        f"{c['steps_per_configuration_and_round']:,} steps per configuration and round, "
        f"{c['rounds']} round(s), {c['order']}. Aggregate steps/s = all steps / wall time. "
        "Cores: CPU time ÷ wall time of the server processes (workers included), of the "
        "client processes (Gymnasium, JSON, sockets) and of the whole machine (other "
        "users included). Clients in one process share its interpreter, so at high client "
        "counts their own GIL contention is part of the round trip.",
        "",
        *table(
            _cols(
                "workers | clients | client processes | steps/s | RTT p50 | RTT p99 | steps | "
                "errors | server cores | client cores | machine busy cores"
            ),
            rows,
        ),
        "",
        *_figure("scaling", "scaling"),
    ]


def _chip(c: dict[str, Any]) -> list[str]:
    rows = []
    for m in c["models"]:
        rows.append(
            [
                m["model"],
                str(m["ticks"]),
                str(m["pes_used"]),
                str(m["copies_per_chip"]),
                fmt(m["chip_time_s"] * 1e3, 1),
                fmt(m["max_control_rate_hz"], 1),
                fmt(m["energy_j"] * 1e3, 2),
                fmt(m["energy_dynamic_j"] * 1e3, 3),
                fmt(m["energy_batched_j"] * 1e3, 3),
                fmt(m["episode_length_mean"], 1),
                fmt(m["episode_chip_time_s"], 2),
                fmt(m["episode_energy_j"], 3),
            ]
        )
    spec = c["chip_spec"]
    p = c["paper"]
    paper_rows = []
    for claim in p["claims"]:
        value = claim.get("value") or f"{claim['value_j']} J"
        paper_rows.append([claim["what"], value, claim["grade"]])
    return [
        "## 5. Chip estimates (ours) beside the reference paper (quoted)",
        "",
        "**Ours are estimates**, from `hw.mapping.map_network` (placement model and power "
        f"constants of secondary sources: idle {spec['power_idle_w']} W, all PEs busy "
        f"{spec['power_busy_w']} W at 0.5 V; tick {spec['sys_tick_s'] * 1e3:g} ms; "
        f"{spec['usable_pes']} usable PEs), not measured on a chip. Energy per inference = "
        "whole-chip power with this network's PEs busy × ticks × tick; 'dynamic' is the part "
        "above an idle chip; 'batched' fills every copy of the network on the chip. Per "
        "episode = per inference × the mean episode length measured in section 3. Host "
        "loading and Ethernet are not included.",
        "",
        *table(
            _cols(
                "model | ticks | PEs | copies/chip | chip time/inference (ms) | "
                "max control rate (Hz) | energy/inference (mJ) | dynamic (mJ) | batched (mJ) | "
                "mean episode (steps) | chip time/episode (s) | energy/episode (J)"
            ),
            rows,
        ),
        "",
        f"**Quoted** from {p['citation']}, as far as {p['notes']} states it; not reproduced "
        f"here. Their networks: {p['network']}.",
        "",
        *table(["claim", "value", "source grade"], paper_rows),
        "",
    ]


def _find_run(c: dict[str, Any], **match: Any) -> dict[str, Any] | None:
    for r in c.get("runs", []):
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def findings(r: dict[str, Any]) -> list[str]:
    """Plain statements computed from the report (no hand-copied figure)."""
    out: list[str] = []
    t = r.get("transport")
    if t:
        tr = t["transports"]
        floor, act, ws = tr["floor_http"], tr["act_http"], tr["act_ws"]
        asgi, echo = tr.get("floor_asgi"), tr.get("floor_ws_echo")
        out.append(
            f"/v1/act over HTTP: p50 {fmt(act['rtt_us']['p50'])} µs against the bare-FastAPI "
            f"floor's {fmt(floor['rtt_us']['p50'])} µs "
            f"(×{fmt(act.get('ratio_to_fastapi_floor'), 2)})"
            + (f" and the plain-ASGI floor's {fmt(asgi['rtt_us']['p50'])} µs" if asgi else "")
            + f"; the service reports {fmt(act['server_us']['p50'])} µs of its own time at p50, "
            "so the rest of the round trip is HTTP, uvicorn and the client."
        )
        line = f"WebSocket JSON: p50 {fmt(ws['rtt_us']['p50'])} µs"
        if "act_ws_msgpack" in tr:
            line += f", msgpack {fmt(tr['act_ws_msgpack']['rtt_us']['p50'])} µs"
        if echo:
            line += f"; the plain uvicorn WebSocket echo is {fmt(echo['rtt_us']['p50'])} µs"
        out.append(line + ".")
        if "act_tcp" in tr:
            tcp, fl = tr["act_tcp"], tr["floor_tcp"]
            out.append(
                f"TCP endpoint: p50 {fmt(tcp['rtt_us']['p50'])} µs, p99 "
                f"{fmt(tcp['rtt_us']['p99'])} µs with a bare socket client (the TCP "
                f"constant-frame floor: {fmt(fl['rtt_us']['p50'])} µs); through PolicyClient "
                f"{fmt(tr['sdk_tcp']['rtt_us']['p50'])} µs. The machine was busy "
                f"{fmt(t.get('cpu', {}).get('machine_busy_cores'), 2)} of "
                f"{r['machine']['cpus']} CPUs meanwhile."
            )
    c = r.get("closed_loop")
    if c:
        free = _find_run(c, server="s2loop", env_id="CartPole-v1", transport="http", rate_hz=None)
        paced = _find_run(c, server="s2loop", env_id="CartPole-v1", transport="http", rate_hz=200.0)
        control = _find_run(c, server="floor", rate_hz=200.0)
        if free and paced:
            out.append(
                f"Pacing costs latency: CartPole over HTTP at 200 Hz has a p50 round trip of "
                f"{fmt(paced['rtt_us']['p50'])} µs against {fmt(free['rtt_us']['p50'])} µs "
                f"unpaced, and the server's own time rises from "
                f"{fmt(free['server_us']['p50'])} to {fmt(paced['server_us']['p50'])} µs: between "
                "steps the processes sleep and each step starts cold (wake-up, caches)."
                + (
                    f" The constant-answer floor paced alike has a p50 of "
                    f"{fmt(control['rtt_us']['p50'])} µs."
                    if control
                    else ""
                )
            )
            line = (
                f"Deadline misses at 200 Hz (CartPole, HTTP): {paced['deadline_misses']} in "
                f"{fmt(paced['steps'])} steps, {paced['misses_rtt_over_period']} of them with a "
                "round trip longer than the period."
            )
            if control:
                line += (
                    f" The control loop against the constant-answer floor at the same rate: "
                    f"{control['deadline_misses']} in {fmt(control['steps'])} steps "
                    f"({control['misses_rtt_over_period']} with RTT > period)."
                )
                both = paced["deadline_misses"] + control["deadline_misses"]
                if both < MISSES_TO_COMPARE:
                    line += (
                        f" With {both} misses between the two, the counts are too small to "
                        "say which side caused them (they vary from run to run)."
                    )
                elif control["miss_rate"]:
                    rel = paced["miss_rate"] / control["miss_rate"]
                    line += (
                        f" Miss rate service ÷ floor: {rel:.1f}; where it is near 1 the misses "
                        "come from the machine and the client (wake-up, scheduling), not from "
                        "the service."
                    )
                else:
                    line += " The floor missed none: the service's extra time matters here."
            out.append(line)
    b = r.get("backends")
    if b:
        e = b["backends"]["emulator"]
        ref = b["backends"]["reference"]
        ratio = ref["single"]["best"]["median_us"] / e["single"]["best"]["median_us"]
        out.append(
            f"One inference on the emulator takes {fmt(e['single']['best']['median_us'], 1)} µs "
            f"(median), {ratio:.0f}× less than the float torch reference "
            f"({fmt(ref['single']['best']['median_us'])} µs); the emulator is a small part of a "
            "closed-loop step, whose time is mostly transport."
        )
    s = r.get("scaling")
    if s:
        for w in sorted({row["workers"] for row in s["rows"]}):
            rows = [row for row in s["rows"] if row["workers"] == w]
            best = max(rows, key=lambda row: row["steps_per_s"] or 0)
            others = best["machine_busy_cores"] - best["server_cores"] - best["client_cores"]
            line = (
                f"{w} worker(s): {fmt(rows[0]['steps_per_s'])} steps/s with "
                f"{rows[0]['clients']} client, at most {fmt(best['steps_per_s'])} steps/s "
                f"({best['clients']} clients); then the server used "
                f"{fmt(best['server_cores'], 2)} cores, the clients "
                f"{fmt(best['client_cores'], 2)}, the rest (kernel networking, other "
                f"processes) {fmt(max(others, 0.0), 2)}, of {r['machine']['cpus']} CPUs."
            )
            procs = best.get("client_processes", 1)
            if best["client_cores"] >= SATURATED * procs:
                line += (
                    f" The {procs} client process(es) were near one core each: this is the "
                    "clients' limit, not the server's."
                )
            elif best["server_cores"] >= SATURATED * w:
                line += f" The server's {w} worker(s) were near one core each: its limit."
            out.append(line)
    ch = r.get("chip")
    if ch:
        m = ch["models"][0]
        period_ticks = m["ticks"] * m["sys_tick_s"]
        out.append(
            f"On the chip (estimate), one inference of `{m['model']}` takes {m['ticks']} ticks "
            f"× {m['sys_tick_s'] * 1e3:g} ms = {period_ticks * 1e3:g} ms, so one chip could "
            f"close the loop at most at {fmt(m['max_control_rate_hz'], 1)} Hz before any host "
            "or Ethernet time: the 200 Hz and 1 kHz figures above hold for the emulator only; "
            f"a board at this tick could not follow them (200 Hz needs a tick of at most "
            f"{1e3 / (200 * m['ticks']):.2f} ms, 1 kHz {1e3 / (1000 * m['ticks']):.3f} ms)."
        )
        quoted, _gpu_j = _paper_per_inference()
        out.append(
            f"Estimated energy for `{m['model']}`: {fmt(m['energy_j'] * 1e3, 2)} mJ per "
            f"inference ({fmt(m['energy_dynamic_j'] * 1e3, 3)} mJ above an idle chip). The "
            f"paper's quoted {quoted} J for CartPole on SpiNNaker2, read as per inference (its "
            f"abstract: 'energy cost per inference'), is {quoted / m['energy_j']:.2g}x that: "
            "the same order; network sizes, ticks and power figures differ."
        )
    return out


def render_markdown(report: dict[str, Any]) -> str:
    lines = _head(report) + _targets(report)
    found = findings(report)
    if found:
        lines += ["## Findings (computed from the figures below)", ""]
        lines += [f"- {x}" for x in found] + [""]
    for key, fn in (
        ("transport", lambda t: _transport(t, report["machine"]["cpus"])),
        ("backends", _backends),
        ("closed_loop", _closed_loop),
        ("scaling", _scaling),
        ("chip", _chip),
    ):
        if key in report:
            lines += fn(report[key])
    return "\n".join(lines)


# ------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_transport(t: dict[str, Any], path: Path) -> Path:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=80)
    for name, e in t["transports"].items():
        if name == "batch":
            continue
        x = np.sort(np.asarray(e["_rtt"], float))
        y = np.arange(1, len(x) + 1) / len(x)
        ax.plot(x, y, label=f"{e['what']} (p50 {e['rtt_us']['p50']:.0f} µs)", lw=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("round trip, µs (log)")
    ax.set_ylabel("share of requests ≤ x")
    b = t["transports"].get("batch")
    title = "Transport round trips (interleaved)"
    if b:
        title += f"; batch 256: {b['obs_per_s_sustained']:,.0f} obs/s"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, path)


def plot_backends(b: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
    for name, d in b["backends"].items():
        xs = [int(k) for k in d["batched"]]
        ys = [d["batched"][k]["best"]["per_second"] for k in d["batched"]]
        med = d["single"]["best"]["median_us"]
        ax.plot(xs, ys, "o-", label=f"{name} (single median {med:.1f} µs)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("inferences / s (log)")
    ax.set_title("Backends on one CPU thread: emulator (8-bit) vs torch float", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_closed_loop(c: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    runs = c["runs"]
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=80)
    data = [r["_rtt"] for r in runs]
    labels = [
        ("floor " if r.get("server") == "floor" else "")
        + f"{r['env_id'].split('-')[0]}\n{r['transport']} "
        + (f"{r['rate_hz']:g}Hz" if r["rate_hz"] else "free")
        for r in runs
    ]
    ax.boxplot(data, whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    for rate, style in ((1000.0, ":"), (200.0, "--"), (50.0, "-.")):
        ax.axhline(1e6 / rate, color="red", ls=style, lw=1, label=f"{rate:g} Hz period")
    ax.set_yscale("log")
    ax.set_ylabel("round trip per step, µs (log)")
    ax.set_title("Closed-loop steps (box: p25-p75, whiskers: p1-p99)", fontsize=10)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=7, loc="upper right")
    return _save(plt, fig, path)


def plot_scaling(s: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4), dpi=80)
    for w in sorted({r["workers"] for r in s["rows"]}):
        rows = [r for r in s["rows"] if r["workers"] == w]
        ks = [r["clients"] for r in rows]
        a1.plot(ks, [r["steps_per_s"] for r in rows], "o-", label=f"{w} worker(s)")
        a2.plot(ks, [r["rtt_us"]["p99"] for r in rows], "o-", label=f"{w} worker(s)")
    ks = sorted({r["clients"] for r in s["rows"]})
    for ax, ylabel in ((a1, "aggregate steps / s"), (a2, "RTT p99, µs")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a2.set_yscale("log")
    fig.suptitle("Scaling: CartPole closed loops, HTTP", fontsize=10)
    return _save(plt, fig, path)


PLOTTERS = {
    "transport": plot_transport,
    "backends": plot_backends,
    "closed_loop": plot_closed_loop,
    "scaling": plot_scaling,
}


def write_results(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the plots, ``results.json`` and ``RESULTS.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, plot in PLOTTERS.items():
        if key in report:
            written.append(plot(report[key], out_dir / PLOTS[key]))
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(strip_raw(report), indent=1) + "\n")
    md_path = out_dir / MD_NAME
    md_path.write_text(render_markdown(report))
    return [*written, json_path, md_path]
