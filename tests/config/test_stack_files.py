"""The helpers the dashboard/rule integration test relies on to read PromQL."""

from __future__ import annotations

import pytest

from tests.config.stack_files import host_port, metric_names, substitute_grafana_variables


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, endpoint) (rate(x_seconds_bucket{a="b"}[5m])))',
            {"x_seconds_bucket"},
        ),
        ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
        ("1 - lungwatch:slo_x:ratio_rate1h / 0.001", {"lungwatch:slo_x:ratio_rate1h"}),
        ("avg_over_time((max(api_result) == bool 0)[1h:])", {"api_result"}),
        ('rate(a_total[5m]) > 1e3 and on () (max(up{job="g"}) == 1)', {"a_total", "up"}),
        ('sum without (instance) (b{reason!="x, y"}) unless c offset 5m', {"b", "c"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_substitution_of_grafana_variables() -> None:
    expr = 'sum(rate(m{endpoint=~"$endpoint"}[$__rate_interval])) + rate(n[$__interval])'
    assert substitute_grafana_variables(expr, "15s", "5s") == (
        'sum(rate(m{endpoint=~".*"}[15s])) + rate(n[5s])'
    )
    with pytest.raises(ValueError, match="instance"):
        substitute_grafana_variables('up{instance=~"$instance"}', "15s", "5s")


def test_host_port() -> None:
    assert host_port("http://otel-collector:4318") == ("otel-collector", 4318)
    assert host_port("0.0.0.0:8889") == ("0.0.0.0", 8889)
    assert host_port("http://prometheus:9090/api/v1/write") == ("prometheus", 9090)
