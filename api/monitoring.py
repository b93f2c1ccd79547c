"""What the model predicts and how well: class counts, confidence, input drift, online accuracy.

The request path only appends to bounded structures (O(1) per row); drift is computed by a
background task every few seconds, off the request path; gauges read precomputed values.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from api.feedback_store import AnsweredIds, KeyRateLimit
from api.guard import key_id
from api.model_client import ModelAnswer
from api.prediction_ids import InvalidPredictionId, PredictionIds
from api.quality import QualityMonitor
from api.versions import version_label
from contract.drift import (
    DRIFT_TEST_ALPHA,
    DRIFT_THRESHOLD,
    MIN_TEST_ROWS,
    psi_by_feature,
    pvalues_by_feature,
)
from contract.features import FEATURE_NAMES, LABELS
from contract.settings import GATEWAY_DEFAULTS, GatewaySettings
from telemetry import Telemetry
from telemetry import instruments as ins

log = logging.getLogger("lungwatch.monitoring")

# The API key id (api.guard.key_id) of the request being served, or None with keys off. Set
# by api.deps.get_monitor, so `issue_id` binds each prediction id to the key that asked
# without every caller of it passing the key along; a context variable is per task, so per
# request.
CALLER: ContextVar[str | None] = ContextVar("lungwatch_caller", default=None)


@dataclass(frozen=True)
class FeedbackPolicy:
    """Who may send feedback for which prediction, and how fast (with API keys on).

    A key answers the predictions it made itself (unless `own_predictions` is off); a key
    in `any_prediction` (the labelling pipeline's) answers any prediction, including those
    made with keys off. Every key is held to `limit`. With keys off there is no caller:
    everything is accepted, as before feedback was bound to keys.
    """

    any_prediction: frozenset[str] = frozenset()  # key ids
    limit: KeyRateLimit | None = None
    own_predictions: bool = True

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FeedbackPolicy:
        rate = settings.feedback_rate_per_second
        return cls(
            frozenset(key_id(key) for key in settings.feedback_api_key_list),
            KeyRateLimit(rate, settings.feedback_burst) if rate > 0 else None,
            settings.feedback_own_predictions,
        )


OPEN_POLICY = FeedbackPolicy()


class FeedbackStore:
    """This replica's accuracy over its last `window` feedbacks (the per-instance gauges).

    A fixed-size ring with running totals: constant memory under any feedback stream. What
    the fleet's accuracy is made of is the outcome counter, which adds up across replicas;
    `max_pending` and `ttl_seconds` bound the duplicate check and the ids' lifetime.
    """

    def __init__(
        self,
        window: int = GATEWAY_DEFAULTS.feedback_window,
        max_pending: int = GATEWAY_DEFAULTS.feedback_max_pending,
        ttl_seconds: float = GATEWAY_DEFAULTS.feedback_ttl_seconds,
    ) -> None:
        self.window = window
        self.max_pending = max_pending
        self.ttl_seconds = ttl_seconds
        self._outcomes: deque[tuple[int, int]] = deque()
        self.correct = 0
        self.by_class_total = [0, 0, 0]  # per true class
        self.by_class_correct = [0, 0, 0]

    def record(self, predicted: int, true_class: int) -> bool:
        """Add one outcome to the window; True when the prediction was right."""
        self._outcomes.append((predicted, true_class))
        self._count(predicted, true_class, +1)
        if len(self._outcomes) > self.window:
            self._count(*self._outcomes.popleft(), -1)
        return predicted == true_class

    def _count(self, predicted: int, true_class: int, sign: int) -> None:
        hit = int(predicted == true_class)
        self.correct += sign * hit
        self.by_class_total[true_class] += sign
        self.by_class_correct[true_class] += sign * hit

    @property
    def size(self) -> int:
        return len(self._outcomes)

    def accuracy(self) -> float | None:
        return self.correct / self.size if self.size else None

    def recall(self, true_class: int) -> float | None:
        total = self.by_class_total[true_class]
        return self.by_class_correct[true_class] / total if total else None


@dataclass(frozen=True)
class FeedbackResult:
    """`accepted`, `duplicate`, `unknown_prediction` (not an id a configured key signed),
    `expired_prediction`, `forbidden` (made with another API key) or `rate_limited`;
    `message` says why when refused, `retry_after` (seconds) when rate-limited."""

    result: str
    correct: bool = False
    message: str = ""
    retry_after: int = 0


_REFUSALS = {
    "forged": "unknown_prediction",
    "expired": "expired_prediction",
    # Valid hex the schema let through but not shaped like our ids (e.g. an id from before
    # ids were signed): a prediction this service does not know, like a forged one.
    "malformed": "unknown_prediction",
}


# A window this small may show one value of a rare feature by chance.
MIN_STUCK_ROWS = 100


class DriftWindow:
    """The last `size` input rows and the PSI of each feature against the training reference
    of each served model version (a champion and a challenger may be trained on other rows;
    the inputs are the same)."""

    def __init__(self, size: int = GATEWAY_DEFAULTS.drift_window_rows) -> None:
        self.rows: deque[tuple[int, ...]] = deque(maxlen=size)
        self.references: dict[str, dict[str, list[int]]] = {}  # version -> training counts
        self.scores: dict[str, dict[str, float]] = {}  # version -> feature -> PSI
        self.pvalues: dict[str, dict[str, float]] = {}  # version -> feature -> chi-squared p
        self.tested_rows = 0  # rows the p-values were computed from
        self.stuck: set[str] = set()  # features with one value over the whole window

    def add(self, rows: Iterable[Sequence[int]]) -> None:
        self.rows.extend(tuple(row) for row in rows)

    def keep(self, versions: Iterable[str]) -> None:
        """Forget the references (and scores) of versions no longer served."""
        wanted = set(versions)
        for version in [v for v in self.references if v not in wanted]:
            del self.references[version]
            self.scores.pop(version, None)
            self.pvalues.pop(version, None)

    def compute(self, rows: Sequence[Sequence[int]] | None = None) -> None:
        """Score `rows` (default: the window). Pass a snapshot taken on the event loop when
        computing in another thread, so the ring buffer is never read while it is appended."""
        rows = list(self.rows) if rows is None else rows
        if not rows:
            return
        references = dict(self.references)
        self.scores = {v: psi_by_feature(ref, rows) for v, ref in references.items()}
        self.pvalues = {v: pvalues_by_feature(ref, rows) for v, ref in references.items()}
        self.tested_rows = len(rows)
        self.stuck = (
            {f for i, f in enumerate(FEATURE_NAMES) if len({row[i] for row in rows}) == 1}
            if len(rows) >= MIN_STUCK_ROWS
            else set()
        )

    def score(self, version: str) -> float | None:
        scores = self.scores.get(version)
        return max(scores.values()) if scores else None


class ModelMonitor:
    def __init__(
        self,
        telemetry: Telemetry,
        *,
        drift_window_rows: int = GATEWAY_DEFAULTS.drift_window_rows,
        quality_monitoring: bool = GATEWAY_DEFAULTS.quality_monitoring,
        feedback: FeedbackStore | None = None,
        ids: PredictionIds | None = None,
        answered: AnsweredIds | None = None,
    ) -> None:
        meter = telemetry.meter("lungwatch.gateway")
        self.drift = DriftWindow(drift_window_rows)
        self.feedback = feedback or FeedbackStore()
        if ids is None or answered is None:
            # create_app passes neither yet: the key and the Redis URL come from the same
            # LUNGWATCH_GATEWAY_* variables `python -m api` reads; limits from the store.
            from_env = GatewaySettings(
                feedback_ttl_seconds=self.feedback.ttl_seconds,
                feedback_max_pending=self.feedback.max_pending,
            )
            ids = ids or PredictionIds.from_settings(from_env)
            answered = answered or AnsweredIds.from_settings(from_env, telemetry)
        self.ids = ids
        self.answered = answered
        self.quality = QualityMonitor(telemetry, drift_window_rows)
        self.quality_monitoring = quality_monitoring
        self._outcomes = ins.create(meter, ins.FEEDBACK_OUTCOMES)
        # (class, version label) -> the attribute set: built once, not per row.
        self._class_attributes: dict[tuple[int, str], dict[str, str]] = {}
        self._versions: set[str] = set()  # versions whose feedback series exist
        self._by_class = ins.create(meter, ins.PREDICTIONS_BY_CLASS)
        self._confidence = ins.create(meter, ins.CONFIDENCE)
        self._feedback_results = ins.create(meter, ins.FEEDBACK)
        ins.create(meter, ins.FEATURE_DRIFT, callbacks=[self._observe_feature_drift])
        ins.create(meter, ins.DRIFT_SCORE, callbacks=[self._observe_drift_score])
        ins.create(meter, ins.DRIFTED_FEATURES, callbacks=[self._observe_drifted])
        ins.create(meter, ins.DRIFT_WINDOW, callbacks=[self._observe_window])
        ins.create(meter, ins.ONLINE_ACCURACY, callbacks=[self._observe_accuracy])
        ins.create(meter, ins.ONLINE_RECALL, callbacks=[self._observe_recall])
        ins.create(meter, ins.FEEDBACK_WINDOW, callbacks=[self._observe_feedback_window])
        ins.create(meter, ins.DRIFT_PVALUE, callbacks=[self._observe_pvalues])
        ins.create(meter, ins.FEATURE_DRIFTED, callbacks=[self._observe_feature_drifted])
        ins.create(meter, ins.STUCK_FEATURES, callbacks=[self._observe_stuck])

    # --- request path: O(1) per row ---------------------------------------------------
    def observe(
        self, rows: Sequence[Sequence[int]], answer: ModelAnswer, sticky_key: str | None = None
    ) -> None:
        """rows and the model's answer for them, after it was answered; `sticky_key` (else
        the API key) says whose consecutive rows the repeated-row check compares."""
        self.drift.add(rows)
        version = version_label(answer.model_version)
        for row in answer.rows:
            attributes = self._class_attributes.get((row.prediction, version))
            if attributes is None:
                attributes = {"class": LABELS[row.prediction], "model_version": version}
                self._class_attributes[(row.prediction, version)] = attributes
                self._prepare_version(version)
            self._by_class.add(1, attributes)
            self._confidence.record(row.confidence, attributes)
        if self.quality_monitoring:
            self.quality.observe(
                rows,
                [(row.prediction, row.probabilities) for row in answer.rows],
                answer.model_version,
                sticky_key if sticky_key is not None else CALLER.get(),
            )

    @staticmethod
    def _outcome_attributes(predicted: int, actual: int, version: str) -> dict[str, str]:
        return {
            "predicted": LABELS[predicted],
            "actual": LABELS[actual],
            "correct": "true" if predicted == actual else "false",
            "model_version": version,
        }

    def _prepare_version(self, version: str) -> None:
        """The feedback series of a version this replica has just answered for, at 0: a
        counter's first scrape is invisible to increase(), and the labels come later."""
        if version in self._versions:
            return
        self._versions.add(version)
        for predicted, actual in itertools.product(range(3), repeat=2):
            self._outcomes.add(0, self._outcome_attributes(predicted, actual, version))
        self.quality.prepare_version(version)

    def issue_id(
        self,
        predicted: int,
        model_version: str | None,
        probabilities: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> str:
        """A prediction id any replica with the same key verifies without a lookup, bound to
        the API key of the request being served (CALLER), carrying what was answered."""
        return self.ids.issue(predicted, model_version, CALLER.get(), probabilities)

    async def record_feedback(
        self,
        prediction_id: str,
        true_class: int,
        caller: str | None = None,
        policy: FeedbackPolicy = OPEN_POLICY,
    ) -> FeedbackResult:
        """`caller`: the API key id the request authenticated with (None with keys off)."""
        outcome = await self._feedback(prediction_id, true_class, caller, policy)
        self._feedback_results.add(1, {"result": outcome.result})
        return outcome

    async def _feedback(
        self, prediction_id: str, true_class: int, caller: str | None, policy: FeedbackPolicy
    ) -> FeedbackResult:
        if caller is not None and policy.limit is not None:
            # Before any other work: every call spends a token, forged ids included.
            wait = policy.limit.take(caller)
            if wait:
                return FeedbackResult(
                    "rate_limited",
                    message=f"more than {policy.limit.rate:g} feedback calls a second from "
                    f"this API key; retry in {wait}s",
                    retry_after=wait,
                )
        # With keys off (no caller) anyone answers any prediction, as before keys were bound.
        answers_any = caller is None or caller in policy.any_prediction
        if not answers_any and not policy.own_predictions:
            return FeedbackResult(
                "forbidden", message="only a feedback key may send feedback to this service"
            )
        try:
            verified = self.ids.verify(prediction_id)
        except InvalidPredictionId as refused:
            return FeedbackResult(_REFUSALS[refused.reason], message=str(refused))
        # Checked before the duplicate claim, so a refused caller cannot use up the one
        # feedback the prediction's own client may send.
        if caller is not None and not answers_any and not verified.issued_to(caller):
            return FeedbackResult(
                "forbidden",
                message="made with another API key (or none): only the key that made a "
                "prediction, or a feedback key, may send its feedback",
            )
        if not await self.answered.claim(verified.token, verified.expires_at):
            return FeedbackResult("duplicate", message="this prediction already has feedback")
        correct = self.feedback.record(verified.predicted, true_class)
        self.quality.record_feedback(
            verified.probabilities, verified.predicted, true_class, verified.model_version
        )
        self._outcomes.add(
            1,
            self._outcome_attributes(
                verified.predicted, true_class, version_label(verified.model_version)
            ),
        )
        return FeedbackResult("accepted", correct)

    async def aclose(self) -> None:
        await self.answered.aclose()

    # --- off the request path -----------------------------------------------------------
    async def run(self, fetch_reference: Any, served_versions: Callable[[], list[str]],
                  interval: float) -> None:  # fmt: skip
        """Every `interval`: load the reference of each version answers came from lately
        (the champion's and the challenger's), forget the others', then recompute drift in
        a worker thread."""
        while True:
            try:
                # Registry versions only: a version is also a query parameter and a label.
                versions = [v for v in served_versions() if version_label(v) == v]
                self.drift.keep(versions)
                for version in versions:
                    if version in self.drift.references:
                        continue
                    reference = await fetch_reference(version)  # None while it is away
                    if reference is not None:
                        self.drift.references[version] = reference["counts"]
                        if version == versions[0]:  # the champion's training rows
                            self.quality.set_reference(reference)
                        log.info("drift reference loaded", extra={"model_version": version})
                await asyncio.to_thread(self.drift.compute, list(self.drift.rows))
                await asyncio.to_thread(self.quality.compute, list(self.quality.window))
            except Exception:  # a bug here must not stop monitoring; the next round retries
                log.exception("drift round failed")
            await asyncio.sleep(interval)

    # --- metric callbacks (collection time) -------------------------------------------
    def _observe_feature_drift(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(scores[name], {"feature": name, "model_version": version})
            for version, scores in self.drift.scores.items()
            for name in FEATURE_NAMES
            if name in scores
        ]

    def _observe_drift_score(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(max(scores.values()), {"model_version": version})
            for version, scores in self.drift.scores.items()
            if scores
        ]

    def _observe_drifted(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                sum(s > DRIFT_THRESHOLD for s in scores.values()), {"model_version": version}
            )
            for version, scores in self.drift.scores.items()
        ]

    def _observe_window(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(self.drift.rows))]

    def _observe_pvalues(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(p, {"feature": name, "model_version": version})
            for version, pvalues in self.drift.pvalues.items()
            for name, p in pvalues.items()
        ]

    def _observe_feature_drifted(self, options: CallbackOptions) -> Iterable[Observation]:
        enough = self.drift.tested_rows >= MIN_TEST_ROWS
        return [
            Observation(
                int(enough and p < DRIFT_TEST_ALPHA), {"feature": name, "model_version": version}
            )  # fmt: skip
            for version, pvalues in self.drift.pvalues.items()
            for name, p in pvalues.items()
        ]

    def _observe_stuck(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.drift.tested_rows < MIN_STUCK_ROWS:
            return []
        return [
            Observation(int(name in self.drift.stuck), {"feature": name}) for name in FEATURE_NAMES
        ]

    def _observe_accuracy(self, options: CallbackOptions) -> Iterable[Observation]:
        accuracy = self.feedback.accuracy()
        return [] if accuracy is None else [Observation(accuracy)]

    def _observe_recall(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for index, label in enumerate(LABELS):
            recall = self.feedback.recall(index)
            if recall is not None:
                observations.append(Observation(recall, {"class": label}))
        return observations

    def _observe_feedback_window(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.feedback.size)]
