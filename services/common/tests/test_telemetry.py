"""JSON logs carry the current trace; tracing setup exports only when configured."""

from __future__ import annotations

import io
import json
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider

from agentmesh_common import JsonFormatter, configure_logging, current_trace_id, setup_tracing


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("agentmesh.test").makeRecord(
        "agentmesh.test", logging.WARNING, __file__, 1, message, (), None, extra=extra
    )
    return record


def test_json_line_carries_trace_id_of_current_span() -> None:
    provider = TracerProvider()
    formatter = JsonFormatter("memory")
    with provider.get_tracer("test").start_as_current_span("work") as span:
        line = formatter.format(_record("hello %s", port=50053))
        trace_id = f"{span.get_span_context().trace_id:032x}"
        assert current_trace_id() == trace_id
    payload = json.loads(line)
    assert payload["message"] == "hello %s"
    assert payload["level"] == "WARNING"
    assert payload["logger"] == "agentmesh.test"
    assert payload["service"] == "memory"
    assert payload["trace_id"] == trace_id
    assert payload["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert payload["port"] == 50053
    assert payload["ts"].endswith("+00:00")


def test_json_line_outside_a_span_and_with_exception() -> None:
    formatter = JsonFormatter("memory")
    try:
        raise ValueError("bad thing")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    payload = json.loads(formatter.format(record))
    assert payload["trace_id"] is None
    assert payload["span_id"] is None
    assert "ValueError: bad thing" in payload["exc_info"]
    assert "Traceback" in payload["exc_info"]


def test_configure_logging_writes_json_to_the_stream() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging("gateway", "DEBUG", stream=stream)
        logging.getLogger("agentmesh.test").debug("started", extra={"port": 1})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    payload = json.loads(stream.getvalue().strip())
    assert (payload["service"], payload["message"], payload["port"]) == ("gateway", "started", 1)


def test_setup_tracing_without_endpoint_has_no_exporter() -> None:
    provider = setup_tracing("memory", None)
    try:
        assert provider.resource.attributes["service.name"] == "memory"
        # No span processor was added: the active one is the empty multi-processor.
        assert provider._active_span_processor._span_processors == ()
    finally:
        provider.shutdown()


def test_setup_tracing_with_endpoint_exports_in_batches() -> None:
    provider = setup_tracing("memory", "http://127.0.0.1:4317")
    try:
        (processor,) = provider._active_span_processor._span_processors
        assert type(processor).__name__ == "BatchSpanProcessor"
    finally:
        provider.shutdown()
