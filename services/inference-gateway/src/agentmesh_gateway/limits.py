"""Per-deployment circuit breakers and sliding-window rate limits (rpm, tpm)."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` failures in a row; after ``cooldown`` one probe may pass
    (half-open); the probe's success closes it, its failure opens it again."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.open_until = 0.0
        self._probing = False

    def current_state(self) -> CircuitState:
        if self.state is CircuitState.OPEN and self._clock() >= self.open_until:
            return CircuitState.HALF_OPEN
        return self.state

    def allow(self) -> bool:
        """Whether a request may go to the deployment now (claims the half-open probe)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and self._clock() >= self.open_until:
            self.state = CircuitState.HALF_OPEN
            self._probing = False
        if self.state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def seconds_until_probe(self) -> float:
        return max(0.0, self.open_until - self._clock())

    def release_probe(self) -> None:
        """The probe ended without saying anything about health: let another one pass."""
        self._probing = False

    def record_success(self) -> None:
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self._probing = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN or self.consecutive_failures >= self.threshold:
            self.state = CircuitState.OPEN
            self.open_until = self._clock() + self.cooldown
            self._probing = False


class RateWindow:
    """Requests and tokens in the last 60 s against ``rpm`` / ``tpm`` (0 = unlimited)."""

    WINDOW = 60.0

    def __init__(self, rpm: int, tpm: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._entries: deque[list[float]] = deque()  # [timestamp, tokens]
        self._tokens = 0.0

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0][0] <= now - self.WINDOW:
            self._tokens -= entries.popleft()[1]

    def remaining(self) -> tuple[int, int]:
        """(requests left, tokens left) in the current window; -1 means unlimited."""
        self._expire(self._clock())
        requests = self.rpm - len(self._entries) if self.rpm else -1
        tokens = int(self.tpm - self._tokens) if self.tpm else -1
        return max(requests, -1), max(tokens, -1)

    def try_acquire(self, tokens: int) -> tuple[list[float] | None, float]:
        """Admit one request of ``tokens`` estimated tokens: (entry, 0) or (None, wait s)."""
        if not self.rpm and not self.tpm:
            return [0.0, 0.0], 0.0
        now = self._clock()
        self._expire(now)
        wait = 0.0
        if self.rpm and len(self._entries) >= self.rpm:
            wait = self._entries[0][0] + self.WINDOW - now
        if self.tpm and self._tokens + tokens > self.tpm and self._entries:
            # Wait until enough old entries leave the window.
            needed = self._tokens + tokens - self.tpm
            freed = 0.0
            for stamp, used in self._entries:
                freed += used
                if freed >= needed:
                    wait = max(wait, stamp + self.WINDOW - now)
                    break
            else:
                wait = max(wait, self._entries[-1][0] + self.WINDOW - now)
        if wait > 0:
            return None, wait
        entry = [now, float(tokens)]
        self._entries.append(entry)
        self._tokens += tokens
        return entry, 0.0

    def release(self, entry: list[float]) -> None:
        """Give back an admitted request that was never sent."""
        try:
            self._entries.remove(entry)
        except ValueError:
            return  # already out of the window
        self._tokens -= entry[1]

    def settle(self, entry: list[float], actual_tokens: int) -> None:
        """Correct an admitted request's estimate with the tokens it really used."""
        if not self.tpm or entry[0] <= self._clock() - self.WINDOW:
            return  # unlimited, or already out of the window
        self._tokens += actual_tokens - entry[1]
        entry[1] = float(actual_tokens)
