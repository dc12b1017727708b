"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from google.protobuf import duration_pb2

__all__ = ["duration"]


def duration(seconds: float) -> duration_pb2.Duration:
    """A `google.protobuf.Duration` of `seconds` (nanosecond precision)."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value
