"""Prometheus metrics of one app instance (own registry, so several apps can live in
one process, as in the tests). Label children are cached: the hot path does one
dict lookup and one ``observe`` per metric."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 25 us .. 10 s: emulator answers sit at the low end, board runs at the high end
LATENCY_BUCKETS = (
    25e-6,
    50e-6,
    75e-6,
    100e-6,
    150e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "s2loop_request_seconds",
            "Server handling time of answered inference requests, by route and model",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_seconds = Histogram(
            "s2loop_backend_seconds",
            "Backend compute time per call, by model and backend",
            ("model", "backend"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inferences = Counter(
            "s2loop_inferences",
            "Observations run, by model and backend",
            ("model", "backend"),
            registry=r,
        )
        self.errors = Counter(
            "s2loop_errors", "Requests answered with an error, by kind", ("kind",), registry=r
        )
        self.fallbacks = Counter(
            "s2loop_fallbacks",
            "Requests answered by the fallback backend, by model and reason",
            ("model", "reason"),
            registry=r,
        )
        self.queue_depth = Gauge(
            "s2loop_queue_depth",
            "Backend calls submitted to a worker thread and not finished, by backend role",
            ("role",),
            registry=r,
        )
        self.reloads = Counter(
            "s2loop_reloads", "Model reloads, by outcome", ("outcome",), registry=r
        )
        self.record_rows = Counter(
            "s2loop_record_rows", "Rows written by the flight recorder, by table", ("table",),
            registry=r,
        )  # fmt: skip
        self.record_dropped = Counter(
            "s2loop_record_dropped", "Rows the flight recorder dropped (its queue was full)",
            registry=r,
        )  # fmt: skip
        self.shadow_compared = Counter(
            "s2loop_shadow_compared", "Answers compared with a shadow model, by live model",
            ("model",), registry=r,
        )  # fmt: skip
        self.shadow_agreed = Counter(
            "s2loop_shadow_agreed", "Of those, answers where the shadow chose the same action",
            ("model",), registry=r,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "s2loop_shadow_dropped", "Observations the shadow could not keep up with, dropped",
            ("model",), registry=r,
        )  # fmt: skip
        self.shadow_q_gap = Histogram(
            "s2loop_shadow_q_gap", "Largest |Q live - Q shadow| over actions, per answer",
            ("model",), buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 50), registry=r,
        )  # fmt: skip
        self.coalesce_size = Histogram(
            "s2loop_coalesce_batch_size", "Observations per coalesced backend call, by model",
            ("model",), buckets=(1, 2, 4, 8, 16, 24, 32, 37, 64), registry=r,
        )  # fmt: skip
        self.coalesce_wait = Histogram(
            "s2loop_coalesce_wait_seconds", "Time a request waited for its batch to leave",
            ("model",), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._request: dict[tuple[str, str], Histogram] = {}
        self._backend: dict[tuple[str, str], tuple[Histogram, Counter]] = {}
        self._errors: dict[str, Counter] = {}

    def observe_request(self, route: str, model: str, seconds: float) -> None:
        child = self._request.get((route, model))
        if child is None:
            child = self._request[(route, model)] = self.request_seconds.labels(route, model)
        child.observe(seconds)

    def observe_backend(self, model: str, backend: str, seconds: float, count: int) -> None:
        pair = self._backend.get((model, backend))
        if pair is None:
            pair = self._backend[(model, backend)] = (
                self.backend_seconds.labels(model, backend),
                self.inferences.labels(model, backend),
            )
        pair[0].observe(seconds)
        pair[1].inc(count)

    def error(self, kind: str) -> None:
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = self.errors.labels(kind)
        child.inc()

    def track_queue(self, role: str, depth: Callable[[], float]) -> None:
        """Read the queue depth at scrape time (no cost on the hot path)."""
        self.queue_depth.labels(role).set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
