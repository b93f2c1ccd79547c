"""loadgen report math: HDR percentiles, accuracy, error rate, and the Prometheus reconciliation
(with a mock Prometheus HTTP API: no network)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest

from loadgen.payloads import RequestSpec
from loadgen.prometheus import (
    FAILED,
    SUCCESSFUL,
    TOTAL,
    PrometheusError,
    PrometheusProbe,
    Snapshot,
    reconcile,
)
from loadgen.report import build_report, render
from loadgen.runner import decode_predictions
from loadgen.stats import CONNECTION, TIMEOUT, Outcome, Recorder, summarize_histogram

SINGLE = RequestSpec("features", "/predict", b"{}", (2,))
BATCH = RequestSpec("batch", "/predict/batch", b"{}", (0, 1, 2, 2))
BROKEN = RequestSpec("wrong_count", "/predict", b"{}")


def _done(
    recorder: Recorder,
    spec: RequestSpec,
    latency: float,
    status: int | None = 200,
    error: str | None = None,
    predictions: tuple[int, ...] = (),
) -> None:
    recorder.on_send(spec, 0.0, 0.0)
    recorder.on_done(Outcome(spec, 0.0, 0.0, latency, status, error, predictions))


def test_percentiles_come_from_the_hdr_histogram() -> None:
    recorder = Recorder(start=0.0)
    for ms in range(1, 1001):  # 1 ms .. 1000 ms, uniformly
        _done(recorder, SINGLE, ms / 1000, predictions=(2,))
    summary = summarize_histogram(recorder.latency)
    assert summary["count"] == 1000
    for key, expected in {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}.items():
        assert summary[key] == pytest.approx(expected, rel=0.002)
    assert summary["max"] == pytest.approx(1.0, rel=0.001)
    assert summary["mean"] == pytest.approx(0.5005, rel=0.002)


def test_accuracy_counts_every_labelled_row_answered() -> None:
    recorder = Recorder(start=0.0)
    _done(recorder, SINGLE, 0.01, predictions=(2,))  # right
    _done(recorder, SINGLE, 0.01, predictions=(0,))  # wrong
    _done(recorder, BATCH, 0.01, predictions=(0, 1, 1, 2))  # 3 of 4 right
    _done(recorder, SINGLE, 0.01, status=503)  # no answer, no accuracy
    _done(recorder, BROKEN, 0.01, status=422)
    assert (recorder.correct, recorder.labelled) == (4, 6)
    assert recorder.accuracy() == pytest.approx(4 / 6)


def test_error_rate_is_what_did_not_get_what_it_deserved() -> None:
    recorder = Recorder(start=0.0)
    _done(recorder, SINGLE, 0.01, predictions=(2,))
    _done(recorder, BROKEN, 0.01, status=422)  # invalid and refused: as expected
    _done(recorder, BROKEN, 0.01, status=200)  # invalid yet accepted: unexpected
    _done(recorder, SINGLE, 0.01, status=504)
    _done(recorder, SINGLE, 10.0, status=None, error=TIMEOUT)
    _done(recorder, SINGLE, 0.001, status=None, error=CONNECTION)
    recorder.on_drop(SINGLE, 0.0)
    assert recorder.unexpected == 5
    assert recorder.error_rate() == pytest.approx(5 / 7)
    assert recorder.status_classes() == {"2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1}
    # Timeouts are in the latency histogram (a stall must show); refused connections are not.
    assert recorder.latency.get_total_count() == 5
    assert summarize_histogram(recorder.latency)["max"] == pytest.approx(10, rel=0.001)


def test_rates_compare_sends_with_their_schedule() -> None:
    recorder = Recorder(start=0.0)
    for i in range(11):  # due every 0.1 s, sent 0.05 s late each but evenly
        recorder.on_send(SINGLE, i * 0.1, i * 0.1 + 0.05)
    assert recorder.target_rate() == pytest.approx(10)
    assert recorder.send_rate() == pytest.approx(10)


def test_report_is_json_and_renders() -> None:
    recorder = Recorder(start=0.0)
    _done(recorder, SINGLE, 0.02, predictions=(2,))
    _done(recorder, BROKEN, 0.01, status=422)
    report = build_report(
        recorder, url="http://x", mode="open-loop", profile="p", elapsed=1.0, closed_loop=False
    )
    assert json.loads(json.dumps(report))["status_codes"] == {"200": 1, "422": 1}
    assert report["kinds"]["wrong_count"] == {"422": 1, "sent": 1}
    text = render(report)
    for word in ("p50", "p99.9", "max", "accuracy", "timeouts", "connection errors"):
        assert word in text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prediction": 2, "label": "High"}, (2,)),
        ({"predictions": [{"prediction": 0}, {"prediction": 1}]}, (0, 1)),
        ({"unexpected": True}, ()),
        (None, ()),
    ],
)
def test_decode_predictions(body: object, expected: tuple[int, ...]) -> None:
    assert decode_predictions(body) == expected


def _recorder(ok: int, refused: int, timeouts: int = 0) -> Recorder:
    recorder = Recorder(start=0.0)
    for _ in range(ok):
        _done(recorder, SINGLE, 0.01, predictions=(2,))
    for _ in range(refused):
        _done(recorder, BROKEN, 0.01, status=422)
    for _ in range(timeouts):
        _done(recorder, SINGLE, 5.0, status=None, error=TIMEOUT)
    return recorder


def _snap(total: int, ok: int, failed: int) -> Snapshot:
    return Snapshot(0.0, {TOTAL: total, SUCCESSFUL: ok, FAILED: failed})


def test_reconcile_exact_match() -> None:
    result = reconcile(_snap(5, 4, 1), _snap(35, 24, 11), _recorder(20, 10))
    assert result.ok and result.observed == {TOTAL: 30, SUCCESSFUL: 20, FAILED: 10}


def test_reconcile_reports_every_difference() -> None:
    result = reconcile(_snap(0, 0, 0), _snap(29, 20, 9), _recorder(20, 10))
    assert not result.ok
    assert any(TOTAL in p and "diff -1" in p for p in result.problems)
    assert any(FAILED in p for p in result.problems)


def test_reconcile_gives_timeouts_a_range() -> None:
    recorder = _recorder(20, 10, timeouts=2)
    assert reconcile(_snap(0, 0, 0), _snap(31, 21, 10), recorder).ok
    assert reconcile(_snap(0, 0, 0), _snap(30, 20, 10), recorder).ok
    assert not reconcile(_snap(0, 0, 0), _snap(33, 23, 10), recorder).ok


def test_reconcile_catches_counters_that_disagree_among_themselves() -> None:
    result = reconcile(_snap(0, 0, 0), _snap(30, 20, 11), _recorder(20, 10, timeouts=1))
    assert any("disagree" in p for p in result.problems)


class FakePrometheus:
    """Answers like Prometheus's query API from a list of scrapes: a range query gives every
    sample, an instant query only the series in the latest scrape of their target (the others
    went stale). Counters may be scraped on their own cadence (the Collector's path): a scrape
    holding only `up` leaves them live."""

    def __init__(self) -> None:
        self.scrapes: list[tuple[float, dict[tuple[str, str], float]]] = []
        self.queries: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())["query"][0]
        self.queries.append(query)
        series: dict[tuple[str, str], list[list[object]]] = {}
        for ts, values in self.scrapes:
            for key, value in values.items():
                series.setdefault(key, []).append([ts, str(value)])
        # A counter series is live if the latest scrape of counters still had it.
        with_counters = [values for _, values in self.scrapes if set(values) - {UP}]
        latest = with_counters[-1] if with_counters else {}

        def labels(name: str, ep: str) -> dict[str, str]:
            return {"__name__": name, "endpoint": ep, "job": "gw"}

        result: list[dict[str, object]]
        if "[" in query:
            result = [
                {"metric": labels(*key), "values": samples} for key, samples in series.items()
            ]
            data = {"resultType": "matrix", "result": result}
        else:
            result = [
                {"metric": labels(*key), "value": [0, "0"]} for key in latest if key[0] != "up"
            ]
            data = {"resultType": "vector", "result": result}
        return httpx.Response(200, json={"status": "success", "data": data})


UP = ("up", "")


def _probe(fake: FakePrometheus, clock: list[float], on_sleep=None) -> PrometheusProbe:
    def tick() -> float:
        clock[0] += 1.0
        if on_sleep is not None:
            on_sleep(clock[0])
        return clock[0]

    return PrometheusProbe(
        "http://prom.test",
        'job="gw"',
        timeout=30,
        poll=0,
        client=httpx.Client(transport=httpx.MockTransport(fake.handler)),
        clock=tick,
    )


def test_probe_sums_label_sets_and_waits_for_a_settled_scrape() -> None:
    fake = FakePrometheus()
    fake.scrapes.append((100.0, {UP: 1, (TOTAL, "/predict"): 5, (SUCCESSFUL, "/predict"): 5}))
    clock = [100.0]

    def scrape(now: float) -> None:
        # One scrape a "second"; the batch endpoint's counts trickle in over three scrapes.
        extra = int(min(max(now - 101, 0), 3))
        fake.scrapes.append(
            (
                now,
                {
                    UP: 1,
                    (TOTAL, "/predict"): 9,
                    (TOTAL, "/predict/batch"): extra,
                    (SUCCESSFUL, "/predict"): 7,
                    (SUCCESSFUL, "/predict/batch"): extra,
                    (FAILED, "/predict"): 2,
                },
            )
        )

    probe = _probe(fake, clock, scrape)
    snapshot = probe.settled(101.5)
    assert snapshot.values == {TOTAL: 12, SUCCESSFUL: 10, FAILED: 2}
    assert snapshot.at > 104
    assert all('job="gw"' in q for q in fake.queries)


def test_probe_ignores_series_gone_stale() -> None:
    fake = FakePrometheus()
    fake.scrapes.append((100.0, {UP: 1, (TOTAL, "old"): 50, (TOTAL, "/predict"): 1}))

    def scrape(now: float) -> None:
        fake.scrapes.append((now, {UP: 1, (TOTAL, "/predict"): 4}))

    assert _probe(fake, [100.0], scrape).settled(100.5).values[TOTAL] == 4


def test_probe_waits_for_counters_on_their_own_cadence() -> None:
    # Through the Collector the counters are scraped from another target than the gateway's
    # `up`: a fresh `up` is not enough, the counters themselves must be newer than the mark.
    fake = FakePrometheus()

    def scrape(now: float) -> None:
        values: dict[tuple[str, str], float] = {UP: 1}
        if now % 4 == 0:
            values[(TOTAL, "/predict")] = 3 if now < 110 else 8
        fake.scrapes.append((now, values))

    fake.scrapes.append((100.0, {UP: 1, (TOTAL, "/predict"): 3}))
    snapshot = _probe(fake, [100.0], scrape).settled(105.0)
    assert snapshot.values[TOTAL] == 8 and snapshot.at >= 112


def test_probe_counts_zero_before_the_gateway_counted_anything() -> None:
    fake = FakePrometheus()

    def scrape(now: float) -> None:
        fake.scrapes.append((now, {UP: 1}))

    snapshot = _probe(fake, [100.0], scrape).settled(100.5)
    assert snapshot.values == {TOTAL: 0, SUCCESSFUL: 0, FAILED: 0} and snapshot.at > 100.5


def test_probe_gives_up_with_a_message() -> None:
    fake = FakePrometheus()  # never scrapes anything
    probe = _probe(fake, [0.0])
    with pytest.raises(PrometheusError, match="no scrape of the gateway.s counters"):
        probe.settled(0.0)
