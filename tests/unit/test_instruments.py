"""Each declared instrument comes out of the SDK's Prometheus exporter under its contract name."""

from __future__ import annotations

import re

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from telemetry import build_telemetry
from telemetry import instruments as ins

CONTRACT_NAMES = {
    "api_prediction_result": "gauge",
    "api_prediction_confidence": "gauge",
    "api_total_requests_total": "counter",
    "api_successful_requests_total": "counter",
    "api_failed_requests_total": "counter",
    "api_response_latency_seconds": "histogram",
    "endpoint_request_time_seconds": "histogram",
    "memory_per_request_bytes": "gauge",
    "system_cpu_usage": "gauge",
    "system_ram_usage": "gauge",
}


def test_the_contract_lists_exactly_the_ten_seed_names() -> None:
    assert {
        s.name: s.kind.value.removeprefix("observable_") for s in ins.CONTRACT
    } == CONTRACT_NAMES


def test_units_and_buckets_are_in_seconds() -> None:
    for spec in ins.ALL_INSTRUMENTS:
        if spec.kind is ins.Kind.HISTOGRAM and spec.name.endswith("_seconds"):
            assert spec.unit == "s"
            assert spec.buckets and max(spec.buckets) <= 60 and min(spec.buckets) >= 0.0001
    assert ins.CONFIDENCE.buckets and max(ins.CONFIDENCE.buckets) == 1.0
    assert ins.MEMORY_PER_REQUEST.unit == "By"
    assert ins.SYSTEM_CPU.unit == ins.SYSTEM_RAM.unit == ""  # "%" would add _percent


def test_every_instrument_is_exposed_under_its_name() -> None:
    telemetry = build_telemetry("unit", metric_readers=[InMemoryMetricReader()])
    meter = telemetry.meter("unit")
    for spec in ins.ALL_INSTRUMENTS:
        instrument = ins.create(meter, spec, callbacks=[lambda _o: []])
        if spec.kind is ins.Kind.COUNTER:
            instrument.add(1)
        elif spec.kind is ins.Kind.HISTOGRAM:
            instrument.record(0.3)
        elif spec.kind is ins.Kind.GAUGE:
            instrument.set(1)
    text = telemetry.prometheus_text().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    for spec in ins.ALL_INSTRUMENTS:
        if spec.kind is ins.Kind.OBSERVABLE_GAUGE:
            continue  # no observation given: covered by the integration test
        assert types.get(spec.name) == spec.kind.value, (spec.name, types)
    # Histograms use our boundaries, not the SDK's millisecond-sized defaults.
    assert re.search(r'endpoint_request_time_seconds_bucket\{[^}]*le="0.25"[^}]*\} 0.0', text)
    assert re.search(r'endpoint_request_time_seconds_bucket\{[^}]*le="0.5"[^}]*\} 1.0', text)
    assert not re.search(r'endpoint_request_time_seconds_bucket\{[^}]*le="1000.0"', text)
    telemetry.shutdown()
