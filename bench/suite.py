"""``s2loop bench suite``: every figure of ``bench/RESULTS.md`` from one run on one machine.

Sections (each a function returning a JSON-able dict; :func:`run_suite` runs the
chosen ones and :mod:`bench.results` writes the page, the JSON and the plots):

1. ``transport``: round trips to a bare FastAPI endpoint returning a constant
   (:mod:`bench.floor`, the floor) and to ``s2loop serve``'s ``/v1/act`` over
   keep-alive HTTP, over WebSocket, and ``/v1/act/batch`` with 256 observations.
   Interleaved: every round runs one block of each, in an order rotated each
   round, so drift of the machine's load hits all alike.
2. ``backends``: ``EmulatorBackend`` vs the float torch ``ReferenceBackend`` in
   one process, same shipped network, one thread each; single-call latency
   and batched throughput, repeats interleaved, best repeat reported.
3. ``closed_loop``: real Gymnasium episodes through the server
   (:func:`clients.loop.run_client`), unpaced (per-step latency) and paced at
   each rate (deadline misses: the action arrived after the period ended),
   plus a control run against the floor; all runs advance in turns.
4. ``scaling``: K concurrent closed loops (spread over client processes, threads
   inside, one connection each) against a 1-worker and a 2-worker server,
   interleaved; aggregate steps/s, RTT p99, and the cores each side used.

Sections 2 and 3 run in spawned child processes, so this process never imports
torch and the closed loops run in a process like a real controller's.
5. ``chip``: ``hw.mapping`` estimates per inference and per episode (episode
   length from section 3) beside the figures quoted from arXiv 2507.23562.

The servers are ``s2loop serve`` subprocesses on free loopback ports serving a
copy of the models folder taken at the start (so a model retrained mid-run
cannot change what is measured).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import BENCH_DIR
from bench.common import (
    CpuMeter,
    git_info,
    loadavg,
    machine_info,
    ratio,
    summarize_us,
)

SECTIONS = ("transport", "backends", "closed_loop", "scaling", "chip")
ENVS = ("CartPole-v1", "Acrobot-v1")

TARGET_ACT_OVER_FLOOR = 1.3
TARGET_ACT_OVER_ASGI = 1.2
TARGET_TCP_P50_US = 100.0
TARGET_BATCH_OBS_PER_S = 20_000.0
TARGET_EMULATOR_SINGLE_US = 50.0
TARGET_EMULATOR_PER_S = 100_000.0
TARGET_RATE_HZ = 200.0
TARGET_RATE_STEPS = 10_000

#: what arXiv 2507.23562 reports, as far as shared/spinnaker2-notes.md states it (quoted,
#: not measured here); "grade" says how the notes graded the source. The energy figures
#: are read as per inference: the abstract says it measured "energy cost per inference"
PAPER = {
    "citation": "Arfa, Vogginger, Mayr (2025), arXiv 2507.23562",
    "notes": "shared/spinnaker2-notes.md, section 'The reference result'",
    "claims": [
        {
            "what": "latency vs GTX 1650 GPU",
            "value": "on par",
            "grade": "abstract read",
        },
        {
            "what": "energy vs GTX 1650 GPU",
            "value": "up to 32x less on SpiNNaker2",
            "grade": "abstract read",
        },
        {
            "what": "CartPole energy, SpiNNaker2",
            "per": "inference",
            "value_j": 0.006,
            "grade": "figure secondary; read per inference, as the abstract names what was "
            "measured ('energy cost per inference'); a secondary source's 'episode energy on "
            "CartPole-v0' reading is doubtful",
        },
        {
            "what": "CartPole energy, GTX 1650",
            "per": "inference",
            "value_j": 0.145,
            "grade": "figure secondary; per inference, as above",
        },
    ],
    "network": "rate-coded (Poisson) inputs over T = 10 or 20 ticks, 8-bit weights",
}


@dataclass
class SuiteConfig:
    """How much of everything to measure. ``SuiteConfig.make(quick)`` gives the two presets."""

    quick: bool = False  # fewer steps and rounds (about 1-2 min)
    #: which sections to run: transport, backends, closed_loop, scaling, chip (or all)
    sections: tuple[str, ...] = SECTIONS
    models_dir: Path | None = None  # folder of *.s2l models (default: the shipped models/)
    out: Path = BENCH_DIR  # folder for RESULTS.md, results.json and the PNGs
    seed: int = 0
    # 1. transport
    transport_rounds: int = 20
    transport_block: int = 500  # single requests per transport per round
    batch_size: int = 256
    batch_block: int = 20  # batch requests per round
    # 2. backends
    backend_batches: tuple[int, ...] = (1, 16, 256, 4096)
    backend_repeats: int = 3
    single_calls: dict[str, int] = field(
        default_factory=lambda: {"emulator": 10_000, "reference": 1_000}
    )
    batched_min_time_s: float = 0.5
    # 3. closed loop
    loop_envs: tuple[str, ...] = ENVS
    loop_free_steps: int = 3_000  # unpaced, per env and transport
    loop_transports: tuple[str, ...] = ("http", "ws")
    loop_rates: dict[float, int] = field(
        default_factory=lambda: {50.0: 1_000, 200.0: 10_000, 1000.0: 10_000}
    )
    #: CartPole at the target rate over WebSocket too (0: skip)
    loop_ws_target_steps: int = 10_000
    #: CartPole paced at 1 kHz over the TCP endpoint (0: skip)
    loop_tcp_1khz_steps: int = 10_000
    #: control: CartPole at the target rate against the floor server (constant answers), to
    #: tell misses the service causes from misses the machine causes (0: skip)
    loop_floor_target_steps: int = 10_000
    #: paced runs advance in turns of about this many seconds each (interleaving)
    loop_chunk_s: float = 5.0
    # 4. scaling
    scaling_env: str = "CartPole-v1"
    scaling_clients: tuple[int, ...] = (1, 2, 4, 8, 16)
    scaling_workers: tuple[int, ...] = (1, 2)
    scaling_steps: int = 10_000  # all clients together, per configuration and round
    scaling_rounds: int = 2
    scaling_client_procs: int | None = None  # default: half the CPUs, at least 1
    ready_timeout_s: float = 180.0  # a fresh checkout compiles numba kernels on first start

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> SuiteConfig:
        base: dict[str, Any] = {"quick": quick}
        if quick:
            base.update(
                transport_rounds=6,
                transport_block=200,
                batch_block=5,
                backend_repeats=2,
                single_calls={"emulator": 2_000, "reference": 200},
                batched_min_time_s=0.15,
                loop_free_steps=500,
                loop_rates={50.0: 100, 200.0: 1_000, 1000.0: 1_000},
                loop_ws_target_steps=1_000,
                loop_floor_target_steps=1_000,
                loop_tcp_1khz_steps=1_000,
                loop_chunk_s=2.0,
                scaling_steps=2_000,
                scaling_rounds=1,
            )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ servers


def floor_process_class() -> type:
    from clients.demo import ServerProcess, free_port

    class FloorProcess(ServerProcess):
        """``python -m bench.floor`` instead of ``s2loop serve``; same lifecycle."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.raw_port, self.tcp_port = free_port(self.host), free_port(self.host)
            self.raw_url = f"http://{self.host}:{self.raw_port}"
            self.tcp_url = f"tcp://{self.host}:{self.tcp_port}"

        @property
        def command(self) -> list[str]:
            return [
                sys.executable, "-m", "bench.floor", "--host", self.host,
                "--port", str(self.port), "--raw-port", str(self.raw_port),
                "--tcp-port", str(self.tcp_port),
            ]  # fmt: skip

    return FloorProcess


class Servers:
    """Starts each server on first use and stops them all at the end (logs in ``tmp``)."""

    def __init__(self, models_dir: Path, tmp: Path, ready_timeout_s: float, log: Log) -> None:
        self.models_dir = models_dir
        self.tmp = tmp
        self.ready_timeout_s = ready_timeout_s
        self.log = log
        self._stack = contextlib.ExitStack()
        self._running: dict[str, Any] = {}

    def _start(self, key: str, server: Any) -> Any:
        t0 = time.perf_counter()
        self._stack.enter_context(server)
        server.wait_ready(self.ready_timeout_s)
        self.log(f"  {key} ready on {server.url} in {time.perf_counter() - t0:.1f}s")
        self._running[key] = server
        return server

    def floor(self) -> Any:
        if "floor" not in self._running:
            cls = floor_process_class()
            self._start("floor", cls(self.models_dir, log_path=self.tmp / "floor.log"))
        return self._running["floor"]

    def s2loop(self, workers: int = 1) -> Any:
        key = f"s2loop-w{workers}"
        if key not in self._running:
            from clients.demo import ServerProcess, free_port

            extra = ["--workers", str(workers)] if workers > 1 else []
            tcp_port = free_port()
            extra += ["--tcp-bind", f"127.0.0.1:{tcp_port}"] if workers == 1 else []
            server = ServerProcess(
                self.models_dir, log_path=self.tmp / f"{key}.log", extra_args=extra
            )
            server.tcp_url = f"tcp://127.0.0.1:{tcp_port}"
            self._start(key, server)
        return self._running[key]

    def close(self) -> dict[str, int | None]:
        codes = {k: s.proc.returncode if s.proc else None for k, s in self._running.items()}
        self._stack.close()
        return {k: s.proc.returncode if s.proc else codes[k] for k, s in self._running.items()}


# ------------------------------------------------------------------ observations


def env_observations(env_id: str, n: int, seed: int) -> np.ndarray:
    """``n`` states an environment visits under random actions (float32 [n, obs])."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.action_space.seed(seed)
    out = []
    obs, _ = env.reset(seed=seed)
    episode = 0
    while len(out) < n:
        out.append(np.asarray(obs, dtype=np.float32))
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    env.close()
    return np.stack(out)


# ------------------------------------------------------------------ 1. transport


class HttpBare:
    """One keep-alive ``http.client`` connection (TCP_NODELAY): the lightest HTTP client,
    timed from request written to answer read."""

    def __init__(self, url: str, path: str, media: str = "application/json") -> None:
        port = int(url.rsplit(":", 1)[1])
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.path, self.headers = path, {"Content-Type": media}

    def roundtrip(self, body: bytes) -> tuple[float, bytes]:
        t0 = time.perf_counter_ns()
        self.conn.request("POST", self.path, body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        us = (time.perf_counter_ns() - t0) / 1e3
        if resp.status != 200:
            raise RuntimeError(f"{self.path} answered {resp.status}: {data[:300]!r}")
        return us, data

    def close(self) -> None:
        self.conn.close()


class WsBare:
    """One WebSocket (websockets' sync client, no compression): text or binary frames."""

    def __init__(self, url: str, binary: bool = False) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        uri = url.replace("http://", "ws://") + "/v1/act/ws"
        self.ws = self._stack.enter_context(connect(uri, compression=None, max_size=None))
        self.ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.binary = binary

    def roundtrip(self, body: bytes) -> tuple[float, bytes]:
        msg = body if self.binary else body.decode()
        t0 = time.perf_counter_ns()
        self.ws.send(msg)
        data = self.ws.recv()
        return (time.perf_counter_ns() - t0) / 1e3, data if isinstance(
            data, bytes
        ) else data.encode()

    def close(self) -> None:
        self._stack.close()


class TcpBare:
    """A plain socket speaking length-prefixed frames: the floor of any TCP client."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self.buffer = bytearray()

    def roundtrip(self, body: bytes) -> tuple[float, bytes]:
        from s2loop_client.framing import frame, read_frame

        t0 = time.perf_counter_ns()
        self.sock.sendall(frame(body))
        data = read_frame(self.sock, self.buffer)
        return (time.perf_counter_ns() - t0) / 1e3, data

    def close(self) -> None:
        self.sock.close()


class SdkTcp:
    """The client SDK over TCP, timed around ``act()`` (encoding and decoding included)."""

    def __init__(self, url: str) -> None:
        from s2loop_client import PolicyClient

        self.policy = PolicyClient(url, "cartpole", transport="tcp", timeout_s=10)

    def roundtrip(self, observation: np.ndarray) -> tuple[float, Any]:
        t0 = time.perf_counter_ns()
        answer = self.policy.act(observation)
        return (time.perf_counter_ns() - t0) / 1e3, answer

    def close(self) -> None:
        self.policy.close()


#: name -> (what it measures, the floor it is compared with)
TRANSPORTS = {
    "floor_http": "floor: bare FastAPI constant, HTTP",
    "floor_asgi": "floor: plain ASGI constant, HTTP",
    "floor_ws": "floor: bare FastAPI constant, WebSocket",
    "floor_ws_echo": "floor: plain uvicorn WebSocket echo",
    "floor_tcp": "floor: TCP constant frame",
    "act_http": "/v1/act, HTTP JSON",
    "act_http_msgpack": "/v1/act, HTTP msgpack",
    "act_ws": "/v1/act/ws, WebSocket JSON",
    "act_ws_msgpack": "/v1/act/ws, WebSocket msgpack",
    "act_tcp": "TCP endpoint (bare socket client)",
    "sdk_tcp": "TCP endpoint through PolicyClient",
    "batch": "/v1/act/batch (256 obs), HTTP JSON",
}
FLOOR_OF = {
    "act_http": "floor_asgi", "act_http_msgpack": "floor_asgi", "act_ws": "floor_ws_echo",
    "act_ws_msgpack": "floor_ws_echo", "act_tcp": "floor_tcp", "sdk_tcp": "floor_tcp",
    "floor_http": "floor_asgi", "floor_ws": "floor_ws_echo", "floor_asgi": "floor_asgi",
    "floor_ws_echo": "floor_ws_echo", "floor_tcp": "floor_tcp", "batch": "floor_asgi",
}  # fmt: skip


def measure_transport(floor: Any, server: Any, cfg: SuiteConfig, log: Log = _quiet) -> dict:
    """Every transport and floor, one connection each, in interleaved blocks; bodies are
    encoded before the clock starts (the SDK row alone times its own encoding)."""
    import msgpack
    import orjson

    model = "cartpole"
    pool = env_observations("CartPole-v1", 4096, cfg.seed)
    as_json = [orjson.dumps({"model": model, "observation": o.tolist()}) for o in pool[:512]]
    as_msgpack = [msgpack.packb({"model": model, "observation": o.tolist()}) for o in pool[:512]]
    batches = []
    for i in range(8):
        chunk = pool[(i * cfg.batch_size) % len(pool) :][: cfg.batch_size]
        batches.append(orjson.dumps({"model": model, "observations": chunk.tolist()}))
    clients: dict[str, Any] = {
        "floor_http": HttpBare(floor.url, "/v1/act"),
        "floor_asgi": HttpBare(floor.raw_url, "/v1/act"),
        "floor_ws": WsBare(floor.url),
        "floor_ws_echo": WsBare(floor.raw_url),
        "floor_tcp": TcpBare(floor.tcp_url),
        "act_http": HttpBare(server.url, "/v1/act"),
        "act_http_msgpack": HttpBare(server.url, "/v1/act", "application/msgpack"),
        "act_ws": WsBare(server.url),
        "act_ws_msgpack": WsBare(server.url, binary=True),
        "act_tcp": TcpBare(server.tcp_url),
        "sdk_tcp": SdkTcp(server.tcp_url),
        "batch": HttpBare(server.url, "/v1/act/batch"),
    }
    names = list(TRANSPORTS)
    rtt: dict[str, list[float]] = {k: [] for k in names}
    server_us: dict[str, list[float]] = {k: [] for k in names}
    round_p50: dict[str, list[float]] = {k: [] for k in names}
    batch_answers_ok = True
    j = 0

    def body_of(name: str, i: int) -> Any:
        if name == "batch":
            return batches[i % len(batches)]
        if name == "sdk_tcp":
            return pool[i % len(pool)]
        binary = name.endswith("msgpack") or name in ("act_tcp", "floor_tcp")
        return (as_msgpack if binary else as_json)[i % len(as_json)]

    def server_time(name: str, data: Any) -> float:
        if name == "sdk_tcp":
            return data.timing.server_us
        decoded = orjson.loads(data) if data[:1] == b"{" else msgpack.unpackb(data)
        return decoded["timing"]["server_us"]

    def block(name: str, n: int, keep: bool) -> None:
        nonlocal j, batch_answers_ok
        got = []
        client = clients[name]
        for _ in range(n):
            us, data = client.roundtrip(body_of(name, j))
            j += 1
            got.append(us)
            if keep and not name.startswith("floor"):
                server_us[name].append(server_time(name, data))
            if keep and name == "batch":
                batch_answers_ok &= len(orjson.loads(data)["actions"]) == cfg.batch_size
        if keep:
            rtt[name].extend(got)
            round_p50[name].append(float(np.median(got)))

    def count(name: str) -> int:
        return cfg.batch_block if name == "batch" else cfg.transport_block

    try:
        for name in names:  # warm-up: connections open, caches hot; not kept
            block(name, 3 if name == "batch" else 50, keep=False)
        meter = CpuMeter().start()
        for r in range(cfg.transport_rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                block(name, count(name), keep=True)
            if (r + 1) % max(1, cfg.transport_rounds // 4) == 0:
                log(f"  transport round {r + 1}/{cfg.transport_rounds}")
        cpu = meter.stop()
    finally:
        for client in clients.values():
            client.close()

    stats = {name: summarize_us(rtt[name]) for name in names}
    out: dict[str, Any] = {"transports": {}}
    for name in names:
        s = stats[name]
        floor_name = FLOOR_OF[name]
        fl = stats[floor_name]
        entry = {
            "what": TRANSPORTS[name],
            "rtt_us": s,
            "floor": floor_name,
            "ratio_to_floor": {f"p{p}": ratio(s[f"p{p}"], fl[f"p{p}"]) for p in (50, 90, 99)},
            "ratio_to_fastapi_floor": ratio(s["p50"], stats["floor_http"]["p50"]),
            "server_us": summarize_us(server_us[name]),
            "round_p50_us": round_p50[name],
            "_rtt": rtt[name],
        }
        if name == "batch":
            total_us = float(np.sum(rtt[name]))
            entry["batch_size"] = cfg.batch_size
            entry["obs_per_s_sustained"] = cfg.batch_size * len(rtt[name]) / total_us * 1e6
            entry["obs_per_s_at_p50"] = cfg.batch_size / s["p50"] * 1e6
            entry["answers_complete"] = bool(batch_answers_ok)
        out["transports"][name] = entry
    p50 = {name: stats[name]["p50"] for name in names}
    batch_rate = out["transports"]["batch"]["obs_per_s_sustained"]
    sdk_overhead = p50["sdk_tcp"] - p50["act_tcp"]

    def target(text: str, value: float | None, met: bool) -> dict[str, Any]:
        return {"target": text, "value": value, "met": bool(met)}

    out["targets"] = {
        "act_http_p50_over_fastapi_floor": target(
            "<= 0.98 (the last landing's ratio)",
            ratio(p50["act_http"], p50["floor_http"]),
            p50["act_http"] <= 0.98 * p50["floor_http"],
        ),
        "act_http_p50_over_asgi_floor": target(
            f"<= {TARGET_ACT_OVER_ASGI}",
            ratio(p50["act_http"], p50["floor_asgi"]),
            p50["act_http"] <= TARGET_ACT_OVER_ASGI * p50["floor_asgi"],
        ),
        "ws_msgpack_p50_over_ws_json": target(
            "<= 1.0",
            ratio(p50["act_ws_msgpack"], p50["act_ws"]),
            p50["act_ws_msgpack"] <= p50["act_ws"],
        ),
        "tcp_p50_us": target(
            f"<= {TARGET_TCP_P50_US:g} µs (goal 60)",
            p50["act_tcp"],
            p50["act_tcp"] <= TARGET_TCP_P50_US,
        ),
        "tcp_p50_over_ws_echo_floor": target(
            "<= 0.6",
            ratio(p50["act_tcp"], p50["floor_ws_echo"]),
            p50["act_tcp"] <= 0.6 * p50["floor_ws_echo"],
        ),
        "sdk_overhead_p50_us": target(
            "<= 15 µs (PolicyClient over a bare socket, TCP)",
            sdk_overhead,
            sdk_overhead <= 15.0,
        ),
        "batch_obs_per_s": target(
            f">= {TARGET_BATCH_OBS_PER_S:,.0f}", batch_rate, batch_rate >= TARGET_BATCH_OBS_PER_S
        ),
    }
    out["config"] = {
        "rounds": cfg.transport_rounds,
        "block": cfg.transport_block,
        "batch_block": cfg.batch_block,
        "order": "round-robin, rotated by one each round",
        "model": model,
        "observations": "CartPole-v1 states under random actions",
    }
    out["cpu"] = cpu
    return out


# ------------------------------------------------------------------ 2. backends


def measure_backends(models_dir: Path, cfg: SuiteConfig, log: Log = _quiet) -> dict:
    """Emulator vs float torch reference, in this process, one thread each."""
    import torch

    from agent.reference import ReferenceBackend
    from bench.emulator import _batched, _single
    from hw.artifact import load_artifact
    from hw.emulator import EmulatorBackend

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only settable before any parallel work
        torch.set_num_interop_threads(1)
    import numba

    art = load_artifact("cartpole", models_dir)
    backends = {"emulator": EmulatorBackend(), "reference": ReferenceBackend()}
    for b in backends.values():
        b.load(art)
    pool = env_observations("CartPole-v1", 4096, cfg.seed + 1)
    actions = {k: b.infer(art.name, pool).actions for k, b in backends.items()}
    agreement = float(np.mean(actions["emulator"] == actions["reference"]))
    for b in backends.values():  # warm (numba dispatch, torch allocator)
        for i in range(100):
            b.infer(art.name, pool[i : i + 1])

    single: dict[str, list[dict]] = {k: [] for k in backends}
    for _ in range(cfg.backend_repeats):
        for k, b in backends.items():
            single[k].append(_single(b, art.name, pool, cfg.single_calls[k]))
    log("  single-call latency done")
    batched: dict[str, dict[str, list[dict]]] = {k: {} for k in backends}
    for batch in cfg.backend_batches:
        for _ in range(cfg.backend_repeats):
            for k, b in backends.items():
                r = _batched(b, art.name, pool, batch, cfg.batched_min_time_s)
                batched[k].setdefault(str(batch), []).append(r)
        log(f"  batch {batch} done")
    for b in backends.values():
        b.close()

    out: dict[str, Any] = {"backends": {}}
    for k in backends:
        best_single = min(single[k], key=lambda r: r["median_us"])
        out["backends"][k] = {
            "single": {"best": best_single, "repeats": single[k]},
            "batched": {
                b: {"best": max(runs, key=lambda r: r["per_second"]), "repeats": runs}
                for b, runs in batched[k].items()
            },
        }
    emu = out["backends"]["emulator"]
    largest = str(max(cfg.backend_batches))
    emu_rate = emu["batched"][largest]["best"]["per_second"]
    out["targets"] = {
        "emulator_single_median_us": {
            "target": f"<= {TARGET_EMULATOR_SINGLE_US:g}",
            "value": emu["single"]["best"]["median_us"],
            "met": emu["single"]["best"]["median_us"] <= TARGET_EMULATOR_SINGLE_US,
        },
        "emulator_batched_per_s": {
            "target": f">= {TARGET_EMULATOR_PER_S:,.0f} (batch {largest})",
            "value": emu_rate,
            "met": emu_rate >= TARGET_EMULATOR_PER_S,
        },
    }
    out["model"] = {
        "name": art.name,
        "layer_sizes": art.layer_sizes,
        "input_size": art.input_size,
        "ticks": art.ticks,
    }
    out["action_agreement"] = {"value": agreement, "states": len(pool)}
    out["gpu"] = measure_gpu(models_dir, log=log)
    out["threads"] = {
        "torch": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "numba": numba.config.NUMBA_NUM_THREADS,
    }
    out["config"] = {
        "repeats": cfg.backend_repeats,
        "single_calls": cfg.single_calls,
        "batched_min_time_s": cfg.batched_min_time_s,
        "best": "lowest median (single), highest throughput (batched) of the repeats",
        "path": "Backend.infer (input checks, encoding, network, readout, result object)",
    }
    return out


#: the shipped models the GPU section measures (both CartPole: the paper's figures are)
GPU_MODELS = ("cartpole", "cartpole-dsqn")


class _Nvml:
    """NVML readings of one GPU: power samples and the total-energy counter."""

    def __init__(self, index: int) -> None:
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def idle_power_w(self, seconds: float = 2.0) -> float:
        """Median of power samples (W) over ``seconds`` with nothing running."""
        samples = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            samples.append(self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3)
            time.sleep(0.05)
        return float(np.median(samples))

    def energy(
        self, call: Callable[[int], Any], per_call: int, seconds: float, idle_w: float
    ) -> dict[str, Any]:
        """Energy per inference of ``call(i)`` (``per_call`` inferences each) run back to
        back for at least ``seconds`` (the counter is coarse): total, and dynamic (the
        part above ``idle_w``)."""
        calls = 0
        e0 = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # mJ
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or calls < 100:
            call(calls)
            calls += 1
        elapsed = time.perf_counter() - t0
        joules = (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - e0) / 1e3
        n = calls * per_call
        return {
            "inferences": n,
            "seconds": elapsed,
            "mean_power_w": joules / elapsed,
            "energy_j_per_inference": joules / n,
            "dynamic_energy_j_per_inference": max(0.0, joules / elapsed - idle_w) * elapsed / n,
        }

    def close(self) -> None:
        self.nvml.nvmlShutdown()


def _infer_again(backend: Any, name: str, observations: np.ndarray, _call: int) -> None:
    backend.infer(name, observations)


def measure_gpu(
    models_dir: Path | None,
    calls: int = 2_000,
    batch: int = 4_096,
    min_time_s: float = 2.0,
    energy_s: float = 5.0,
    log: Log = _quiet,
) -> dict:
    """The paper's GPU axis: the float reference on CUDA as a control loop and a batch
    job would use it. Per model of :data:`GPU_MODELS`: batch-1 latency with the network
    in one captured CUDA graph (and eager, one launch per op, for contrast), throughput
    at ``batch``, and through NVML the energy per inference, total and above idle, at
    batch 1 and at ``batch``; the GPU's idle power and name; our chip estimates
    (``hw.mapping``) of the same models. Without a CUDA GPU: says so, measures nothing."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA GPU visible to torch on this machine"}
    from agent.reference import ReferenceBackend
    from bench.emulator import _batched, _single
    from clients.demo import shipped_models_dir
    from hw.artifact import load_artifact
    from hw.mapping import map_network

    models_dir = models_dir or shipped_models_dir()
    out: dict[str, Any] = {
        "available": True,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch": batch,
        "models": {},
    }
    try:
        nvml: _Nvml | None = _Nvml(torch.cuda.current_device())
    except ImportError:
        nvml = None
        out["energy"] = {"measured": False, "reason": "nvidia-ml-py is not installed"}
    try:
        if nvml is not None:
            out["idle_power_w"] = idle_w = nvml.idle_power_w()
            out["energy"] = {
                "measured": True,
                "how": "NVML total-energy counter over back-to-back calls of at least "
                f"{energy_s:g} s; dynamic = (mean power - idle power) x time / inferences; "
                "idle: median of NVML power samples over 2 s with nothing running",
            }
        pool = env_observations("CartPole-v1", 1024, 7)
        source = np.tile(pool, (-(-batch // len(pool)), 1))[:batch]
        for name in GPU_MODELS:
            if not (models_dir / f"{name}.s2l").is_file():
                continue
            art = load_artifact(name, models_dir)
            chip = map_network(art)
            entry: dict[str, Any] = {
                "chip": {
                    "ticks": chip.ticks,
                    "chip_time_s": chip.chip_time_s,
                    "energy_j": chip.energy_j,
                    "energy_dynamic_j": chip.energy_dynamic_j,
                },
            }
            with ReferenceBackend("cuda") as be:  # one CUDA graph per batch bucket
                be.load(art)
                for i in range(50):  # captures the graphs, warms the allocator
                    be.infer(name, pool[i : i + 1])
                entry["graph_single"] = _single(be, name, pool, calls)
                entry["graph_batched"] = _batched(be, name, source, batch, min_time_s)
                if nvml is not None:
                    for key, x in (("energy_single", pool[:1]), ("energy_batched", source)):
                        entry[key] = nvml.energy(
                            functools.partial(_infer_again, be, name, x), len(x), energy_s, idle_w
                        )
            with ReferenceBackend("cuda", static=False) as be:  # one launch per op
                be.load(art)
                for i in range(20):
                    be.infer(name, pool[i : i + 1])
                entry["eager_single"] = _single(be, name, pool, max(50, calls // 10))
            out["models"][name] = entry
            log(f"  GPU {name} done")
    finally:
        if nvml is not None:
            nvml.close()
    return out


# ------------------------------------------------------------------ 3. closed loop


class StepRun:
    """One closed-loop measurement that can be advanced in chunks of whole episodes,
    so several can be interleaved (:meth:`advance`), then summarised (:meth:`summary`).

    Deadline misses are split by cause as far as the client can tell: the round trip
    alone took longer than the period, or it did not (then the step started late or
    the client's own work, JSON and wake-up, used the rest of the period)."""

    def __init__(
        self,
        url: str,
        env_id: str,
        *,
        transport: str,
        rate_hz: float | None,
        steps: int,
        seed: int,
        server: str = "s2loop",
    ) -> None:
        from clients.loop import LoopConfig

        self.base = LoopConfig(
            env_id=env_id, url=url, transport=transport, rate_hz=rate_hz, seed=seed
        )
        self.target = steps
        self.server = server
        self.rows: list[tuple] = []
        self.episodes: list[Any] = []
        self.aborted: str | None = None
        self.wall_s = 0.0
        self._guess = 500.0 if env_id.startswith("CartPole") else 100.0

    @property
    def done(self) -> bool:
        return len(self.rows) >= self.target or self.aborted is not None

    def advance(self, steps: int) -> None:
        """Run whole episodes until about ``steps`` more steps (or the target) are done."""
        from clients.loop import run_client

        goal = min(self.target, len(self.rows) + steps)
        t0 = time.perf_counter()
        while len(self.rows) < goal and self.aborted is None:
            lengths = [e.steps for e in self.episodes]
            mean_len = float(np.mean(lengths)) if lengths else self._guess
            n = max(1, math.ceil((goal - len(self.rows)) / max(mean_len, 1.0)))
            cfg = replace(self.base, episodes=n, seed=self.base.seed + len(self.episodes))
            rows, episodes, self.aborted = run_client(cfg, 0)
            self.rows.extend(rows)
            self.episodes.extend(episodes)
        self.wall_s += time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        from clients.loop import STEP_FIELDS

        col = {name: i for i, name in enumerate(STEP_FIELDS)}
        rows = self.rows
        rate_hz = self.base.rate_hz
        rtt = [r[col["rtt_us"]] for r in rows]
        late = sum(bool(r[col["late"]]) for r in rows)
        period_us = 1e6 / rate_hz if rate_hz else math.inf
        late_rtt = sum(bool(r[col["late"]]) and r[col["rtt_us"]] > period_us for r in rows)
        lengths = [e.steps for e in self.episodes]
        returns = [e.total_reward for e in self.episodes]
        return {
            "server": self.server,
            "env_id": self.base.env_id,
            "transport": self.base.transport,
            "rate_hz": rate_hz,
            "steps": len(rows),
            "episodes": len(self.episodes),
            "wall_s": self.wall_s,
            "rtt_us": summarize_us(rtt),
            "server_us": summarize_us([r[col["server_us"]] for r in rows]),
            "backend_us": summarize_us([r[col["backend_us"]] for r in rows]),
            "deadline_misses": late if rate_hz else None,
            "misses_rtt_over_period": late_rtt if rate_hz else None,
            "miss_rate": (late / len(rows) if rows else None) if rate_hz else None,
            "errors": sum(1 for r in rows if r[col["error"]]),
            "fallback_steps": sum(bool(r[col["fallback"]]) for r in rows),
            "episode_length_mean": float(np.mean(lengths)) if lengths else None,
            "episode_lengths": lengths,
            "return_mean": float(np.mean(returns)) if returns else None,
            "aborted": self.aborted,
            "_rtt": rtt,  # raw per-step round trips for the plots; dropped from the JSON
        }


def run_steps(url: str, env_id: str, **kwargs: Any) -> dict[str, Any]:
    """Whole episodes through the server until at least ``steps`` steps are done."""
    run = StepRun(url, env_id, **kwargs)
    run.advance(run.target)
    return run.summary()


def measure_closed_loop(
    url: str,
    cfg: SuiteConfig,
    log: Log = _quiet,
    floor_url: str | None = None,
    tcp_url: str | None = None,
) -> dict:
    """Every run of the plan advances by about ``loop_chunk_s`` of steps in turn
    (round-robin), so load drift on the machine hits all runs alike."""
    plan: list[tuple[str, str, str, float | None, int]] = []  # server, env, transport, rate, n
    for env_id in cfg.loop_envs:
        plan += [("s2loop", env_id, t, None, cfg.loop_free_steps) for t in cfg.loop_transports]
        plan += [("s2loop", env_id, "http", rate, n) for rate, n in cfg.loop_rates.items()]
        if env_id.startswith("CartPole") and cfg.loop_ws_target_steps:
            plan.append(("s2loop", env_id, "ws", TARGET_RATE_HZ, cfg.loop_ws_target_steps))
    if floor_url and cfg.loop_floor_target_steps:
        plan.append(("floor", "CartPole-v1", "http", TARGET_RATE_HZ, cfg.loop_floor_target_steps))
    if tcp_url and cfg.loop_tcp_1khz_steps:  # a 1 kHz loop over the TCP endpoint
        plan.append(("s2loop", "CartPole-v1", "tcp", 1000.0, cfg.loop_tcp_1khz_steps))
    runs: list[StepRun] = []
    for i, (server, env_id, transport, rate, steps) in enumerate(plan):
        where = floor_url if server == "floor" else (tcp_url if transport == "tcp" else url)
        run = StepRun(
            where,
            env_id,
            transport=transport,
            rate_hz=rate,
            steps=steps,
            seed=cfg.seed + 1000 * (i + 1),
            server=server,
        )
        runs.append(run)
    t0 = time.perf_counter()
    passes = 0
    while not all(r.done for r in runs):
        for run in runs:
            if not run.done:
                rate = run.base.rate_hz
                run.advance(max(100, round(rate * cfg.loop_chunk_s)) if rate else run.target)
        passes += 1
        done = sum(len(r.rows) for r in runs)
        total = sum(r.target for r in runs)
        log(f"  pass {passes}: {done:,} of {total:,} steps, {time.perf_counter() - t0:.0f}s")
    summaries = [r.summary() for r in runs]
    for r in summaries:
        pacing = f"{r['rate_hz']:g} Hz" if r["rate_hz"] else "unpaced"
        log(
            f"  {r['server']} {r['env_id']} {r['transport']} {pacing}: {r['steps']} steps, "
            f"p50 {r['rtt_us']['p50']:.0f} us, misses {r['deadline_misses']}"
        )
    by_env: dict[str, list[int]] = {}
    for r in summaries:
        if r["server"] == "s2loop":  # the floor's constant action ends episodes at once
            by_env.setdefault(r["env_id"], []).extend(r["episode_lengths"])
    target = [
        r
        for r in summaries
        if r["rate_hz"] == TARGET_RATE_HZ
        and r["env_id"].startswith("CartPole")
        and r["server"] == "s2loop"
        and r["transport"] == "http"
    ]
    out: dict[str, Any] = {
        "runs": summaries,
        "episode_length_mean": {e: float(np.mean(v)) for e, v in by_env.items() if v},
        "episodes": {e: len(v) for e, v in by_env.items()},
    }
    if target:
        t = target[0]
        full = t["steps"] >= TARGET_RATE_STEPS
        out["targets"] = {
            "zero_misses_200hz_10k_steps": {
                "target": f"0 misses at {TARGET_RATE_HZ:g} Hz over {TARGET_RATE_STEPS:,} steps",
                "value": f"{t['deadline_misses']} misses in {t['steps']:,} steps",
                "met": bool(full and t["deadline_misses"] == 0 and t["errors"] == 0),
                "steps_enough": full,
            }
        }
    tcp = [r for r in out["runs"] if r["transport"] == "tcp" and r["rate_hz"] == 1000.0]
    if tcp:
        t = tcp[0]
        out.setdefault("targets", {})["tcp_1khz_miss_rate"] = {
            "target": f"< 0.1% at 1 kHz over TCP, {TARGET_RATE_STEPS:,} steps (goal)",
            "value": f"{t['deadline_misses']} misses in {t['steps']:,} steps "
            f"({100 * (t['miss_rate'] or 0):.2f}%)",
            "met": bool(t["steps"] >= TARGET_RATE_STEPS and (t["miss_rate"] or 0) < 1e-3),
            "steps_enough": t["steps"] >= TARGET_RATE_STEPS,
        }
    return out


# ------------------------------------------------------------------ 4. scaling


def _client_group(job: dict[str, Any]) -> dict[str, Any]:
    """One client process's share of a scaling run (runs in a pool process): wait for the
    common start time, run ``clients`` loops as threads, return steps, RTTs and CPU."""
    from clients.loop import LoopConfig, run_loops

    cfg = LoopConfig(
        env_id=job["env_id"],
        url=job["url"],
        clients=job["clients"],
        episodes=job["episodes"],
        max_steps=job["max_steps"],
        seed=job["seed"],
    )
    delay = job["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    cpu0 = time.process_time()
    t0 = time.time()
    res = run_loops(cfg)
    return {
        "start": t0,
        "end": time.time(),
        "steps": len(res.rows),
        "rtt": res.column("rtt_us"),
        "errors": sum(1 for e in res.column("error") if e),
        "cpu_s": time.process_time() - cpu0,
    }


def _warm_client(_: int) -> int:
    import gymnasium  # noqa: F401

    import clients.loop  # noqa: F401

    return os.getpid()


def default_client_procs() -> int:
    """Client processes for the scaling runs: half the CPUs, at least one (a client
    process with a few loops uses most of a core: Gymnasium, JSON and sockets in Python)."""
    return max(1, (os.cpu_count() or 1) // 2)


def measure_scaling(servers: dict[int, Any], cfg: SuiteConfig, log: Log = _quiet) -> dict:
    """``servers``: workers -> running ServerProcess. K clients are spread over
    ``min(K, client_procs)`` pool processes (threads inside each), all starting at one
    agreed wall-clock time; steps/s = all steps / (last end - start)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    procs = cfg.scaling_client_procs or default_client_procs()
    pooled: dict[tuple[int, int], dict[str, Any]] = {}
    ctx = mp.get_context("spawn")  # no fork of a process that holds numba/torch threads
    with ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as pool:
        list(pool.map(_warm_client, range(procs)))
        for rnd in range(cfg.scaling_rounds):
            for k in cfg.scaling_clients:
                for w, server in servers.items():
                    per_client = max(100, math.ceil(cfg.scaling_steps / k))
                    max_steps = min(500, per_client)
                    groups = min(k, procs)
                    start_at = time.time() + 0.1
                    jobs = [
                        {
                            "env_id": cfg.scaling_env,
                            "url": server.url,
                            "clients": k // groups + (1 if g < k % groups else 0),
                            "episodes": math.ceil(per_client / max_steps),
                            "max_steps": max_steps,
                            "seed": cfg.seed + 50_000 + 10_000 * rnd + 1000 * g,
                            "start_at": start_at,
                        }
                        for g in range(groups)
                    ]
                    meter = CpuMeter([server.proc.pid]).start()
                    results = list(pool.map(_client_group, jobs))
                    cpu = meter.stop()
                    wall = max(r["end"] for r in results) - start_at
                    steps = sum(r["steps"] for r in results)
                    # over the meter's interval, like the server and machine figures
                    cpu["client_cores"] = sum(r["cpu_s"] for r in results) / cpu["wall_s"]
                    p = pooled.setdefault(
                        (w, k), {"steps": 0, "wall_s": 0.0, "rtt": [], "errors": 0, "cpu": []}
                    )
                    p["steps"] += steps
                    p["wall_s"] += wall
                    for r in results:
                        p["rtt"].extend(r["rtt"])
                        p["errors"] += r["errors"]
                    p["cpu"].append(cpu)
                    log(
                        f"  round {rnd + 1} workers {w} clients {k:2d}: {steps / wall:,.0f} steps/s"
                    )
    rows = []
    for (w, k), p in sorted(pooled.items()):
        cpu = {
            key: float(np.mean([c[key] for c in p["cpu"]]))
            for key in ("server_cores", "client_cores", "machine_busy_cores")
        }
        rows.append(
            {
                "workers": w,
                "clients": k,
                "client_processes": min(k, procs),
                "steps": p["steps"],
                "wall_s": p["wall_s"],
                "steps_per_s": p["steps"] / p["wall_s"] if p["wall_s"] else None,
                "rtt_us": summarize_us(p["rtt"]),
                "errors": p["errors"],
                **cpu,
            }
        )
    return {
        "rows": rows,
        "config": {
            "env_id": cfg.scaling_env,
            "transport": "http",
            "steps_per_configuration_and_round": cfg.scaling_steps,
            "rounds": cfg.scaling_rounds,
            "client_processes": procs,
            "clients": (
                f"spread over up to {procs} client process(es) (half the CPUs), "
                "threads inside each, one keep-alive connection per client"
            ),
            "order": "for each client count, the servers of each worker count back to back",
        },
    }


# ------------------------------------------------------------------ 5. chip


def chip_estimates(models_dir: Path, episode_lengths: dict[str, float]) -> dict:
    from hw.artifact import load_artifact
    from hw.mapping import ChipSpec, map_network

    models = []
    for name, env_id in (("cartpole", "CartPole-v1"), ("acrobot", "Acrobot-v1")):
        art = load_artifact(name, models_dir)
        rep = map_network(art)
        length = episode_lengths.get(env_id)
        models.append(
            {
                "model": name,
                "env_id": env_id,
                "layer_sizes": art.layer_sizes,
                "ticks": rep.ticks,
                "sys_tick_s": rep.chip.sys_tick_s,
                "pes_used": rep.pes_used,
                "copies_per_chip": rep.copies_per_chip,
                "chip_time_s": rep.chip_time_s,
                "max_control_rate_hz": 1.0 / rep.chip_time_s,
                "energy_j": rep.energy_j,
                "energy_batched_j": rep.energy_batched_j,
                "energy_dynamic_j": rep.energy_dynamic_j,
                "episode_length_mean": length,
                "episode_chip_time_s": rep.chip_time_s * length if length else None,
                "episode_energy_j": rep.energy_j * length if length else None,
                "episode_energy_dynamic_j": rep.energy_dynamic_j * length if length else None,
            }
        )
    chip = ChipSpec()
    return {
        "models": models,
        "paper": PAPER,
        "chip_spec": asdict(chip),
        "estimate": True,
    }


# ------------------------------------------------------------------ the run


def _copy_models(src: Path, dst: Path) -> dict[str, str]:
    dst.mkdir(parents=True, exist_ok=True)
    digests = {}
    for path in sorted(src.glob("*.s2l")):
        data = path.read_bytes()
        (dst / path.name).write_bytes(data)
        digests[path.name] = hashlib.sha256(data).hexdigest()
    if not digests:
        raise FileNotFoundError(f"no *.s2l models in {src}")
    return digests


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) process. The backends section imports torch,
    and a process holding torch's objects pays ~10x longer garbage collections: the
    closed loops run where a real controller would, in a process without it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


@contextlib.contextmanager
def _section(report: dict, name: str, log: Log) -> Iterator[None]:
    log(f"[{name}]")
    t0 = time.perf_counter()
    before = loadavg()
    yield
    report["timing"][name] = {
        "seconds": time.perf_counter() - t0,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


def run_suite(cfg: SuiteConfig, command: str = "", log: Log = _quiet) -> dict[str, Any]:
    """Run the chosen sections; returns the report (see :mod:`bench.results`)."""
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    from clients.demo import shipped_models_dir

    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "suite": "s2loop bench suite",
        "command": command,
        "date_utc": started.isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("models_dir", "out")},
        "machine": machine_info(),
        "git": git_info(),
        "timing": {},
        "loadavg_start": loadavg(),
    }
    report["config"]["loop_rates"] = {str(k): v for k, v in cfg.loop_rates.items()}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s2loop-bench-") as tmp_name:
        tmp = Path(tmp_name)
        models_dir = tmp / "models"
        report["models"] = _copy_models(cfg.models_dir or shipped_models_dir(), models_dir)
        servers = Servers(models_dir, tmp, cfg.ready_timeout_s, log)
        try:
            if "transport" in cfg.sections:
                with _section(report, "transport", log):
                    floor, s2 = servers.floor(), servers.s2loop(1)
                    report["transport"] = measure_transport(floor, s2, cfg, log)
            if "backends" in cfg.sections:
                with _section(report, "backends", log):
                    report["backends"] = in_child(measure_backends, models_dir, cfg, log)
            if "closed_loop" in cfg.sections:
                with _section(report, "closed_loop", log):
                    floor_url = servers.floor().url if cfg.loop_floor_target_steps else None
                    s2 = servers.s2loop(1)
                    report["closed_loop"] = in_child(
                        measure_closed_loop, s2.url, cfg, log, floor_url, s2.tcp_url
                    )
            if "scaling" in cfg.sections:
                with _section(report, "scaling", log):
                    by_workers = {w: servers.s2loop(w) for w in cfg.scaling_workers}
                    report["scaling"] = measure_scaling(by_workers, cfg, log)
            if "chip" in cfg.sections:
                with _section(report, "chip", log):
                    lengths = report.get("closed_loop", {}).get("episode_length_mean", {})
                    report["chip"] = chip_estimates(models_dir, lengths)
        finally:
            report["server_exit_codes"] = servers.close()
    report["seconds"] = time.perf_counter() - t_start
    report["loadavg_end"] = loadavg()
    return report


def strip_raw(report: dict[str, Any]) -> dict[str, Any]:
    """The report without raw per-step samples (keys starting with '_')."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not str(k).startswith("_")}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(report)
