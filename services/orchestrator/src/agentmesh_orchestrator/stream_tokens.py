"""Stream tokens: short-lived credentials that may only stream one session's events.

Browsers' EventSource and WebSocket cannot send an `authorization` header, and an API key in a
URL ends up in logs and histories. A caller with an API key asks `CreateStreamToken` for a
token bound to its tenant and one session; the token is presented instead of the key, and is
accepted only by StreamSession and GetSession of that session, until it expires.

A token is ``st1.<payload>.<signature>``: the payload (base64url JSON: tenant, session, expiry)
signed with HMAC-SHA256 under a secret every orchestrator replica shares
(``AGENTMESH_ORCHESTRATOR_STREAM_TOKEN_SECRET``), so any replica verifies it and nothing is
stored. Without a configured secret each replica makes its own, and a token works only on the
replica that issued it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh_common import PermissionDenied, Unauthenticated

__all__ = ["PREFIX", "StreamGrant", "StreamTokens", "is_stream_token"]

PREFIX = "st1."
MAX_TTL = dt.timedelta(hours=1)
MIN_TTL = dt.timedelta(seconds=1)
DEFAULT_TTL = dt.timedelta(minutes=5)


def is_stream_token(credential: str) -> bool:
    """Whether a presented credential is a stream token (else it is an API key)."""
    return credential.startswith(PREFIX)


@dataclass(frozen=True)
class StreamGrant:
    """What a valid stream token allows: streaming `session` of `tenant`."""

    tenant: str
    session: str

    def check_scope(self, session: str) -> None:
        """Refuse any session but the token's own (PERMISSION_DENIED)."""
        if session_name(session) != self.session:
            raise PermissionDenied(
                "this stream token may only stream its own session", reason="STREAM_TOKEN_SCOPE"
            )


def session_name(session: str) -> str:
    return session if session.startswith("sessions/") else f"sessions/{session}"


class StreamTokens:
    """Issues and verifies stream tokens under one secret."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("a stream token secret needs at least 16 bytes")
        self._secret = secret
        self._clock = clock

    def issue(self, tenant: str, session: str, ttl: dt.timedelta) -> tuple[str, dt.datetime]:
        """A token for `session` of `tenant`, and when it expires."""
        expires = int(self._clock() + ttl.total_seconds())
        payload = json.dumps(
            {"t": tenant, "s": session_name(session), "e": expires}, separators=(",", ":")
        ).encode()
        body = PREFIX + _b64(payload)
        return f"{body}.{_b64(self._sign(body))}", dt.datetime.fromtimestamp(expires, dt.UTC)

    def verify(self, token: str) -> StreamGrant:
        """The grant of a valid, unexpired token; `Unauthenticated` otherwise."""
        body, _, signature = token.rpartition(".")
        try:
            valid = body.startswith(PREFIX) and hmac.compare_digest(
                _unb64(signature), self._sign(body)
            )
            claims = json.loads(_unb64(body[len(PREFIX) :])) if valid else None
        except (ValueError, binascii.Error):
            claims = None
        if not isinstance(claims, dict) or not _well_formed(claims):
            raise Unauthenticated("the stream token is not valid", reason="STREAM_TOKEN_INVALID")
        if claims["e"] <= self._clock():
            raise Unauthenticated(
                "the stream token has expired: ask for a new one", reason="STREAM_TOKEN_EXPIRED"
            )
        return StreamGrant(tenant=claims["t"], session=claims["s"])

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()


def _well_formed(claims: dict[str, object]) -> bool:
    return (
        isinstance(claims.get("t"), str)
        and isinstance(claims.get("s"), str)
        and isinstance(claims.get("e"), int)
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
