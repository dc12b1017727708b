"""Pages of lists the orchestrator assembles itself (tools, models), by the page-size rule every
list follows (agentmesh_common.paging); `page_token` is opaque, only ever one this list
returned."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TypeVar

from agentmesh_common import InvalidArgument
from agentmesh_common.paging import page_size as checked_page_size

_PREFIX = "k1:"

T = TypeVar("T")


def page(
    items: Sequence[T], key: Callable[[T], str], page_size: int, page_token: str
) -> tuple[list[T], str]:
    """The page of `items` (sorted by `key`, keys unique) after the token, and the next token
    ("" on the last page)."""
    size, after = check(page_size, page_token)
    ordered = sorted(items, key=key)
    start = (
        0
        if after is None
        else next((i for i, item in enumerate(ordered) if key(item) > after), len(ordered))
    )
    chosen = ordered[start : start + size]
    more = start + size < len(ordered)
    return chosen, _encode(key(chosen[-1])) if more and chosen else ""


def check(page_size: int, page_token: str) -> tuple[int, str | None]:
    """The page size to use and the key to start after; INVALID_ARGUMENT for either."""
    return checked_page_size(page_size), _decode(page_token) if page_token else None


def _encode(last_key: str) -> str:
    return base64.urlsafe_b64encode((_PREFIX + last_key).encode()).decode().rstrip("=")


def _decode(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        raw = ""
    if not raw.startswith(_PREFIX):
        raise InvalidArgument.for_field("page_token", "is not a token returned by this list")
    return raw.removeprefix(_PREFIX)
