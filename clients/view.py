"""Rerun views of closed-loop runs (``s2loop run --view``) and of flight recordings
(``s2loop replay DIR --view``). Rerun is the optional extra ``view``
(``pip install 's2loop[view]'``); nothing here is imported without it.

Where a view goes (:func:`parse_target`): ``desktop`` spawns the desktop viewer,
``web`` serves the web viewer on a port and prints its URL, ``FILE.rrd`` saves a
recording to open later (``rerun FILE.rrd``).

Entities of a run, one row per step (entity roots ``/client<k>`` when several
clients run at once; each client's steps on its own timelines):

- ``/env/frame``: the environment's ``rgb_array`` render of the state the policy saw
  (JPEG-compressed);
- ``/env/observation/<name>``: each observation value sent;
- ``/policy/q_values`` (a bar chart), ``/policy/action``;
- ``/latency/round_trip_us``, ``/latency/server_us``, ``/chip/time_ms`` (the
  server's estimate);
- with traces on: ``/spikes/input`` and ``/spikes/<layer>`` (tick x neuron rasters,
  1 where the neuron fired) and ``/spikes/output_q`` (tick x action: Q after each tick).

Timelines: ``step`` (the client's steps, counted across its episodes) and
``episode``.

Rerun's usage analytics: Rerun's viewer sends anonymous usage events unless told not
to. Unless ``S2LOOP_VIEW_ANALYTICS=1`` (the user turns them on), s2loop turns them
off before it starts anything of Rerun's: ``rerun analytics disable`` (Rerun's own
switch, read by the desktop viewer and by the SDK's web viewer server); and since
Rerun's web viewer (the Wasm build in the browser) sends its events with no switch to
turn them off, s2loop serves it behind a Content-Security-Policy (:data:`CSP`) that lets
the page reach only its own files and the recording: the browser refuses the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "Rerun is not installed: pip install 's2loop[view]' (or rerun-sdk)"
ANALYTICS_ENV = "S2LOOP_VIEW_ANALYTICS"
DEFAULT_WEB_PORT = 9090

#: observation names of the environments s2loop ships models for (Gymnasium's docs)
OBSERVATION_NAMES = {
    "CartPole": ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"),
    "Acrobot": ("cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2", "theta1_dot",
                "theta2_dot"),
}  # fmt: skip


class ViewUnavailable(RuntimeError):
    """Rerun is missing, or the view cannot start."""


def rerun() -> Any:
    """The ``rerun`` module, or :class:`ViewUnavailable` saying how to install it."""
    try:
        import rerun as rr
    except ImportError:
        raise ViewUnavailable(INSTALL_HINT) from None
    return rr


@dataclass(frozen=True)
class ViewTarget:
    kind: str  # "desktop", "web" or "file"
    path: Path | None = None
    port: int = DEFAULT_WEB_PORT

    def describe(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


def parse_target(text: str, port: int = DEFAULT_WEB_PORT) -> ViewTarget:
    """``desktop``, ``web`` or a path ending in ``.rrd``; ValueError otherwise."""
    if text in ("", "desktop"):
        return ViewTarget("desktop")
    if text == "web":
        return ViewTarget("web", port=port)
    if text.endswith(".rrd"):
        return ViewTarget("file", Path(text))
    raise ValueError(f"--view takes 'desktop', 'web' or a FILE.rrd path, got {text!r}")


def observation_names(env_id: str, size: int) -> list[str]:
    names = OBSERVATION_NAMES.get(env_id.split("/")[-1].split("-v")[0])
    if names is None or len(names) != size:
        return [f"obs_{i}" for i in range(size)]
    return list(names)


def analytics_off() -> bool:
    """Turn Rerun's usage analytics off with its own switch, unless the user set
    ``S2LOOP_VIEW_ANALYTICS=1``. Returns whether they are off by s2loop's doing."""
    if os.environ.get(ANALYTICS_ENV) == "1":
        return False
    cmd = [sys.executable, "-m", "rerun_cli", "analytics", "disable"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ViewUnavailable(f"cannot turn Rerun's analytics off: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip()[-300:]
        raise ViewUnavailable(f"'rerun analytics disable' failed: {why}")
    return True


def open_stream(target: ViewTarget, application_id: str, recording_id: str) -> tuple[Any, str]:
    """A Rerun recording stream sending to ``target``; returns it and where to look
    (the file, the web viewer's URL, or 'desktop viewer')."""
    rr = rerun()
    analytics_off()
    rec = rr.RecordingStream(application_id, recording_id=recording_id)
    if target.kind == "file":
        assert target.path is not None
        target.path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(target.path)
        return rec, str(target.path)
    if target.kind == "desktop":
        headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if sys.platform.startswith("linux") and headless:
            raise ViewUnavailable(
                "no display for the desktop viewer (DISPLAY and WAYLAND_DISPLAY are unset): "
                "use --view web or --view FILE.rrd"
            )
        here = Path(sys.executable).parent  # rerun-sdk installs its viewer beside python
        if shutil.which("rerun") is None and (here / "rerun").exists():
            os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"
        try:
            rec.spawn()
        except Exception as exc:  # no display, no viewer binary, ...
            raise ViewUnavailable(f"cannot spawn the Rerun viewer: {exc}") from None
        return rec, "the Rerun desktop viewer"
    grpc_port = _free_port()  # Rerun's default port may be taken
    uri = rec.serve_grpc(grpc_port=grpc_port)
    if os.environ.get(ANALYTICS_ENV) == "1":
        rr.serve_web_viewer(web_port=target.port, open_browser=False, connect_to=uri)
    else:
        inner = _free_port()
        rr.serve_web_viewer(web_port=inner, open_browser=False, connect_to=uri)
        _start_quiet_proxy(target.port, inner, grpc_port)
    return rec, f"http://127.0.0.1:{target.port}/?url={uri}"


#: what the web viewer's page may reach: its own files and the recording's gRPC endpoint
#: (the browser refuses the rest: the viewer's usage analytics, which Rerun's web build
#: sends with no switch to turn them off, its update check, remote fonts and examples)
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self' http://127.0.0.1:{grpc_port}"
)


def _start_quiet_proxy(port: int, inner: int, grpc_port: int) -> Any:
    """Serve Rerun's web viewer (its own server on ``inner``) on ``port`` with
    :data:`CSP`, in a daemon thread; returns the server."""
    import http.client
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    policy = CSP.format(grpc_port=grpc_port)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", inner, timeout=30)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in (
                        "connection",
                        "transfer-encoding",
                        "content-security-policy",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Security-Policy", policy)
                self.end_headers()
                while chunk := resp.read(1 << 16):
                    self.wfile.write(chunk)
            finally:
                conn.close()

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise ViewUnavailable(f"cannot serve the web viewer on port {port}: {exc}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="s2loop-viewer", daemon=True).start()
    return server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def close_stream(rec: Any) -> None:
    """Flush; a file is finalized (its footer written) and readable at once."""
    rec.flush()
    rec.disconnect()


def raster(pairs: Any, ticks: int, size: int) -> np.ndarray:
    """[tick, neuron] pairs as a dense uint8 [ticks, size] raster."""
    out = np.zeros((ticks, size), np.uint8)
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(arr):
        out[arr[:, 0], arr[:, 1]] = 1
    return out


def log_trace(rec: Any, root: str, trace: Any, input_size: int | None = None) -> None:
    """A trace (SDK :class:`~s2loop_client.contract.Trace` or its wire map) as
    ``/spikes/...`` tensors under ``root``."""
    rr = rerun()
    get = trace.get if isinstance(trace, dict) else lambda k: getattr(trace, k)
    ticks = int(get("ticks"))
    layers = get("layers")
    pairs_in = np.asarray(get("input"), dtype=np.int64).reshape(-1, 2)
    n_in = input_size or (int(pairs_in[:, 1].max()) + 1 if len(pairs_in) else 1)
    rec.log(
        f"{root}spikes/input",
        rr.Tensor(raster(pairs_in, ticks, n_in), dim_names=("tick", "neuron"), value_range=(0, 1)),
    )
    for lay in layers:
        name, size, spikes = (
            (lay["name"], lay["size"], lay["spikes"])
            if isinstance(lay, dict)
            else (lay.name, lay.size, lay.spikes)
        )
        rec.log(
            f"{root}spikes/{name}",
            rr.Tensor(
                raster(spikes, ticks, int(size)), dim_names=("tick", "neuron"), value_range=(0, 1)
            ),
        )
    q = np.asarray(get("output_q"), dtype=np.float32)
    rec.log(f"{root}spikes/output_q", rr.Tensor(q, dim_names=("tick", "action")))


def run_blueprint(layers: list[str] | None = None, root: str = "") -> Any:
    """The default layout of a run's view: the frame, the Q-values and the observation
    on top; the spike rasters (with traces) in the middle; action, latency and chip
    time below. ``layers``: the traced layers' names (None: no trace row)."""
    import rerun.blueprint as rrb

    top = rrb.Horizontal(
        rrb.Spatial2DView(origin=f"/{root}env/frame", name="environment"),
        rrb.BarChartView(origin=f"/{root}policy/q_values", name="Q-values"),
        rrb.TimeSeriesView(origin=f"/{root}env/observation", name="observation"),
        column_shares=[2, 1, 2],
    )
    bottom = rrb.Horizontal(
        rrb.TimeSeriesView(origin=f"/{root}policy/action", name="action"),
        rrb.TimeSeriesView(origin=f"/{root}latency", name="latency (µs)"),
        rrb.TimeSeriesView(origin=f"/{root}chip", name="chip time (ms, estimate)"),
    )
    rows: list[Any] = [top]
    if layers:
        # rasters drawn as neuroscience draws them: time (tick) across, neurons down
        across = rrb.TensorSliceSelection(width=0, height=1)
        rasters = [
            rrb.TensorView(
                origin=f"/{root}spikes/{name}", name=f"spikes: {name}", slice_selection=across
            )
            for name in ["input", *layers]
        ]
        rasters.append(
            rrb.TensorView(
                origin=f"/{root}spikes/output_q", name="Q after each tick", slice_selection=across
            )
        )
        rows.append(rrb.Horizontal(*rasters))
    rows.append(bottom)
    return rrb.Blueprint(rrb.Vertical(*rows), collapse_panels=True)


class LoopView:
    """Logs the steps of ``s2loop run`` loops to one Rerun recording (thread-safe: each
    client's thread sets its own time, Rerun keeps time per thread)."""

    def __init__(
        self,
        target: ViewTarget,
        *,
        env_id: str,
        run_id: str,
        clients: int = 1,
        observation_size: int | None = None,
        input_size: int | None = None,
    ) -> None:
        self.rr = rerun()
        # frames are rgb_array renders: no window, so no display for pygame (SDL) to open
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        self.target = target
        self.rec, self.where = open_stream(target, "s2loop", f"run-{run_id}")
        self.clients = clients
        self.env_id = env_id
        self.names = observation_names(env_id, observation_size) if observation_size else None
        self.input_size = input_size
        self._lock = threading.Lock()
        self._blueprint_sent = False

    def root(self, client: int) -> str:
        return f"client{client}/" if self.clients > 1 else ""

    def step(
        self,
        *,
        client: int,
        step: int,
        episode: int,
        observation: Any,
        frame: np.ndarray | None,
        answer: Any | None,
        rtt_us: float,
    ) -> None:
        """One step: the observation sent, the frame of that state, and the answer (None:
        the step got no action)."""
        rr, rec, root = self.rr, self.rec, self.root(client)
        rec.set_time("step", sequence=step)
        rec.set_time("episode", sequence=episode)
        if frame is not None:
            rec.log(f"{root}env/frame", rr.Image(frame).compress(jpeg_quality=80))
        obs = np.asarray(observation, dtype=np.float64).ravel()
        if self.names is None or len(self.names) != len(obs):
            with self._lock:
                self.names = observation_names(self.env_id, len(obs))
        for name, value in zip(self.names, obs, strict=True):
            rec.log(f"{root}env/observation/{name}", rr.Scalars(value))
        if answer is None:
            return
        rec.log(f"{root}policy/q_values", rr.BarChart(np.asarray(answer.q_values, np.float32)))
        rec.log(f"{root}policy/action", rr.Scalars(answer.action))
        rec.log(f"{root}latency/round_trip_us", rr.Scalars(rtt_us))
        rec.log(f"{root}latency/server_us", rr.Scalars(answer.timing.server_us))
        if answer.timing.chip_time_s is not None:
            rec.log(f"{root}chip/time_ms", rr.Scalars(answer.timing.chip_time_s * 1e3))
        trace = getattr(answer, "trace", None)
        if trace is not None:
            log_trace(rec, root, trace, self.input_size)
        if not self._blueprint_sent and self.clients == 1:
            with self._lock:  # the layout, once the first answer names the layers
                self._blueprint_sent = True
            layers = None if trace is None else [lay.name for lay in trace.layers]
            rec.send_blueprint(run_blueprint(layers))

    def close(self) -> None:
        close_stream(self.rec)


# ----------------------------------------------------------------------------- recordings


def _read_table(folder: Path, kind: str) -> Any:
    """Every ``KIND-*.parquet`` of a flight-recorder folder as one table, or None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob(f"{kind}-*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("time")


def log_recording(
    rec: Any,
    folder: Path,
    *,
    env_ids: dict[str, str] | None = None,
    replayed: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Log a flight recording (``S2LOOP_RECORD_DIR``) to the Rerun stream ``rec`` (see
    :func:`open_stream`); returns the rows logged.

    One row per answered observation, in time order, on the timelines ``step`` (the
    row's place in the recording), ``episode`` (the client's ``episode_id``, numbered
    in order of appearance) and ``episode_step`` (its recorded ``step``). Entities as
    a run's (``/env/observation/<name>``, ``/policy/q_values``, ``/policy/action``,
    ``/latency/server_us``, ``/spikes/...`` for traced answers), and beside them
    ``/shadow/q_values``, ``/shadow/action``, ``/shadow/agree`` (1 or 0) for rows a
    shadow model answered too, with a ``/shadow/disagreements`` text line where the
    two chose differently; ``/replay/action`` and ``/replay/agree`` when ``replayed``
    (per model: ``request_ids``, ``actions``) holds the answers of a replay. Several
    models: one entity root ``/<model>`` each. ``env_ids`` (per model) names the
    observation values."""
    import json

    acts = _read_table(folder, "acts")
    if acts is None:
        raise FileNotFoundError(f"no acts-*.parquet files in {folder}")
    shadow_rows: dict[str, dict[str, Any]] = {}
    shadow = _read_table(folder, "shadow")
    if shadow is not None:
        for r in shadow.to_pylist():
            shadow_rows[r["request_id"]] = r
    trace_rows: dict[str, str] = {}
    traces = _read_table(folder, "traces")
    if traces is not None:
        for rid, text in zip(
            traces.column("request_id").to_pylist(), traces.column("trace").to_pylist(), strict=True
        ):
            trace_rows[rid] = text
    replay_by_id: dict[str, int] = {}
    for m in (replayed or {}).values():
        replay_by_id.update(zip(m["request_ids"], (int(a) for a in m["actions"]), strict=True))

    rr = rerun()
    models = sorted(set(acts.column("model").to_pylist()))
    episodes: dict[str, int] = {}
    rows = acts.to_pylist()
    for i, row in enumerate(rows):
        model = row["model"]
        root = f"{model}/" if len(models) > 1 else ""
        ep = row["episode_id"] or "(none)"
        rec.reset_time()  # a row without a recorded step gets no episode_step
        rec.set_time("step", sequence=i)
        rec.set_time("episode", sequence=episodes.setdefault(ep, len(episodes)))
        if row["step"] is not None:
            rec.set_time("episode_step", sequence=int(row["step"]))
        obs = row["observation"]
        names = observation_names((env_ids or {}).get(model, ""), len(obs))
        for name, value in zip(names, obs, strict=True):
            rec.log(f"{root}env/observation/{name}", rr.Scalars(float(value)))
        live_action = int(row["action"])
        rec.log(f"{root}policy/q_values", rr.BarChart(np.asarray(row["q_values"], np.float32)))
        rec.log(f"{root}policy/action", rr.Scalars(live_action))
        rec.log(f"{root}latency/server_us", rr.Scalars(float(row["server_us"])))
        rid = row["request_id"]
        other = shadow_rows.get(rid)
        if other is not None:
            q = np.asarray(other["shadow_q_values"], np.float32)
            rec.log(f"{root}shadow/q_values", rr.BarChart(q))
            rec.log(f"{root}shadow/action", rr.Scalars(int(other["shadow_action"])))
            rec.log(f"{root}shadow/agree", rr.Scalars(int(bool(other["agree"]))))
            if not other["agree"]:
                text = (
                    f"episode {ep} step {row['step']}: live action {live_action}, shadow "
                    f"{other['shadow_action']} (max |Q gap| {other['q_gap']:.3g})"
                )
                rec.log(f"{root}shadow/disagreements", rr.TextLog(text, level="WARN"))
        if rid in replay_by_id:
            rec.log(f"{root}replay/action", rr.Scalars(replay_by_id[rid]))
            rec.log(f"{root}replay/agree", rr.Scalars(int(replay_by_id[rid] == live_action)))
        if rid in trace_rows:
            log_trace(rec, root, json.loads(trace_rows[rid]))
    return len(rows)
