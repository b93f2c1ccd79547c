"""Counters and gauges kept as tallies export what the SDK's synchronous instruments did."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

from telemetry import instruments as ins


def _points(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    if data is None:  # nothing recorded yet
        return {}
    return {
        metric.name: metric.data
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }


def _by_attributes(data: Any) -> dict[frozenset[tuple[str, Any]], float]:
    return {frozenset(p.attributes.items()): p.value for p in data.data_points}


def test_counter_is_a_monotonic_cumulative_sum_per_attribute_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    total = ins.create(meter, ins.TOTAL_REQUESTS)
    failed = ins.create(meter, ins.FAILED_REQUESTS)
    assert ins.TOTAL_REQUESTS.name not in _points(reader)  # nothing before the first add

    total.add(1, {"endpoint": "/predict"})
    total.add(1, {"endpoint": "/predict"})
    total.add(3, {"endpoint": "/predict/batch"})
    # the same attribute set written in another order is the same series
    failed.add(1, {"endpoint": "/predict", "reason": "model_timeout"})
    failed.add(1, {"reason": "model_timeout", "endpoint": "/predict"})
    first = _points(reader)
    data = first[ins.TOTAL_REQUESTS.name]
    assert isinstance(data, Sum) and data.is_monotonic
    assert _by_attributes(data) == {
        frozenset({("endpoint", "/predict")}): 2,
        frozenset({("endpoint", "/predict/batch")}): 3,
    }
    assert list(_by_attributes(first[ins.FAILED_REQUESTS.name]).values()) == [2]
    assert all(not p.exemplars for p in data.data_points)

    total.add(1, {"endpoint": "/predict"})
    again = _by_attributes(_points(reader)[ins.TOTAL_REQUESTS.name])
    assert again[frozenset({("endpoint", "/predict")})] == 3  # cumulative across collections


def test_gauge_reports_the_last_value_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    gauge = ins.create(meter, ins.PREDICTION_CONFIDENCE)
    assert ins.PREDICTION_CONFIDENCE.name not in _points(reader)
    gauge.set(0.4)
    gauge.set(0.93)
    data = _points(reader)[ins.PREDICTION_CONFIDENCE.name]
    assert isinstance(data, Gauge)
    assert [p.value for p in data.data_points] == [0.93]


def test_adds_from_many_threads_while_a_reader_collects_are_all_counted() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    rows = ins.create(meter, ins.MODEL_ROWS)
    attributes = [{"endpoint": f"/e{i}"} for i in range(50)]  # new series while collecting
    done = threading.Event()

    def add() -> None:
        for i in range(20_000):
            rows.add(1, attributes[i % 50])

    def collect() -> None:
        while not done.is_set():
            _points(reader)

    collector = threading.Thread(target=collect)
    collector.start()
    adders = [threading.Thread(target=add) for _ in range(4)]
    for t in adders:
        t.start()
    for t in adders:
        t.join()
    done.set()
    collector.join()
    counted = _by_attributes(_points(reader)[ins.MODEL_ROWS.name])
    assert sum(counted.values()) == 80_000
    assert len(counted) == 50
