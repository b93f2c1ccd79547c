"""loadgen's per-version accounting over a mock gateway (no network): answers and rows counted by
the answer's top-level `model_version`, in the JSON report and the text, equal to what the
gateway itself said it answered."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from loadgen import cli
from loadgen.payloads import PREDICT_BATCH, Mix, PayloadFactory, RequestSpec, RowSource, load_rows
from loadgen.report import build_report, render
from loadgen.runner import RunPlan, decode_model_version, run
from loadgen.stats import NO_VERSION, Outcome, Recorder, version_order

SINGLE = RequestSpec("features", "/predict", b"{}", (2,))
BATCH = RequestSpec("batch", "/predict/batch", b"{}", (0, 1, 2))


@dataclass
class VersionedGateway:
    """Answers version "9" then "10" in turn, a 503 every `fail_every` calls, and keeps its own
    tally of what it answered with which version."""

    fail_every: int = 0
    calls: int = 0
    answered: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            return httpx.Response(503, json={"error": "model_unavailable"})
        body = json.loads(request.content)
        version = ("9", "10")[self.calls % 2]
        n = len(body["rows"]) if request.url.path == PREDICT_BATCH else 1
        self.answered[version] += 1
        self.rows[version] += n
        row = {"prediction": 1, "label": "Medium", "prediction_id": f"p{self.calls}"}
        if request.url.path == PREDICT_BATCH:
            return httpx.Response(200, json={"predictions": [row] * n, "model_version": version})
        return httpx.Response(200, json={**row, "model_version": version})


def _done(recorder: Recorder, spec: RequestSpec, status: int, version: str | None) -> None:
    predictions = tuple(1 for _ in spec.labels) if status == 200 else ()
    recorder.on_send(spec, 0.0, 0.0)
    recorder.on_done(Outcome(spec, 0.0, 0.0, 0.01, status, None, predictions, None, version))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prediction": 1, "model_version": "3"}, "3"),
        ({"predictions": [{"prediction": 1}], "model_version": "12"}, "12"),
        ({"prediction": 1}, None),  # an older gateway
        ({"model_version": 3}, None),  # not the gateway's string
        ({"model_version": ""}, None),
        (None, None),
        ([{"model_version": "3"}], None),
    ],
)
def test_decode_model_version(body: object, expected: str | None) -> None:
    assert decode_model_version(body) == expected


def test_answers_and_rows_are_counted_by_version() -> None:
    recorder = Recorder(start=0.0)
    _done(recorder, SINGLE, 200, "3")
    _done(recorder, SINGLE, 200, "3")
    _done(recorder, BATCH, 200, "4")  # one answer, three rows
    _done(recorder, SINGLE, 200, None)  # a 200 that named no version
    _done(recorder, SINGLE, 503, None)  # not an answer with predictions
    _done(recorder, SINGLE, 422, None)
    assert recorder.by_model_version == {"3": 2, "4": 1, NO_VERSION: 1}
    assert recorder.rows_by_model_version == {"3": 2, "4": 3, NO_VERSION: 1}
    assert sum(recorder.by_model_version.values()) == recorder.status[200]


def test_versions_sort_numerically_then_by_name() -> None:
    assert version_order(["10", "unknown", "9", "other", "100"]) == [
        "9",
        "10",
        "100",
        "other",
        "unknown",
    ]


def test_report_has_versions_in_json_and_text() -> None:
    recorder = Recorder(start=0.0)
    for _ in range(3):
        _done(recorder, SINGLE, 200, "10")
    _done(recorder, BATCH, 200, "9")
    report = build_report(
        recorder, url="http://gw", mode="open-loop", profile="p", elapsed=1.0, closed_loop=False
    )
    assert json.loads(json.dumps(report))["by_model_version"] == {"9": 1, "10": 3}
    assert list(report["by_model_version"]) == ["9", "10"]
    assert report["rows_by_model_version"] == {"9": 3, "10": 3}
    assert "by version  9: 1 answers, 3 rows  10: 3 answers, 3 rows" in render(report)


def test_a_run_without_answers_says_so() -> None:
    recorder = Recorder(start=0.0)
    _done(recorder, SINGLE, 503, None)
    report = build_report(
        recorder, url="http://gw", mode="open-loop", profile="p", elapsed=1.0, closed_loop=False
    )
    assert report["by_model_version"] == {} == report["rows_by_model_version"]
    assert "by version  n/a (no answer 200)" in render(report)


def test_a_run_counts_what_the_gateway_answered_per_version() -> None:
    fake = VersionedGateway(fail_every=7)
    factory = PayloadFactory(
        RowSource(load_rows()), Mix({}, batch_share=0.3, batch_size=4), random.Random(5)
    )
    plan = RunPlan(offsets=(i * 0.001 for i in itertools.count()), requests=140)
    recorder = asyncio.run(
        run("http://gw", plan, factory, progress=None, transport=httpx.MockTransport(fake.handler))
    )
    assert recorder.status == {200: 120, 503: 20}
    assert recorder.by_model_version == fake.answered
    assert recorder.rows_by_model_version == fake.rows
    assert set(fake.answered) == {"9", "10"}


def test_main_writes_the_versions_into_the_json_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = VersionedGateway()
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(fake.handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out = tmp_path / "r.json"
    argv = ["--rate", "500", "--requests", "30", "--quiet", "--seed", "2", "--json", str(out)]
    argv += ["--batch-share", "0.5"]
    assert cli.main(argv) == cli.EXIT_OK
    report = json.loads(out.read_text())
    assert report["by_model_version"] == {"9": fake.answered["9"], "10": fake.answered["10"]}
    assert report["rows_by_model_version"] == dict(fake.rows)
    assert sum(report["by_model_version"].values()) == 30
    assert "by version  9: 15 answers" in capsys.readouterr().out
