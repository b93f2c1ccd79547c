"""One set of names on both paths: the direct /metrics and the Collector's Prometheus exporter.

The Collector cannot run here, so this test re-implements the exporter's name translation
and applies it in the mode otel-collector.yaml selects; the direct path's names come from
running the real code (the SDK with our Views and our exposition) on every instrument,
the instrumentations' and the SDK's own included. The rule is the one in
prometheus/otlptranslator, which the contrib prometheus exporter uses
(https://github.com/prometheus/otlptranslator/blob/main/metric_namer.go, MetricNamer.Build):
  - escaping strategies (UnderscoreEscaping*) map each run of characters outside
    [a-zA-Z0-9:_] to "_" and prefix "_" to a leading digit;
  - *WithoutSuffixes stops there (buildCompliantMetricName, "simple case");
  - *WithSuffixes (normalizeName) splits the name into tokens on every character outside
    [a-zA-Z0-9:] (so "_" too), appends the unit suffix unless already a token, removes every
    "total" token of a monotonic counter and appends one, and appends "ratio" to unit-"1"
    gauges.
The exporter's translation_strategy values are documented in the contrib README
(exporter/prometheusexporter): UnderscoreEscapingWithSuffixes (default),
UnderscoreEscapingWithoutSuffixes, NoUTF8EscapingWithSuffixes, NoTranslation.
The exporter (collector.go, convertSum) types a monotonic Sum as a counter and anything else
numeric as a gauge; client_golang's OpenMetrics encoder (prometheus/common
expfmt/openmetrics_create.go, MetricFamilyToOpenMetrics) then writes a counter whose name
does not end in `_total` as type `unknown`, its sample under the bare name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Metric,
    Sum,
)

from telemetry import Telemetry, build_telemetry
from telemetry import instruments as ins
from tests.config import stack_files
from tests.support.otlp import OtlpReceiver

# The ten names the seed's users query (docs ARCHITECTURE.md, "The metric contract").
CONTRACT_NAMES = {
    "api_prediction_result",
    "api_prediction_confidence",
    "api_total_requests_total",
    "api_successful_requests_total",
    "api_failed_requests_total",
    "api_response_latency_seconds",
    "endpoint_request_time_seconds",
    "memory_per_request_bytes",
    "system_cpu_usage",
    "system_ram_usage",
}

# otlptranslator's unitMap (main units only; the contract uses "s", "By" and "").
UNIT_SUFFIX = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes",
    "MiBy": "mebibytes", "GiBy": "gibibytes", "KBy": "kilobytes", "MBy": "megabytes",
    "GBy": "gigabytes", "m": "meters", "V": "volts", "A": "amperes", "J": "joules",
    "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz", "1": "", "%": "percent",
}  # fmt: skip
PER_UNIT_SUFFIX = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}


def _unit_suffixes(unit: str) -> tuple[str, str]:
    """buildUnitSuffixes: "By/s" -> ("bytes", "per_second"); unknown units pass through."""
    main, _, per = unit.partition("/")
    main_suffix = UNIT_SUFFIX.get(main, main) if main and not main.startswith("{") else ""
    per_suffix = ""
    if per and not per.startswith("{"):
        per_suffix = "per_" + PER_UNIT_SUFFIX.get(per, per)
    return main_suffix, per_suffix


def exporter_name(name: str, unit: str, kind: ins.Kind, strategy: str) -> str:
    """The Prometheus metric family name the Collector's exporter writes for one instrument."""
    if strategy in ("NoTranslation", "NoUTF8EscapingWithSuffixes"):
        raise NotImplementedError(f"{strategy}: not used by this repo")
    with_suffixes = strategy == "UnderscoreEscapingWithSuffixes"
    monotonic_counter = kind is ins.Kind.COUNTER
    gauge = kind in (ins.Kind.GAUGE, ins.Kind.OBSERVABLE_GAUGE, ins.Kind.UP_DOWN_COUNTER)
    if not with_suffixes:
        escaped = "_".join(t for t in re.split(r"[^a-zA-Z0-9:_]+", name) if t)
        return "_" + escaped if escaped[:1].isdigit() else escaped
    tokens = [t for t in re.split(r"[^a-zA-Z0-9:]+", name) if t]
    main_suffix, per_suffix = _unit_suffixes(unit)
    for suffix in (main_suffix, per_suffix):
        suffix = suffix.strip("_")
        if suffix and suffix not in tokens:
            tokens.append(suffix)
    if monotonic_counter:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and gauge:
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    joined = "_".join(tokens)
    return "_" + joined if joined[:1].isdigit() else joined


def configured_strategy() -> str:
    exporter = stack_files.collector()["exporters"]["prometheus"]
    # translation_strategy wins over the deprecated add_metric_suffixes; recent versions
    # ignore add_metric_suffixes entirely, so only an explicit strategy is trusted here.
    return str(exporter.get("translation_strategy", "UnderscoreEscapingWithSuffixes"))


@pytest.mark.parametrize(
    ("otel_name", "unit", "kind", "expected"),
    [
        # Examples from otlptranslator's own documentation of MetricNamer.Build.
        ("http.server.duration", "s", ins.Kind.HISTOGRAM, "http_server_duration_seconds"),
        ("requests.count", "1", ins.Kind.COUNTER, "requests_count_total"),
        ("memory.usage", "By", ins.Kind.GAUGE, "memory_usage_bytes"),
        # The trap measured in ARCHITECTURE.md: "total" moves to the end.
        ("api_total_requests", "", ins.Kind.COUNTER, "api_requests_total"),
        ("system_cpu_usage", "%", ins.Kind.GAUGE, "system_cpu_usage_percent"),
    ],
)
def test_translation_rule_matches_upstream_examples(
    otel_name: str, unit: str, kind: ins.Kind, expected: str
) -> None:
    assert exporter_name(otel_name, unit, kind, "UnderscoreEscapingWithSuffixes") == expected


def test_without_suffixes_only_escapes() -> None:
    strategy = "UnderscoreEscapingWithoutSuffixes"
    assert exporter_name("http.server.request.duration", "s", ins.Kind.HISTOGRAM, strategy) == (
        "http_server_request_duration"
    )
    assert exporter_name("2xx.count", "", ins.Kind.COUNTER, strategy) == "_2xx_count"


def test_declared_contract_is_the_documented_contract() -> None:
    assert {spec.name for spec in ins.CONTRACT} == CONTRACT_NAMES


# Every declared instrument, not only the contract: the dashboards query the model server's
# metrics through the Collector too; and the libraries' instruments under their View names.
@pytest.mark.parametrize(
    "spec", ins.ALL_INSTRUMENTS + ins.RENAMED_INSTRUMENTS, ids=lambda spec: spec.name
)
def test_collector_exports_declared_name(
    spec: ins.InstrumentSpec | ins.RenamedInstrument, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = configured_strategy()
    produced = exporter_name(spec.name, spec.unit, spec.kind, strategy)
    row = (
        f"instrument={spec.name!r} unit={spec.unit!r} kind={spec.kind.value} "
        f"strategy={strategy} -> exported={produced!r}"
    )
    with capsys.disabled():
        print(f"\n  {row}")
    assert produced == spec.name, row


def test_default_strategy_would_break_the_contract() -> None:
    """Why otel-collector.yaml must set the strategy: the default renames a contract metric."""
    broken = {
        spec.name: exporter_name(spec.name, spec.unit, spec.kind, "UnderscoreEscapingWithSuffixes")
        for spec in ins.CONTRACT
    }
    assert broken["api_total_requests_total"] == "api_requests_total"
    # Names that already end in their suffix survive either way.
    assert broken["endpoint_request_time_seconds"] == "endpoint_request_time_seconds"
    assert broken["memory_per_request_bytes"] == "memory_per_request_bytes"


def test_collector_config_sets_suffix_free_strategy() -> None:
    exporter = stack_files.collector()["exporters"]["prometheus"]
    assert exporter.get("translation_strategy") == "UnderscoreEscapingWithoutSuffixes"
    # Exemplars only travel in OpenMetrics.
    assert exporter.get("enable_open_metrics") is True


def test_every_counter_name_ends_in_total() -> None:
    """Else the Collector path stores it typed `unknown` and without `_total`, while the
    direct path appends `_total`: two names for one counter."""
    for spec in ins.ALL_INSTRUMENTS + ins.RENAMED_INSTRUMENTS:
        if spec.kind is ins.Kind.COUNTER:
            assert spec.name.endswith("_total"), spec.name


# --- both paths, derived from running the code ----------------------------------------------
@dataclass(frozen=True)
class Stored:
    """A metric as Prometheus stores it: the name its series carry, and its type."""

    name: str
    type: str


def _kind(metric: Metric) -> ins.Kind:
    data = metric.data
    if isinstance(data, Sum):
        return ins.Kind.COUNTER if data.is_monotonic else ins.Kind.UP_DOWN_COUNTER
    if isinstance(data, Histogram):
        return ins.Kind.HISTOGRAM
    assert isinstance(data, Gauge), f"{metric.name}: {type(data).__name__} not expected here"
    return ins.Kind.GAUGE


def collector_path(metric: Metric, strategy: str) -> Stored:
    """What Prometheus stores for one OTLP metric that went through the Collector."""
    kind = _kind(metric)
    name = exporter_name(metric.name, metric.unit or "", kind, strategy)
    if kind is ins.Kind.COUNTER:
        return Stored(name, "counter" if name.endswith("_total") else "unknown")
    if kind is ins.Kind.HISTOGRAM:
        return Stored(name, "histogram")
    return Stored(name, "gauge")


def direct_path(openmetrics: str) -> set[Stored]:
    """What Prometheus stores from the process's own /metrics in OpenMetrics (what it asks
    for with exemplar storage on): counters under their `_total` sample name."""
    stored = set()
    for family, type_ in re.findall(r"^# TYPE (\S+) (\S+)$", openmetrics, flags=re.M):
        name = family + {"counter": "_total", "info": "_info"}.get(type_, "")
        samples = re.findall(rf"^{re.escape(name)}(?:_bucket|_count|_sum)?[{{ ]", openmetrics, re.M)
        assert samples, f"TYPE {family} {type_} has no sample named {name}"
        stored.add(Stored(name, type_))
    return stored


# Only the direct path has these: the process collectors and the reader's resource info
# (the Collector writes its own target_info from the resource).
DIRECT_ONLY = re.compile(r"process_.*|span_relay_process_.*|python_.*|target_info")


@pytest.fixture(scope="module")
def exercised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Telemetry, list[Metric]]]:
    """A process's telemetry with every instrument recorded once: ours, the FastAPI
    instrumentation's (through Telemetry and the real instrumentor) and the SDK's
    span-processor and exporter counters (a real OTLP exporter to an in-test receiver)."""
    receiver = OtlpReceiver().start()
    patch = pytest.MonkeyPatch()
    patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    patch.setenv("OTEL_METRICS_EXPORTER", "none")
    patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    otlp_view = InMemoryMetricReader()  # exactly the MetricsData the OTLP exporter encodes
    telemetry = build_telemetry("names", metric_readers=[otlp_view])
    meter = telemetry.meter("names")
    for spec in ins.ALL_INSTRUMENTS:
        observe = [lambda _options: [Observation(1)]]
        instrument = ins.create(meter, spec, callbacks=observe)
        if spec.kind is ins.Kind.COUNTER:
            instrument.add(1)
        elif spec.kind is ins.Kind.HISTOGRAM:
            instrument.record(0.3)
        elif spec.kind is ins.Kind.GAUGE:
            instrument.set(1)

    app = FastAPI()

    @app.get("/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    telemetry.instrument_fastapi(app, excluded_urls="/metrics")
    with TestClient(app) as client:
        assert client.get("/thing").status_code == 200

    assert telemetry.tracer_provider.force_flush(5000)

    data = otlp_view.get_metrics_data()
    assert data is not None
    metrics = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    yield telemetry, metrics
    telemetry.shutdown()
    patch.undo()
    receiver.stop()


def test_both_paths_store_the_same_names_and_types(
    exercised: tuple[Telemetry, list[Metric]], capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry, metrics = exercised
    strategy = configured_strategy()
    via_collector = {collector_path(m, strategy) for m in metrics}
    body, content_type = telemetry.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    direct = {s for s in direct_path(body.decode()) if not DIRECT_ONLY.fullmatch(s.name)}
    with capsys.disabled():
        for stored in sorted(direct | via_collector, key=lambda s: s.name):
            print(
                f"\n  {stored.name} {stored.type}: direct={stored in direct} "
                f"collector={stored in via_collector}",
                end="",
            )
    assert direct == via_collector, {
        "only direct": direct - via_collector,
        "only via the Collector": via_collector - direct,
    }
    assert not any(s.type == "unknown" for s in direct | via_collector)


def test_every_instrument_is_exported_and_every_dropped_one_is_not(
    exercised: tuple[Telemetry, list[Metric]],
) -> None:
    _, metrics = exercised
    exported = {m.name for m in metrics}
    declared = {s.name for s in ins.ALL_INSTRUMENTS} | {r.name for r in ins.RENAMED_INSTRUMENTS}
    assert declared <= exported, f"declared but never exported: {declared - exported}"
    # Nothing reaches an exporter under a library's own name: renamed or dropped, not both.
    assert not exported & {r.source for r in ins.RENAMED_INSTRUMENTS}
    assert not exported & set(ins.DROPPED_INSTRUMENTS)
    assert exported <= declared, f"exported but not in the instrument table: {exported - declared}"


def test_the_server_instrumentation_really_creates_what_is_dropped() -> None:
    """Without our Views the FastAPI instrumentation exports these: a dropped name that no
    library creates any more would hide a rename upstream (and a cost come back)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    app = FastAPI()

    @app.get("/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=TracerProvider(), meter_provider=provider
    )
    with TestClient(app) as client:
        assert client.get("/thing").status_code == 200
    data = reader.get_metrics_data()
    assert data is not None
    created = {
        m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    provider.shutdown()
    unread = created - {r.source for r in ins.RENAMED_INSTRUMENTS}
    assert unread, created
    assert unread <= set(ins.DROPPED_INSTRUMENTS), unread
