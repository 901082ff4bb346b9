"""The flight recorder: every answered act, one row each, in Apache Parquet files.

``S2LOOP_RECORD_DIR`` turns it on. The request path only appends a tuple to a bounded
in-memory queue (``record_queue_rows``); when the queue is full the row is dropped and
counted (``s2loop_record_dropped_total``), never the request. A background thread
turns queued rows into Arrow columns in small chunks (so it never holds the GIL for
long) and writes a file every ``record_rotate_rows`` rows or ``record_rotate_s``
seconds: written under a temporary name, then renamed, so every ``*.parquet`` in the
folder is complete and readable while the server runs. A graceful shutdown writes
what is left. A crash loses what was not written yet: at most the queue plus one
file's worth of rows (``record_queue_rows + record_rotate_rows``), and in practice
what arrived in the last ``record_rotate_s`` seconds.

Tables (one file kind each):

- ``acts-*.parquet``: one row per observation answered (each batch row its own row);
- ``errors-*.parquet``: rejected requests, their status, kind and message (no body);
- ``shadow-*.parquet``: a shadow model's answer beside the live one (``service.shadow``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
}
CHUNK = 250  # rows converted per hold of the GIL (about 0.3 ms here)


def _lists(arrays: list[np.ndarray]) -> pa.Array:
    """float32 arrays of varying length as one Arrow list<float32> column."""
    lengths = np.fromiter((len(a) for a in arrays), np.int32, len(arrays))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


class Recorder:
    """A bounded queue per table and the thread that writes them."""

    def __init__(
        self,
        folder: Path,
        *,
        rotate_rows: int = 50_000,
        rotate_s: float = 60.0,
        queue_rows: int = 100_000,
        metrics: Any = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rotate_rows, self.rotate_s, self.queue_rows = rotate_rows, rotate_s, queue_rows
        self.metrics = metrics
        self.queues: dict[str, deque[tuple]] = {t: deque() for t in SCHEMAS}
        self.pending: dict[str, list[pa.RecordBatch]] = {t: [] for t in SCHEMAS}
        self.pending_rows = dict.fromkeys(SCHEMAS, 0)
        self.opened = dict.fromkeys(SCHEMAS, time.monotonic())
        self.dropped = 0
        self.written = dict.fromkeys(SCHEMAS, 0)
        self.files: list[Path] = []
        self._prefix = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s2loop-recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ request path

    def _put(self, table: str, row: tuple) -> None:
        queue = self.queues[table]
        if len(queue) >= self.queue_rows:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.record_dropped.inc()
            return
        queue.append(row)

    def act(self, row: tuple) -> None:
        """One answered observation, in ``SCHEMAS['acts']`` order (time as epoch seconds,
        observation and q_values as float32 arrays)."""
        self._put("acts", row)

    def batch(self, rows: tuple) -> None:
        """A whole batch in one queue entry: the writer splits it into rows."""
        self._put("acts", ("batch", rows))

    def error(self, row: tuple) -> None:
        self._put("errors", row)

    def shadow(self, row: tuple) -> None:
        self._put("shadow", row)

    # ------------------------------------------------------------------ writer

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._drain(final=False)
        self._drain(final=True)

    def _take(self, table: str, limit: int) -> list[tuple]:
        queue, rows = self.queues[table], []
        while queue and len(rows) < limit:
            item = queue.popleft()
            if item[0] == "batch":
                rows.extend(_batch_rows(item[1]))
            else:
                rows.append(item)
        return rows

    def _drain(self, *, final: bool) -> None:
        for table in SCHEMAS:
            while self.queues[table]:
                rows = self._take(table, CHUNK)
                while rows:  # split at file boundaries: at most rotate_rows rows a file
                    room = self.rotate_rows - self.pending_rows[table]
                    part, rows = rows[:room], rows[room:]
                    self.pending[table].append(_to_batch(table, part))
                    self.pending_rows[table] += len(part)
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
            return
        self.written[table] += n
        self.files.append(path)
        if self.metrics is not None:
            self.metrics.record_rows.labels(table).inc(n)

    def close(self) -> None:
        """Write everything queued (a graceful shutdown loses nothing)."""
        self._stop.set()
        self._thread.join()


def _batch_rows(b: tuple) -> list[tuple]:
    (t, rid, episode_ids, steps, model, sha, backend, fallback, transport, obs, q, actions,
     seeds, server_us, compute_us) = b  # fmt: skip
    n = len(actions)
    return [
        (t, f"{rid}.{i}", episode_ids[i] if episode_ids else None, steps[i] if steps else None,
         model, sha, backend, fallback, transport, obs[i], q[i], int(actions[i]),
         None if seeds is None else int(seeds[i]), server_us, compute_us)
        for i in range(n)
    ]  # fmt: skip


def _to_batch(table: str, rows: list[tuple]) -> pa.RecordBatch:
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
