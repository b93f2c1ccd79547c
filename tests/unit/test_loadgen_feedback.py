"""loadgen --feedback over a mock gateway (no network): every labelled row predicted gets its true
level posted with its prediction id, shifted rows and failures get none, rejections are tallied,
and feedback never leaks into the prediction figures or the Prometheus reconciliation."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from dataclasses import dataclass, field

import httpx
import pytest

from contract.features import FEATURE_NAMES, LABELS
from loadgen import cli
from loadgen.drift import PROFILES, DriftingRowSource
from loadgen.feedback import FeedbackHook, prediction_ids
from loadgen.payloads import LabelledRow, Mix, PayloadFactory, RowSource
from loadgen.prometheus import FAILED, SUCCESSFUL, TOTAL, expected_counts
from loadgen.runner import RunPlan, run
from loadgen.stats import Recorder

# Three synthetic patients whose age names their true class; the fake model predicts by age.
ROWS = [LabelledRow((30 + label, *([1] * (len(FEATURE_NAMES) - 1))), label) for label in (0, 1, 2)]


@dataclass
class FakeGateway:
    """Issues a prediction id per row and accepts feedback for ids it issued, once each."""

    predict: dict[int, int] = field(default_factory=lambda: {30: 0, 31: 1, 32: 2})
    fail_every: int = 0  # answer every n-th prediction call with a 503
    forget_every: int = 0  # treat every n-th issued id as expired
    versions: tuple[str, ...] = ()  # answer call n with model_version versions[n % len]
    version_of: dict[str, str] = field(default_factory=dict)  # every id issued -> its version
    issued: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (age, predicted)
    ages: dict[str, int] = field(default_factory=dict)  # every id issued -> the row's age
    feedback: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def _row(self, obj: dict, version: str | None) -> dict:
        age = obj["features"][0] if "features" in obj else obj["patient"]["age"]
        predicted = self.predict.get(age, 0)
        pid = f"p{next(self.ids)}"
        self.ages[pid] = age
        if version is not None:
            self.version_of[pid] = version
        if not (self.forget_every and int(pid[1:]) % self.forget_every == 0):
            self.issued[pid] = (age, predicted)
        return {"prediction": predicted, "label": LABELS[predicted], "prediction_id": pid}

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/feedback":
            if set(body) != {"prediction_id", "level"} or body["level"] not in LABELS:
                return httpx.Response(422, json={"error": "invalid_request"})
            if body["prediction_id"] not in self.issued:
                return httpx.Response(404, json={"error": "unknown_prediction", "message": "?"})
            self.issued.pop(body["prediction_id"])  # a second report would be refused
            self.feedback.append((body["prediction_id"], body["level"]))
            return httpx.Response(200, json={"status": "recorded"})
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            return httpx.Response(503, json={"error": "model_unavailable"})
        version = self.versions[self.calls % len(self.versions)] if self.versions else None
        tag = {} if version is None else {"model_version": version}
        if request.url.path == "/predict/batch":
            rows = [self._row(r, version) for r in body["rows"]]
            return httpx.Response(200, json={"predictions": rows, **tag})
        return httpx.Response(200, json={**self._row(body, version), **tag})


def _run(
    fake: FakeGateway, source: RowSource, n: int, hook: FeedbackHook, batch_share: float = 0.3
) -> Recorder:
    factory = PayloadFactory(
        source, Mix({}, batch_share=batch_share, batch_size=4), random.Random(1)
    )
    plan = RunPlan(offsets=(i * 0.001 for i in itertools.count()), requests=n, hooks=(hook,))
    transport = httpx.MockTransport(fake.handler)
    return asyncio.run(run("http://gw", plan, factory, progress=None, transport=transport))


def test_prediction_ids_of_single_and_batch_answers() -> None:
    assert prediction_ids({"prediction": 1, "prediction_id": "a"}) == ("a",)
    batch = {"predictions": [{"prediction_id": "a"}, {"prediction_id": ""}, {}, "x"]}
    assert prediction_ids(batch) == ("a", None, None, None)
    bodies: tuple[object, ...] = (None, [], "x", {"prediction": 1})
    for body in bodies:
        assert prediction_ids(body) == ()


def test_every_labelled_row_gets_its_true_level_back() -> None:
    fake, hook = FakeGateway(), FeedbackHook()
    recorder = _run(fake, RowSource(ROWS), 60, hook)
    rows_answered = recorder.labelled
    assert rows_answered > 60  # batches carry 4 rows each
    assert hook.sent == hook.accepted == rows_answered == len(fake.feedback)
    assert not fake.issued  # no id left without its feedback
    for _, level in fake.feedback:
        assert level in LABELS
    # The level sent is the row's own label (the fake encodes it in the age).
    posted = dict(fake.feedback)
    assert len(posted) == rows_answered  # one report per prediction id, never two
    assert hook.accuracy() == 1.0 == recorder.accuracy()
    assert hook.summary()["rejected"] == 0


def test_levels_follow_the_rows_and_accuracy_matches_the_model() -> None:
    # The fake model calls everybody High: right only for the High rows.
    fake = FakeGateway(predict={30: 2, 31: 2, 32: 2})
    hook = FeedbackHook()
    recorder = _run(fake, RowSource(ROWS), 90, hook)
    assert {level for _, level in fake.feedback} == set(LABELS)
    for pid, level in fake.feedback:
        assert level == LABELS[fake.ages[pid] - 30]  # the true level of that very row
    assert hook.accuracy() == pytest.approx(recorder.accuracy())
    recall = hook.recall()
    assert recall["High"] == 1.0 and recall["Low"] == 0.0 and recall["Medium"] == 0.0
    assert hook.confusion[(0, 2)] + hook.confusion[(1, 2)] + hook.confusion[(2, 2)] == hook.sent


def test_shifted_rows_and_failed_predictions_get_no_feedback() -> None:
    fake, hook = FakeGateway(fail_every=5), FeedbackHook()
    source = DriftingRowSource(ROWS, PROFILES["older"], share=0.5)
    recorder = _run(fake, source, 100, hook)
    assert recorder.status[503] == 20
    assert hook.skipped_unlabelled == recorder.shifted_answered > 0
    assert hook.sent == recorder.labelled == len(fake.feedback)
    # The ids left without feedback are exactly the shifted rows' (age +25: 55..57).
    assert len(fake.issued) == hook.skipped_unlabelled
    assert {fake.ages[pid] for pid in fake.issued} <= {55, 56, 57}
    assert all(fake.ages[pid] in (30, 31, 32) for pid, _ in fake.feedback)


def test_unknown_ids_are_rejected_and_tallied_by_reason() -> None:
    fake, hook = FakeGateway(forget_every=3), FeedbackHook()
    _run(fake, RowSource(ROWS), 60, hook, batch_share=0.0)
    summary = hook.summary()
    assert summary["sent"] == 60
    assert summary["rejected_by_reason"] == {"unknown_prediction": 20}
    assert summary["status_codes"] == {"200": 40, "404": 20}
    assert summary["accepted"] == 40 == sum(hook.confusion.values())


def test_feedback_is_tallied_by_the_version_that_answered_the_prediction() -> None:
    # Medium rows are predicted High: wrong. Every fourth id expired: rejected, not counted.
    fake = FakeGateway(predict={30: 0, 31: 2, 32: 2}, forget_every=4, versions=("3", "4", "12"))
    hook = FeedbackHook()
    _run(fake, RowSource(ROWS), 120, hook)
    expected: dict[str, dict[str, int]] = {}
    for pid in fake.ages:  # every id issued got its feedback posted: no shifted rows, no 503
        zero = {"sent": 0, "accepted": 0, "correct": 0}
        expected.setdefault(fake.version_of[pid], zero)["sent"] += 1
    for pid, level in fake.feedback:
        tally = expected[fake.version_of[pid]]
        tally["accepted"] += 1
        tally["correct"] += fake.predict[fake.ages[pid]] == LABELS.index(level)
    summary = hook.summary()
    assert summary["by_model_version"] == expected
    assert list(summary["by_model_version"]) == ["3", "4", "12"]
    by_version = summary["by_model_version"].values()
    assert sum(t["accepted"] for t in by_version) == hook.accepted < hook.sent
    assert 0 < sum(t["correct"] for t in by_version) < hook.accepted
    assert sum(t["sent"] for t in by_version) == hook.sent


def test_feedback_without_a_version_is_tallied_as_unknown() -> None:
    fake, hook = FakeGateway(), FeedbackHook()  # an older gateway: no model_version
    _run(fake, RowSource(ROWS), 20, hook)
    assert list(hook.by_model_version()) == ["unknown"]
    assert hook.by_model_version()["unknown"]["accepted"] == hook.accepted > 0


def test_feedback_is_not_a_prediction_request() -> None:
    """The recorder, and so the reconciliation, sees the prediction calls only."""
    fake, hook = FakeGateway(fail_every=4), FeedbackHook()
    recorder = _run(fake, RowSource(ROWS), 40, hook)
    assert hook.sent > 0
    assert recorder.sent == 40 == recorder.responses == fake.calls
    assert dict(recorder.status) == {200: 30, 503: 10}
    assert expected_counts(recorder) == {TOTAL: (40, 40), SUCCESSFUL: (30, 30), FAILED: (10, 10)}


def test_a_failing_feedback_endpoint_never_fails_the_run() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/feedback":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"prediction": 0, "prediction_id": "x"})

    hook = FeedbackHook()
    factory = PayloadFactory(RowSource(ROWS), Mix({}), random.Random(2))
    plan = RunPlan(offsets=(i * 0.001 for i in itertools.count()), requests=10, hooks=(hook,))
    recorder = asyncio.run(
        run("http://gw", plan, factory, progress=None, transport=httpx.MockTransport(handler))
    )
    assert recorder.status[200] == 10 and recorder.unexpected == 0
    assert hook.summary()["no_answer"] == {"connection": 10}
    assert hook.accepted == 0 and hook.accuracy() is None


def test_answers_without_ids_are_counted_not_guessed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path != "/feedback"
        return httpx.Response(200, json={"prediction": 0})  # an older gateway: no id

    hook = FeedbackHook()
    factory = PayloadFactory(RowSource(ROWS), Mix({}), random.Random(3))
    plan = RunPlan(offsets=(i * 0.001 for i in itertools.count()), requests=5, hooks=(hook,))
    asyncio.run(
        run("http://gw", plan, factory, progress=None, transport=httpx.MockTransport(handler))
    )
    assert hook.sent == 0 and hook.skipped_no_id == 5


def test_main_with_feedback_reports_it_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeGateway(predict={})  # every dataset row is predicted Low
    real_client = httpx.AsyncClient

    def client_with_mock(**kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(fake.handler)
        return real_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client_with_mock)
    out = tmp_path / "r.json"
    argv = ["--rate", "500", "--requests", "50", "--quiet", "--seed", "4", "--json", str(out)]
    argv += ["--feedback", "--batch-share", "0.2", "--drift", "--drift-share", "0.3"]
    assert cli.main(argv) == cli.EXIT_OK
    report = json.loads(out.read_text())
    feedback = report["feedback"]
    assert report["sent"] == 50 == fake.calls  # feedback calls are not among them
    assert feedback["accepted"] == feedback["sent"] == report["accuracy"]["labelled_rows"]
    assert feedback["skipped_unlabelled"] == report["drift"]["shifted_rows_answered"] > 0
    assert feedback["accuracy_of_accepted"] == pytest.approx(report["accuracy"]["accuracy"])
    text = capsys.readouterr().out
    assert "feedback    sent" in text
    accepted, correct = feedback["accepted"], feedback["by_model_version"]["unknown"]["correct"]
    assert f"    by version unknown: {correct}/{accepted} accepted correct" in text
    assert "feedback" not in report["kinds"]


def test_feedback_hook_is_plugged_only_when_asked() -> None:
    assert cli.feedback_hook(cli.resolve([]).plan) is None
    options = cli.resolve(["--feedback"])
    assert isinstance(cli.feedback_hook(options.plan), FeedbackHook)
    assert options.profile.endswith(", feedback")
