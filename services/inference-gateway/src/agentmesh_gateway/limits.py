"""Per-deployment circuit breakers, sliding-window rate limits (rpm, tpm), and the budget
each provider reports in its rate-limit headers."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


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

    def trip(self) -> None:
        """Open now for the cooldown, whatever the count (a refused API key)."""
        self.consecutive_failures = max(self.consecutive_failures + 1, self.threshold)
        self.state = CircuitState.OPEN
        self.open_until = self._clock() + self.cooldown
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


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What a provider's rate-limit headers said on one response (None: not sent)."""

    requests_remaining: int | None = None
    requests_reset_seconds: float | None = None
    tokens_remaining: int | None = None
    tokens_reset_seconds: float | None = None


class ProviderBudget:
    """A deployment's budget as its provider last reported it, counted down locally between
    reports, so that calls go elsewhere (or wait) before the provider has to answer 429."""

    DEFAULT_RESET = 1.0  # a remaining count without a reset time is trusted this long

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: int | None = None
        self._requests_until = 0.0
        self._tokens: int | None = None
        self._tokens_until = 0.0

    def observe(self, limits: ProviderLimits) -> None:
        now = self._clock()
        if limits.requests_remaining is not None:
            self._requests = limits.requests_remaining
            self._requests_until = now + (
                self.DEFAULT_RESET
                if limits.requests_reset_seconds is None
                else limits.requests_reset_seconds
            )
        if limits.tokens_remaining is not None:
            self._tokens = limits.tokens_remaining
            self._tokens_until = now + (
                self.DEFAULT_RESET
                if limits.tokens_reset_seconds is None
                else limits.tokens_reset_seconds
            )

    def wait(self, tokens: int) -> float:
        """Seconds until the provider would take a request of ``tokens``; 0: now."""
        now = self._clock()
        wait = 0.0
        if self._requests is not None and now < self._requests_until and self._requests <= 0:
            wait = self._requests_until - now
        if self._tokens is not None and now < self._tokens_until and self._tokens < tokens:
            wait = max(wait, self._tokens_until - now)
        return wait

    def take(self, tokens: int) -> None:
        """Count one request of ``tokens`` against what the provider said is left."""
        if self._requests is not None:
            self._requests -= 1
        if self._tokens is not None:
            self._tokens -= tokens

    def remaining(self) -> tuple[int | None, int | None]:
        """(requests, tokens) left by the provider's last word; None: unknown or reset."""
        now = self._clock()
        requests = self._requests if now < self._requests_until else None
        tokens = self._tokens if now < self._tokens_until else None
        return (
            None if requests is None else max(requests, 0),
            None if tokens is None else max(tokens, 0),
        )
