"""The flight recorder: every answered act, one row each, in Apache Parquet files.

``S2LOOP_RECORD_DIR`` turns it on; a folder that cannot be created or written is an
error at start (:func:`check_folder`). The request path only appends a typed record
(:class:`ActRow`, a whole :class:`ActBatch`, :class:`ErrorRow`, :class:`ShadowRow`) to
a queue per table, bounded in rows (``record_queue_rows``: a batch counts as its rows);
what does not fit is dropped whole and its rows counted
(``s2loop_record_dropped_total{table, reason="queue_full"}``), never the request. A
background thread turns queued rows into Arrow columns in small chunks (so it never
holds the GIL for long) and writes a file every ``record_rotate_rows`` rows or
``record_rotate_s`` seconds: written under a temporary name, then renamed, so every
``*.parquet`` in the folder is complete and readable while the server runs. A file
that cannot be written is counted (``s2loop_record_write_errors_total{table}``) and its
rows too (``reason="write_failed"``). A graceful shutdown writes what is left.

A row leaves the queue's count only once it is in the file being filled, so a crash
loses at most ``record_queue_rows + record_rotate_rows`` rows per table (in practice
what arrived in the last ``record_rotate_s`` seconds), and every other lost row is
counted.

Tables (one file kind each):

- ``acts-*.parquet``: one row per observation answered (each batch row its own row);
- ``errors-*.parquet``: rejected requests, their status, kind and message (no body);
- ``shadow-*.parquet``: a shadow model's answer beside the live one (``service.shadow``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from service.records import ActBatch, ActRow, ErrorRow, ShadowRow, TraceRow

logger = logging.getLogger("s2loop.service")

_F32 = pa.list_(pa.float32())
SCHEMAS = {
    "acts": pa.schema(
        [
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("episode_id", pa.string()),
            ("step", pa.int64()),
            ("model", pa.string()),
            ("weights_sha256", pa.string()),
            ("backend", pa.string()),
            ("fallback", pa.bool_()),
            ("transport", pa.string()),
            ("observation", _F32),
            ("q_values", _F32),
            ("action", pa.int32()),
            ("seed", pa.int64()),
            ("server_us", pa.float64()),
            ("compute_us", pa.float64()),
        ]
    ),
    "errors": pa.schema(
        [
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("transport", pa.string()),
            ("status", pa.int16()),
            ("kind", pa.string()),
            ("message", pa.string()),
        ]
    ),
    "shadow": pa.schema(
        [
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("model", pa.string()),
            ("shadow_weights_sha256", pa.string()),
            ("live_action", pa.int32()),
            ("shadow_action", pa.int32()),
            ("agree", pa.bool_()),
            ("q_gap", pa.float32()),
            ("shadow_q_values", _F32),
        ]
    ),
    "traces": pa.schema(
        [
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("model", pa.string()),
            ("trace", pa.string()),  # JSON of the answer's "trace" (hw.trace)
        ]
    ),
}
CHUNK = 250  # rows converted per hold of the GIL (about 0.3 ms here)


_RECORDS = {"acts": ActRow, "errors": ErrorRow, "shadow": ShadowRow, "traces": TraceRow}
for _table, _record in _RECORDS.items():  # the records are the schemas' columns, in order
    assert _record._fields == tuple(SCHEMAS[_table].names), _table
Record = ActRow | ActBatch | ErrorRow | ShadowRow | TraceRow


def check_folder(folder: Path) -> Path:
    """``folder``, created if needed, once a file could be written in it; ValueError in one
    line naming it when not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".s2loop-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        msg = f"S2LOOP_RECORD_DIR {folder}: cannot write record files there ({why})"
        raise ValueError(msg) from None
    return folder


def _lists(arrays: list[np.ndarray]) -> pa.Array:
    """float32 arrays of varying length as one Arrow list<float32> column."""
    lengths = np.fromiter((len(a) for a in arrays), np.int32, len(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


class Recorder:
    """A queue per table, bounded in rows, and the thread that writes them."""

    def __init__(
        self,
        folder: Path,
        *,
        rotate_rows: int = 50_000,
        rotate_s: float = 60.0,
        queue_rows: int = 100_000,
        metrics: Any = None,
    ) -> None:
        self.folder = check_folder(folder)
        self.rotate_rows, self.rotate_s, self.queue_rows = rotate_rows, rotate_s, queue_rows
        self.metrics = metrics
        self.queues: dict[str, deque[Record]] = {t: deque() for t in SCHEMAS}
        self.queued = dict.fromkeys(SCHEMAS, 0)  # rows queued or being converted
        self.pending: dict[str, list[pa.RecordBatch]] = {t: [] for t in SCHEMAS}
        self.pending_rows = dict.fromkeys(SCHEMAS, 0)
        self.opened = dict.fromkeys(SCHEMAS, time.monotonic())
        self.dropped = dict.fromkeys(SCHEMAS, 0)
        self.written = dict.fromkeys(SCHEMAS, 0)
        self.write_errors = dict.fromkeys(SCHEMAS, 0)
        self.files: list[Path] = []
        self._lock = threading.Lock()  # the row counts: the request path and the writer
        self._prefix = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2loop-recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request path

    def _put(self, table: str, record: Record, rows: int) -> None:
        with self._lock:
            if self.queued[table] + rows > self.queue_rows:
                self._lost(table, rows, "queue_full")
                return
            self.queued[table] += rows
            self.queues[table].append(record)

    def _lost(self, table: str, rows: int, reason: str) -> None:
        self.dropped[table] += rows
        if self.metrics is not None:
            self.metrics.record_dropped.labels(table, reason).inc(rows)

    def act(self, row: ActRow) -> None:
        """One answered observation."""
        self._put("acts", row, 1)

    def batch(self, batch: ActBatch) -> None:
        """A whole batch in one queue entry, counted as its rows."""
        self._put("acts", batch, len(batch))

    def error(self, row: ErrorRow) -> None:
        self._put("errors", row, 1)

    def shadow(self, row: ShadowRow) -> None:
        self._put("shadow", row, 1)

    def trace(self, row: TraceRow | tuple) -> None:
        """An answer's trace: ``(time, request_id, model, trace map)``, the map kept as JSON."""
        t, request_id, model, trace = row
        text = trace if isinstance(trace, str) else orjson.dumps(trace).decode()
        self._put("traces", TraceRow(t, request_id, model, text), 1)

    # ------------------------------------------------------------------ writer

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._drain(final=False)
        self._drain(final=True)

    def _take(self, table: str, limit: int) -> list[Any]:
        queue, rows = self.queues[table], []
        while queue and len(rows) < limit:
            item = queue.popleft()
            if type(item) is ActBatch:
                rows.extend(item.rows())
            else:
                rows.append(item)
        return rows

    def _drain(self, *, final: bool) -> None:
        for table in SCHEMAS:
            while self.queues[table]:
                rows = self._take(table, CHUNK)
                while rows:  # split at file boundaries: at most rotate_rows rows a file
                    room = min(self.rotate_rows - self.pending_rows[table], CHUNK)
                    part, rows = rows[:room], rows[room:]
                    self.pending[table].append(_to_batch(table, part))
                    self.pending_rows[table] += len(part)
                    with self._lock:  # in the file being filled now, no longer queued
                        self.queued[table] -= len(part)
                    if self.pending_rows[table] >= self.rotate_rows:
                        self._write(table)
                    time.sleep(0)  # let the event loop have the GIL between chunks
            age = time.monotonic() - self.opened[table]
            if self.pending_rows[table] and (final or age >= self.rotate_s):
                self._write(table)

    def _write(self, table: str) -> None:
        batches, n = self.pending[table], self.pending_rows[table]
        self.pending[table], self.pending_rows[table] = [], 0
        self.opened[table] = time.monotonic()
        path = self.folder / f"{table}-{self._prefix}-{next(self._seq):05d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        try:
            pq.write_table(pa.Table.from_batches(batches, SCHEMAS[table]), tmp)
            os.replace(tmp, path)  # readers only ever see whole files
        except OSError as exc:
            logger.error("cannot write a record file", extra={"path": str(path), "error": str(exc)})
            self.write_errors[table] += 1
            if self.metrics is not None:
                self.metrics.record_write_errors.labels(table).inc()
            self._lost(table, n, "write_failed")
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return
        self.written[table] += n
        self.files.append(path)
        if self.metrics is not None:
            self.metrics.record_rows.labels(table).inc(n)

    def close(self) -> None:
        """Write everything queued (a graceful shutdown loses nothing)."""
        self._stop.set()
        self._thread.join()


def _to_batch(table: str, rows: list[Any]) -> pa.RecordBatch:
    schema = SCHEMAS[table]
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    arrays = []
    for field, col in zip(schema, cols, strict=True):
        if field.name == "time":
            micros = (np.asarray(col, np.float64) * 1e6).astype(np.int64)
            arrays.append(pa.array(micros).cast(field.type))
        elif field.type == _F32:
            arrays.append(_lists(list(col)))
        else:
            arrays.append(pa.array(col, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
