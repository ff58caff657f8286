"""Exports one small trace with the OpenTelemetry Python SDK, for the Phoenix
harness check in tests/observability.rs. Run with the Python of .venv/phoenix
(arize-phoenix brings opentelemetry-sdk and the OTLP exporters).

Configured the standard way, by environment:
  OTEL_EXPORTER_OTLP_ENDPOINT   the receiver (HTTP: the base URL, the SDK adds
                                /v1/traces; gRPC: http://HOST:PORT)
  OTEL_EXPORTER_OTLP_PROTOCOL   http/protobuf or grpc
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS
  TRACEPARENT                   optional: a W3C traceparent the root span continues

The trace, all spans ended before the exporter is flushed and shut down:
  harness.root          (child of TRACEPARENT's span, when given)
    harness.step        attributes of every OTLP kind, an event
      harness.leaf
    harness.failed      status ERROR

Prints one JSON line: the trace id and each span's id, hex, for the test to
compare with what the receiver stored.
"""

import json
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


def exporter():
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # Plain gRPC: the endpoint is http://, and the exporter would pick
        # TLS for anything else.
        return OTLPSpanExporter(insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    sys.exit(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: expected grpc or http/protobuf")


def main():
    provider = TracerProvider(resource=Resource.create())
    # Each span is sent as it ends: an export error shows on stderr at once.
    provider.add_span_processor(SimpleSpanProcessor(exporter()))
    tracer = provider.get_tracer("sandstorm.tests.observability")

    context = None
    if traceparent := os.environ.get("TRACEPARENT"):
        context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})

    ids = {}
    with tracer.start_as_current_span("harness.root", context=context) as root:
        root.set_attribute("harness.protocol", os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"])
        with tracer.start_as_current_span("harness.step") as step:
            step.set_attribute("harness.text", "hello")
            step.set_attribute("harness.count", 3)
            step.set_attribute("harness.ratio", 0.25)
            step.set_attribute("harness.flag", True)
            step.set_attribute("harness.tools", ["Bash", "Read"])
            step.add_event("harness.message", {"harness.turn": 1})
            with tracer.start_as_current_span("harness.leaf") as leaf:
                ids["harness.leaf"] = leaf.get_span_context().span_id
            ids["harness.step"] = step.get_span_context().span_id
        with tracer.start_as_current_span("harness.failed") as failed:
            failed.set_status(Status(StatusCode.ERROR, "it failed on purpose"))
            ids["harness.failed"] = failed.get_span_context().span_id
        ids["harness.root"] = root.get_span_context().span_id
        trace_id = root.get_span_context().trace_id
    provider.shutdown()

    print(
        json.dumps(
            {
                "trace_id": trace.format_trace_id(trace_id),
                "spans": {name: trace.format_span_id(span_id) for name, span_id in ids.items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
