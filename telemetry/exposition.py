"""The process's own /metrics: the SDK's metrics as Prometheus text, or OpenMetrics with exemplars.

Why not the upstream PrometheusMetricReader alone: it drops the exemplars the SDK records
(its histogram branch passes only bucket counts and the sum to prometheus_client; exemplar
support is an open request upstream). The reader below is the upstream reader with that
one branch replaced: every name, label, unit and `target_info` comes from the upstream
code unchanged (the classic text output is byte-for-byte the upstream's, checked by
tests/integration/test_exemplars.py), and each histogram bucket gets the exemplar the SDK's
aligned-bucket reservoir kept for it. prometheus_client writes exemplars only in the
OpenMetrics format, which Prometheus asks for when exemplar storage is on; the classic
format is unchanged. The upstream collector's `_translate_metric` / `_collect_data_points`
are private: the version is pinned in uv.lock and the tests fail if they change.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.prometheus import (  # type: ignore[attr-defined]
    PrometheusMetricReader,
    _CustomCollector,
    _get_or_create_family,
)
from opentelemetry.exporter.prometheus._mapping import map_unit
from opentelemetry.sdk.metrics.export import Histogram, HistogramDataPoint, Metric
from opentelemetry.util.types import AnyValue
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar

# The exemplar label names the Collector's Prometheus exporter writes (otlptranslator's
# ExemplarTraceIDKey / ExemplarSpanIDKey): Grafana's datasource maps `trace_id` to Tempo.
TRACE_ID_LABEL = "trace_id"
SPAN_ID_LABEL = "span_id"


def exemplar_for(point_exemplar: Any) -> Exemplar | None:
    """The OpenMetrics exemplar of one SDK exemplar; None without a trace (nothing to open)."""
    if not point_exemplar.trace_id or not point_exemplar.span_id:
        return None
    return Exemplar(
        {
            TRACE_ID_LABEL: format(point_exemplar.trace_id, "032x"),
            SPAN_ID_LABEL: format(point_exemplar.span_id, "016x"),
        },
        point_exemplar.value,
        point_exemplar.time_unix_nano / 1e9,
    )


def buckets_with_exemplars(point: HistogramDataPoint) -> list[tuple[str, float, Exemplar | None]]:
    """Cumulative buckets as the upstream exporter writes them, each with the exemplar whose
    value falls in it (the SDK's reservoir keeps at most one per bucket, `value <= bound`)."""
    by_bucket: dict[int, Exemplar] = {}
    for sdk_exemplar in point.exemplars or ():
        exemplar = exemplar_for(sdk_exemplar)
        if exemplar is not None:
            by_bucket[bisect.bisect_left(point.explicit_bounds, sdk_exemplar.value)] = exemplar
    buckets: list[tuple[str, float, Exemplar | None]] = []
    total = 0
    bounds = [*point.explicit_bounds, "+Inf"]
    for index, (bound, count) in enumerate(zip(bounds, point.bucket_counts, strict=False)):
        total += count
        buckets.append((f"{bound}", total, by_bucket.get(index)))
    return buckets


class _ExemplarCollector(_CustomCollector):  # type: ignore[misc]
    """The upstream collector, except that histogram buckets carry their exemplars."""

    def _translate_metric(
        self,
        metric: Metric,
        scope_attrs: dict[str, AnyValue],
        resource_attrs: dict[str, AnyValue],
        metric_family_id_metric_family: dict[str, Any],
    ) -> None:
        if not isinstance(metric.data, Histogram):
            super()._translate_metric(
                metric=metric,
                scope_attrs=scope_attrs,
                resource_attrs=resource_attrs,
                metric_family_id_metric_family=metric_family_id_metric_family,
            )
            return
        name = self._resolve_metric_name(metric.name)
        description = metric.description or ""
        unit = map_unit(metric.unit or "")
        label_keys, label_rows, _ = self._collect_data_points(
            metric.data, scope_attrs, resource_attrs
        )
        # The same family id as upstream, so families merge exactly as they would there.
        family_id = "|".join(("|".join((name, description, unit)), HistogramMetricFamily.__name__))
        family = _get_or_create_family(
            metric_family_id_metric_family,
            family_id,
            HistogramMetricFamily,
            name=name,
            documentation=description,
            labels=label_keys,
            unit=unit,
        )
        points: Sequence[HistogramDataPoint] = metric.data.data_points
        for labels, point in zip(label_rows, points, strict=True):
            buckets = [
                (le, count, exemplar) if exemplar is not None else (le, count)
                for le, count, exemplar in buckets_with_exemplars(point)
            ]
            family.add_metric(labels=labels, buckets=buckets, sum_value=point.sum)


class ExemplarPrometheusReader(PrometheusMetricReader):  # type: ignore[misc]
    """PrometheusMetricReader whose histograms keep the exemplars the SDK recorded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # The parent registers its own collector; this one replaces it before any scrape.
        super().__init__(registry=registry)
        registry.unregister(self._collector)
        self._collector = _ExemplarCollector()
        # Registered before the callback is set, as upstream does: the registry collects once
        # on register to learn the names, before the reader belongs to a MeterProvider.
        registry.register(self._collector)
        self._collector._callback = self.collect  # type: ignore[assignment]


def exposition(registry: CollectorRegistry, accept_header: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper asked for: OpenMetrics (with exemplars) when
    the Accept header names it, the classic text format otherwise. Returns (body, type)."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(registry), content_type
