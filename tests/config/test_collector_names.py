"""The names the Collector's Prometheus exporter gives the contract metrics, as configured.

The Collector cannot run here, so this test re-implements the exporter's name translation
and applies it in the mode otel-collector.yaml selects. The rule is the one in
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
"""

from __future__ import annotations

import re

import pytest

from telemetry import instruments as ins
from tests.config import stack_files

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
    gauge = kind in (ins.Kind.GAUGE, ins.Kind.OBSERVABLE_GAUGE)
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
# metrics through the Collector too.
@pytest.mark.parametrize("spec", ins.ALL_INSTRUMENTS, ids=lambda spec: spec.name)
def test_collector_exports_declared_name(
    spec: ins.InstrumentSpec, capsys: pytest.CaptureFixture[str]
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
