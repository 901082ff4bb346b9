"""Prometheus metrics of one app instance (own registry, so several apps can live in
one process, as in the tests).

The two per-request histograms (and the inference counter) are observed on the event
loop only, so they skip ``prometheus_client``'s locks: :class:`LoopHistogram` keeps
plain per-bucket counts and hands them to the registry at scrape time. That takes a
few microseconds off every answer (three locked observations, about 8 µs on the
development VM, become three list updates)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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


class _Series:
    """One label set of a :class:`LoopHistogram`: per-bucket counts (the last one is
    +Inf), their sum and a separate counter."""

    __slots__ = ("bounds", "counts", "sum", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.total = 0  # the companion counter (inferences), when there is one

    def observe(self, value: float, count: int = 0) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.total += count


class LoopHistogram(Collector):
    """A histogram (and optionally a counter over the same labels) for values observed
    on one thread, the event loop: no locks; Prometheus reads it at scrape time
    (a scrape may run in a worker thread; it copies the counts, which at worst misses
    an observation in flight)."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
        counter: tuple[str, str] | None = None,
    ) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self.counter = counter  # (name, doc) of the companion counter
        self.series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def child(self, *labels: str) -> _Series:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = _Series(self.bounds)
        return s

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        hist = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        total = (
            CounterMetricFamily(self.counter[0], self.counter[1], labels=self.labels)
            if self.counter
            else None
        )
        for labels, s in list(self.series.items()):
            counts, running, buckets = list(s.counts), 0, []
            for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            hist.add_metric(labels, buckets, s.sum)
            if total is not None:
                total.add_metric(labels, s.total)
        yield hist
        if total is not None:
            yield total

    def describe(self) -> list:
        return []


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = LoopHistogram(
            "s2loop_request_seconds",
            "Server handling time of answered inference requests, by route and model",
            ("route", "model"),
            LATENCY_BUCKETS,
            r,
        )
        self.backend_seconds = LoopHistogram(
            "s2loop_backend_seconds",
            "Backend compute time per call, by model and backend",
            ("model", "backend"),
            LATENCY_BUCKETS,
            r,
            counter=("s2loop_inferences", "Observations run, by model and backend"),
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
            "s2loop_record_dropped",
            "Rows the flight recorder lost, by table and reason: queue_full (the queue of "
            "record_queue_rows rows was full) or write_failed (a file could not be written)",
            ("table", "reason"), registry=r,
        )  # fmt: skip
        self.record_write_errors = Counter(
            "s2loop_record_write_errors", "Record files that could not be written, by table",
            ("table",), registry=r,
        )  # fmt: skip
        self.tcp_connections = Gauge(
            "s2loop_tcp_connections", "Open connections of the TCP endpoint", registry=r
        )
        self.tcp_closed = Counter(
            "s2loop_tcp_closed",
            "TCP connections the server closed or refused, by reason: hello_timeout, "
            "idle_timeout, read_timeout, write_timeout, too_many_connections, frame_too_large, "
            "unauthorized, tls_handshake_failed",
            ("reason",), registry=r,
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
        self._errors: dict[str, Counter] = {}

    def observe_request(self, route: str, model: str, seconds: float) -> None:
        """On the event loop only."""
        self.request_seconds.child(route, model).observe(seconds)

    def observe_backend(self, model: str, backend: str, seconds: float, count: int) -> None:
        """On the event loop only; also counts ``count`` inferences."""
        self.backend_seconds.child(model, backend).observe(seconds, count)

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
