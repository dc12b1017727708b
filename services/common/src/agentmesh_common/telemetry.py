"""Tracing and structured logging setup.

:func:`setup_tracing` builds a :class:`TracerProvider` for one service (exporting over OTLP
gRPC only when an endpoint is configured); :func:`configure_logging` installs a JSON
formatter on the root logger whose lines carry the current span's trace and span ids.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from .metrics import MetricFactory

__all__ = [
    "JsonFormatter",
    "Telemetry",
    "configure_logging",
    "current_span_id",
    "current_trace_id",
    "setup_tracing",
]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)


@dataclass(frozen=True)
class Telemetry:
    """What a service needs to instrument itself: a tracer provider and a metrics registry."""

    service_name: str
    tracer_provider: TracerProvider
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    @property
    def metrics(self) -> MetricFactory:
        """Factory for domain metrics registered in :attr:`registry`."""
        return MetricFactory(self.registry)

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)


def setup_tracing(service_name: str, otlp_endpoint: str | None) -> TracerProvider:
    """A provider for ``service_name``; spans are exported only if ``otlp_endpoint`` is set."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        # Imported lazily: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


def current_trace_id() -> str:
    """The current span's trace id as 32 hex digits, or ``""`` outside any span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


def current_span_id() -> str:
    """The current span's id as 16 hex digits, or ``""`` outside any span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_span_id(context.span_id) if context.is_valid else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, trace_id, span_id,
    any ``extra=`` fields, and ``exc_info`` / ``stack_info`` as text when present."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service_name,
            "trace_id": current_trace_id() or None,
            "span_id": current_span_id() or None,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(
    service_name: str, level: str | int = "INFO", *, stream: TextIO | None = None
) -> logging.Handler:
    """Make the root logger write JSON lines to ``stream`` (stderr by default).

    Replaces the root logger's handlers and returns the installed handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service_name))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
