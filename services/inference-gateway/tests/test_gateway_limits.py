"""Circuit breaker and rate windows on a fake clock."""

from __future__ import annotations

from agentmesh_gateway.limits import CircuitBreaker, CircuitState, RateWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_lets_one_probe_through_after_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=30, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.current_state() is CircuitState.OPEN
    assert not breaker.allow()
    assert breaker.seconds_until_probe() == 30
    clock.now += 30
    assert breaker.current_state() is CircuitState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # the probe failed: open again for a full cooldown
    assert breaker.current_state() is CircuitState.OPEN
    clock.now += 30
    assert breaker.allow()
    breaker.release_probe()  # e.g. the caller cancelled: someone else may probe
    assert breaker.allow()
    breaker.record_success()
    assert breaker.current_state() is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0


def test_rate_window_counts_requests_and_tokens_over_sixty_seconds() -> None:
    clock = Clock()
    window = RateWindow(rpm=2, tpm=1000, clock=clock)
    first, _ = window.try_acquire(400)
    assert first is not None
    clock.now += 10
    second, _ = window.try_acquire(400)
    assert second is not None
    assert window.remaining() == (0, 200)
    refused, wait = window.try_acquire(10)
    assert refused is None
    assert wait == 50  # the first request leaves the window at t+60
    window.settle(second, 100)  # it really used 100 tokens
    window.release(second)  # or it was never sent
    assert window.remaining() == (1, 600)
    clock.now += 50
    assert window.remaining() == (2, 1000)
    big, wait = window.try_acquire(900)
    assert big is not None
    refused, wait = window.try_acquire(200)
    assert refused is None
    assert wait == 60


def test_unlimited_window_admits_everything() -> None:
    window = RateWindow(rpm=0, tpm=0)
    for _ in range(1000):
        assert window.try_acquire(10_000)[0] is not None
    assert window.remaining() == (-1, -1)
