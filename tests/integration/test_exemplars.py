"""Metrics that open their traces: exemplars on both paths point at spans that were exported.

Direct path: a real Prometheus (exemplar storage on) scrapes the gateway's and the model
server's own /metrics, negotiating OpenMetrics; /api/v1/query_exemplars must return
exemplars whose trace and span ids are spans the in-test OTLP receiver got, in traces that
hold the gateway's SERVER span. OTLP path (what the Collector receives): the exported
histogram points carry exemplars that match exported spans the same way. Also here: the
classic text format is byte-for-byte the upstream exporter's, and both paths give every
metric the same name in the running system.
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from contract.features import EXAMPLE_FEATURES
from devtools import procs
from telemetry import instruments as ins
from telemetry.exposition import ExemplarPrometheusReader, exposition
from tests.config.test_collector_names import DIRECT_ONLY, configured_strategy, exporter_name
from tests.integration.conftest import Spawn, Stack
from tests.support.otlp import OtlpReceiver, ReceivedSpan

SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind
OPENMETRICS = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus sends
# The latency histograms, with the process that records each and the span current then.
# Per histogram: the process that records it and the names of the spans current then (the
# shared stack also serves other tests' /predict/batch calls).
LATENCY_HISTOGRAMS = {
    ins.ENDPOINT_REQUEST_TIME.name: ("lungwatch-gateway", {"POST /predict", "POST /predict/batch"}),
    ins.RESPONSE_LATENCY.name: ("lungwatch-gateway", {"model_server.predict"}),
    ins.MODEL_INFERENCE.name: ("lungwatch-model-server", {"model.predict"}),
}


def query_exemplars(prom_url: str, metric: str, since: float) -> list[dict[str, Any]]:
    """Every exemplar Prometheus stored for `metric`'s buckets since `since`."""
    response = httpx.get(
        f"{prom_url}/api/v1/query_exemplars",
        params={"query": f"{metric}_bucket", "start": since, "end": time.time() + 60},
        timeout=10,
    )
    body = response.json()
    assert body["status"] == "success", body
    return [e for series in body["data"] for e in series["exemplars"]]


def gateway_server_traces(receiver: OtlpReceiver) -> set[str]:
    return {
        s.trace_id
        for s in receiver.spans()
        if s.service == "lungwatch-gateway" and s.kind == SERVER
    }


def spans_by_id(receiver: OtlpReceiver) -> dict[tuple[str, str], ReceivedSpan]:
    return {(s.trace_id, s.span_id): s for s in receiver.spans()}


def send_predictions(gateway_url: str, n: int) -> list[str]:
    """n predictions; returns the trace id each response names (x-trace-id)."""
    trace_ids = []
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        for _ in range(n):
            response = client.post("/predict", json={"features": list(EXAMPLE_FEATURES)})
            assert response.status_code == 200, response.text
            trace_ids.append(response.headers["x-trace-id"])
    return trace_ids


def test_prometheus_stores_exemplars_that_open_exported_traces(stack: Stack) -> None:
    # Exemplars recorded from now on are this test's: earlier tests on the shared stack also
    # call the model server directly, and those traces have no gateway span.
    since = time.time()
    sent = set(send_predictions(stack.gateway_url, 30))

    def stored() -> dict[str, list[dict[str, Any]]] | None:
        found = {m: query_exemplars(stack.prometheus_url, m, since) for m in LATENCY_HISTOGRAMS}
        return found if all(found.values()) else None

    exemplars = procs.wait_until(stored, 30, "exemplars of every latency histogram")
    assert exemplars is not None

    def all_exported() -> bool:
        spans = spans_by_id(stack.otlp)
        servers = gateway_server_traces(stack.otlp)
        return all(
            (e["labels"]["trace_id"], e["labels"]["span_id"]) in spans
            and e["labels"]["trace_id"] in servers
            for found in exemplars.values()
            for e in found
        )

    procs.wait_until(all_exported, 15, "the spans every exemplar names, exported")
    spans = spans_by_id(stack.otlp)
    for metric, found in exemplars.items():
        service, span_names = LATENCY_HISTOGRAMS[metric]
        for exemplar in found:
            labels = exemplar["labels"]
            assert set(labels) == {"trace_id", "span_id"}, labels
            span = spans[(labels["trace_id"], labels["span_id"])]
            # The span current when the value was recorded, in the process that recorded it.
            assert span.service == service and span.name in span_names, (metric, span)
    assert sent & {e["labels"]["trace_id"] for found in exemplars.values() for e in found}
    print(
        "\n  exemplars in Prometheus: "
        + ", ".join(f"{m}={len(found)}" for m, found in exemplars.items())
    )


def test_otlp_histogram_points_carry_exemplars_of_exported_spans(stack: Stack) -> None:
    sent = set(send_predictions(stack.gateway_url, 10))

    def exported() -> dict[str, list[tuple[str, str, float]]] | None:
        # The receiver holds the whole session's points: keep this test's traces.
        found: dict[str, list[tuple[str, str, float]]] = {m: [] for m in LATENCY_HISTOGRAMS}
        for metric in stack.otlp.metrics():
            if metric.name in found:
                found[metric.name].extend(e for e in metric.exemplars() if e[0] in sent)
        return found if all(found.values()) else None

    exemplars = procs.wait_until(exported, 20, "exemplars on every exported latency histogram")
    assert exemplars is not None
    spans = procs.wait_until(
        lambda: (
            spans_by_id(stack.otlp)
            if all((t, s) in spans_by_id(stack.otlp) for f in exemplars.values() for t, s, _ in f)
            else None
        ),
        15,
        "the spans the OTLP exemplars name, exported",
    )
    assert spans is not None
    servers = gateway_server_traces(stack.otlp)
    for metric, found in exemplars.items():
        service, span_names = LATENCY_HISTOGRAMS[metric]
        for trace_id, span_id, _value in found:
            span = spans[(trace_id, span_id)]
            assert span.service == service and span.name in span_names, (metric, span)
            assert trace_id in servers


def test_classic_text_is_unchanged_and_only_openmetrics_carries_exemplars(stack: Stack) -> None:
    send_predictions(stack.gateway_url, 3)
    classic = httpx.get(f"{stack.gateway_url}/metrics", timeout=10)
    assert classic.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert " # {" not in classic.text
    negotiated = httpx.get(
        f"{stack.model_server_url}/metrics", headers={"Accept": OPENMETRICS}, timeout=10
    )
    assert negotiated.headers["content-type"].startswith("application/openmetrics-text")
    assert negotiated.text.endswith("# EOF\n")


def test_text_format_is_the_upstream_exporters_byte_for_byte() -> None:
    """Same measurements into the upstream reader and ours: identical classic text; only
    ours writes exemplars in OpenMetrics (which is why it exists)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    upstream_registry, our_registry = CollectorRegistry(), CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[
            PrometheusMetricReader(registry=upstream_registry),
            ExemplarPrometheusReader(our_registry),
        ],
        views=ins.views(),
    )
    meter = provider.get_meter("parity")
    tracer = TracerProvider().get_tracer("parity")
    instruments = [
        (spec, ins.create(meter, spec, callbacks=[lambda _o: []])) for spec in ins.ALL_INSTRUMENTS
    ]

    def record() -> None:
        for spec, instrument in instruments:
            with tracer.start_as_current_span("recording"):
                if spec.kind is ins.Kind.COUNTER:
                    instrument.add(2, {"reason": "idle"})
                elif spec.kind is ins.Kind.HISTOGRAM:
                    for value in (0.003, 0.3, 7.0, 20.0):
                        instrument.record(value, {"outcome": "ok"})
                elif spec.kind is ins.Kind.GAUGE:
                    instrument.set(1)

    record()
    upstream_text, _ = exposition(upstream_registry, None)
    our_text, content_type = exposition(our_registry, None)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert our_text == upstream_text
    # A collection hands the reservoir's exemplars out once (the SDK resets it), so the
    # OpenMetrics round needs measurements of its own.
    record()
    upstream_om, _ = exposition(upstream_registry, OPENMETRICS)
    our_om, _ = exposition(our_registry, OPENMETRICS)
    assert b" # {" not in upstream_om
    # One exemplar per bucket a value fell in (the reservoir keeps the latest per bucket),
    # on the histograms of a time only (ins.WITHOUT_EXEMPLARS).
    timed = [
        spec
        for spec in ins.ALL_INSTRUMENTS
        if spec.kind is ins.Kind.HISTOGRAM and spec.name not in ins.WITHOUT_EXEMPLARS
    ]
    assert timed and all(spec.unit == "s" for spec in timed)
    expected = sum(
        len({bisect.bisect_left(spec.buckets or (), v) for v in (0.003, 0.3, 7.0, 20.0)})
        for spec in timed
    )
    assert our_om.count(b" # {span_id=") == expected
    for name in ins.WITHOUT_EXEMPLARS:
        lines = [line for line in our_om.splitlines() if line.startswith(name.encode())]
        assert lines and not any(b" # {" in line for line in lines), name
    assert b'le="+Inf"' in our_om and b"} 20.0 " in our_om
    provider.shutdown()


@pytest.mark.parametrize("job", ["lungwatch-gateway", "lungwatch-model-server"])
def test_both_paths_store_the_same_names_in_the_running_system(stack: Stack, job: str) -> None:
    """Every metric the process exported over OTLP, named as the Collector would, is a
    metric Prometheus stored from the direct scrape of the same process, and back."""
    send_predictions(stack.gateway_url, 5)
    strategy = configured_strategy()
    kinds = {
        ("sum", True): ins.Kind.COUNTER,
        ("sum", False): ins.Kind.UP_DOWN_COUNTER,
        ("gauge", False): ins.Kind.GAUGE,
        ("histogram", False): ins.Kind.HISTOGRAM,
    }

    def via_collector() -> set[str]:
        return {
            exporter_name(m.name, m.unit, kinds[(m.data_type, m.monotonic)], strategy)
            for m in stack.otlp.metrics()
            if m.service == job
        }

    def direct() -> set[str]:
        response = httpx.get(
            f"{stack.prometheus_url}/api/v1/label/__name__/values",
            params={"match[]": f'{{job="{job}"}}'},
            timeout=10,
        )
        names = set(response.json()["data"])
        stored = set()
        for name in names:
            # the direct path's own (as in the config test), and Prometheus's own series
            if DIRECT_ONLY.fullmatch(name) or name.startswith("scrape_") or name == "up":
                continue
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name.removesuffix(suffix) + "_bucket" in names:
                    name = name.removesuffix(suffix)
            stored.add(name)
        return stored

    try:
        procs.wait_until(lambda: via_collector() == direct(), 20, f"the same names for {job}")
    except AssertionError:
        collector, prometheus = via_collector(), direct()
        raise AssertionError(
            f"{job}: only via the Collector {sorted(collector - prometheus)}, "
            f"only direct {sorted(prometheus - collector)}"
        ) from None
    print(f"\n  {job}: {len(direct())} names, identical on both paths")


def test_traceql_in_the_docs_names_what_the_code_emits(stack: Stack) -> None:
    """The TraceQL table in docs/observability.md queries span names, attributes and
    services that real traffic produces (an attribute set only on failures must at least be
    set by the code)."""
    import re

    from tests.config.stack_files import DOCS_FILE, REPO_ROOT

    send_predictions(stack.gateway_url, 3)
    # Lone requests share no call (no batch spans): 100 rows in one request are split into
    # calls of 32, more than the 2 calls in flight, so the rest queue and share a call.
    rows = {"rows": [{"features": list(EXAMPLE_FEATURES)}] * 100}
    assert (
        httpx.post(f"{stack.gateway_url}/predict/batch", json=rows, timeout=30).status_code == 200
    )
    section = DOCS_FILE.read_text().split("### Traces in Grafana Explore (TraceQL)")[1]
    queries = re.findall(r"`(\{[^`]*\})`", section.split("\n## ")[0])
    assert len(queries) >= 8, queries

    def emitted() -> tuple[set[str], set[str], set[str]] | None:
        spans = stack.otlp.spans()
        names = {s.name for s in spans}
        if not {"model.predict", "model_server.batch", "model_server.batched_predict"} <= names:
            return None
        return names, {k for s in spans for k in s.attributes()}, {s.service for s in spans}

    found = procs.wait_until(emitted, 15, "spans of every kind")
    assert found is not None
    names, attributes, services = found
    source = "\n".join(
        p.read_text() for d in ("api", "model") for p in (REPO_ROOT / d).rglob("*.py")
    )
    for query in queries:
        for name in re.findall(r'(?<![.\w])name = "([^"]+)"', query):
            assert name in names, (query, name, sorted(names))
        for pattern in re.findall(r'(?<![.\w])name =~ "([^"]+)"', query):
            assert any(re.fullmatch(pattern, n) for n in names), (query, pattern)
        for service in re.findall(r'resource\.service\.name = "([^"]+)"', query):
            assert service in services, (query, service)
        for attribute in re.findall(r"\bspan\.([\w.]+)", query):
            assert attribute in attributes or f'"{attribute}"' in source, (query, attribute)


def test_dropped_spans_reach_prometheus_while_the_collector_is_down(
    spawn: Spawn, stack: Stack, tmp_path: Path
) -> None:
    """compose's direct scrape job, as prometheus.yml writes it, keeps the SDK's health
    series: with the OTLP backend down, the spans the full queue drops are counted in
    Prometheus (and the contract series, which the Collector delivers, are not kept here)."""
    from tests.config import stack_files

    config = stack_files.load_yaml(stack_files.PROMETHEUS_FILE)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "lungwatch-gateway"]
    dead = f"http://127.0.0.1:{procs.free_port()}"  # nothing listens: the Collector is down
    gateway = spawn(
        procs.gateway(
            stack.model_server_url,
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=dead,
            OTEL_METRICS_EXPORTER="none",
            OTEL_BSP_MAX_QUEUE_SIZE="4",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
        )
    )
    scrape = {**job, "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}]}
    prometheus = spawn(
        procs.prometheus(
            tmp_path / "prometheus",
            {},
            config={"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]},
        )
    )
    send_predictions(gateway.url, 20)
    dropped = 'otel_sdk_processor_span_processed_total{error_type="queue_full"}'
    procs.wait_until(
        lambda: (procs.prom_value(prometheus.url, f"sum({dropped})") or 0) > 0,
        30,
        "spans dropped while the Collector is down, counted in Prometheus",
    )
    assert procs.prom_query(prometheus.url, "process_resident_memory_bytes")
    assert not procs.prom_query(prometheus.url, "api_total_requests_total")
