"""The span relay's flattening: a span taken apart, pickled and rebuilt in another process
encodes to the very OTLP bytes the upstream exporter would have sent from this one."""

from __future__ import annotations

import pickle

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from telemetry.span_relay import flatten, rebuild

RESOURCE = Resource.create({"service.name": "relay-test", "service.instance.id": "i-1"})


def _spans() -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=RESOURCE,
        # small limits, so that some counts of dropped attributes, events and links are not 0
        span_limits=SpanLimits(max_span_attributes=4, max_events=2, max_links=3),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("lungwatch.gateway", "1.2.3", schema_url="https://x/1.0")
    remote = SpanContext(
        0x1234567890ABCDEF1234567890ABCDEF,
        0x1122334455667788,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    with tracer.start_as_current_span(
        "POST /predict",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": "/predict", "n": 3},
    ) as server:
        server.set_attribute("float", 0.25)
        server.set_attribute("tuple", ("a", "b"))  # over the limit of 4: one dropped
        with tracer.start_as_current_span(
            "model_server.batch",
            links=[Link(server.get_span_context(), {"i": k}) for k in range(5)],
            attributes={"lungwatch.batch.rows": 5, "flag": True},
        ):
            pass
        with tracer.start_as_current_span("fails", kind=SpanKind.CLIENT) as failing:
            failing.record_exception(ValueError("boom"))
            failing.add_event("second", {"k": "v"})
            failing.add_event("third")  # over the limit of 2 events: dropped
            failing.set_status(Status(StatusCode.ERROR, "model_timeout"))
    untraced = provider.get_tracer("other")
    untraced.start_span("bare").end()  # no attributes, no scope version
    return list(exporter.get_finished_spans())


def test_a_rebuilt_batch_encodes_to_the_same_bytes() -> None:
    spans = _spans()
    assert len(spans) == 4
    # what crosses the pipe: a pickled list of tuples, as the exporter sends it
    records = pickle.loads(pickle.dumps([flatten(s) for s in spans], pickle.HIGHEST_PROTOCOL))
    rebuilt = [
        rebuild(r, Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)) for r in records
    ]
    direct = encode_spans(spans).SerializeToString(deterministic=True)
    relayed = encode_spans(rebuilt).SerializeToString(deterministic=True)
    assert relayed == direct
    # and what made the comparison meaningful is in there
    by_name = {s.name: s for s in rebuilt}
    parent = by_name["POST /predict"].parent
    assert parent is not None and parent.is_remote
    assert by_name["POST /predict"].dropped_attributes == 1
    assert by_name["model_server.batch"].dropped_links == 2
    assert by_name["fails"].dropped_events == 1
    assert by_name["fails"].status.status_code is StatusCode.ERROR


@pytest.mark.parametrize("field", ["name", "attributes", "links", "events", "status"])
def test_a_difference_in_any_part_shows_in_the_bytes(field: str) -> None:
    """The comparison above can fail: change one part of one record and the bytes differ."""
    spans = _spans()
    records = [list(flatten(s)) for s in spans]
    target = next(r for r in records if r[7] and r[8] is not None) if field == "events" else None
    index = {"name": 0, "attributes": 6, "links": 8, "events": 7, "status": 9}[field]
    record = target or next(r for r in records if r[index])
    if field == "name":
        record[0] = record[0] + "x"
    elif field == "attributes":
        attributes, dropped = record[6]
        record[6] = ({**attributes, "extra": 1}, dropped)
    elif field == "links":
        record[8] = record[8][:-1]
    elif field == "events":
        record[7] = record[7][:-1]
    else:
        record[9] = StatusCode.OK.value
    rebuilt = [rebuild(r, RESOURCE) for r in records]
    assert encode_spans(rebuilt).SerializeToString(deterministic=True) != encode_spans(
        spans
    ).SerializeToString(deterministic=True)
