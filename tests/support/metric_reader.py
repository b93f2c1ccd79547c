"""What an in-memory OpenTelemetry reader holds: each data point of one metric by its
attributes, for unit tests that assert on exact counts."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

Labels = tuple[tuple[str, str], ...]


def point_values(reader: InMemoryMetricReader, name: str) -> dict[Labels, float]:
    """{sorted (attribute, value) pairs: the point's value} for every point of `name`; a
    histogram's point gives its count."""
    data = reader.get_metrics_data()
    out: dict[Labels, float] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        key = tuple(
                            sorted((k, str(v)) for k, v in (point.attributes or {}).items())
                        )
                        out[key] = getattr(point, "value", getattr(point, "count", 0))
    return out
