"""The primary backend's circuit breaker: after a failure or a timeout the fallback
answers, without asking the primary, for ``retry_s``; the next request after that tries
the primary again, and its success closes the breaker."""

from __future__ import annotations

import time


class Breaker:
    """Open (the primary is skipped while a fallback can answer) or closed."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self._until = 0.0  # monotonic time the primary may be tried again; 0: closed
        self.reason: str | None = None

    def open(self, reason: str) -> None:
        self._until = time.monotonic() + self.retry_s
        self.reason = reason

    def close(self) -> None:
        if self._until:
            self._until, self.reason = 0.0, None

    @property
    def tripped(self) -> bool:
        """A failure since the last success (the primary may be due a retry already)."""
        return self._until != 0.0

    @property
    def is_open(self) -> bool:
        """Within ``retry_s`` of the last failure."""
        return self._until != 0.0 and time.monotonic() < self._until

    def lets_primary_try(self, can_fall_back: bool) -> bool:
        """Whether to ask the primary: always when closed or when nobody else can answer,
        else once its retry time has come."""
        return self._until == 0.0 or not can_fall_back or time.monotonic() >= self._until
