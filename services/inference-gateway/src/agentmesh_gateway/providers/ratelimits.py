"""Providers' rate-limit headers, read into :class:`ProviderLimits`.

OpenAI and Groq send ``x-ratelimit-remaining-{requests,tokens}`` with Go-style duration resets
(``12ms``, ``6m0s``, ``2m59.56s``); Anthropic sends ``anthropic-ratelimit-{requests,tokens,
input-tokens,output-tokens}-{remaining,reset}`` with RFC 3339 reset times. Groq's request limit
is per day, which the reset time already says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from agentmesh_gateway.limits import ProviderLimits

_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration(text: str) -> float | None:
    """Seconds of a Go duration such as ``1m30.5s`` or ``12ms``; None if it is not one."""
    text = text.strip()
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _until(text: str, now: datetime) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def limits_from_headers(
    headers: Mapping[str, str], now: datetime | None = None
) -> ProviderLimits | None:
    """What the headers say is left, or None when they carry no rate-limit headers."""
    requests = _int(headers, "x-ratelimit-remaining-requests")
    if requests is not None or "x-ratelimit-remaining-tokens" in headers:
        reset_requests = headers.get("x-ratelimit-reset-requests")
        reset_tokens = headers.get("x-ratelimit-reset-tokens")
        return ProviderLimits(
            requests_remaining=requests,
            requests_reset_seconds=go_duration(reset_requests) if reset_requests else None,
            tokens_remaining=_int(headers, "x-ratelimit-remaining-tokens"),
            tokens_reset_seconds=go_duration(reset_tokens) if reset_tokens else None,
        )
    prefix = "anthropic-ratelimit-"
    requests = _int(headers, prefix + "requests-remaining")
    token_kinds = [
        (remaining, headers.get(f"{prefix}{kind}-reset", ""))
        for kind in ("tokens", "input-tokens")
        if (remaining := _int(headers, f"{prefix}{kind}-remaining")) is not None
    ]
    if requests is None and not token_kinds:
        return None
    moment = now or datetime.now(UTC)
    tokens: int | None = None
    tokens_reset: float | None = None
    if token_kinds:
        tokens, reset = min(token_kinds, key=lambda pair: pair[0])
        tokens_reset = _until(reset, moment) if reset else None
    reset_requests = headers.get(prefix + "requests-reset")
    return ProviderLimits(
        requests_remaining=requests,
        requests_reset_seconds=_until(reset_requests, moment) if reset_requests else None,
        tokens_remaining=tokens,
        tokens_reset_seconds=tokens_reset,
    )
