"""The page-size rule every List of every service follows: 0 means 100, otherwise 1 to 1,000;
anything else is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from .errors import InvalidArgument

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "page_size"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(value: int, field: str = "page_size") -> int:
    """0 means the default; otherwise 1 to :data:`MAX_PAGE_SIZE`."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.for_field(
            field, f"must be between 1 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})"
        )
    return value
