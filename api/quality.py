"""Model quality before the labels arrive: expected performance from the calibrated
probabilities (CBPE), online calibration from feedback, and data-quality counters.

CBPE (NannyML's confidence-based performance estimation, multiclass): with calibrated
probabilities, a row predicted j is of true class k with probability P(k), so the expected
number of rows of true class k predicted j is the sum of P(k) over the rows predicted j.
`model_expected_outcomes_total` adds exactly that, per row answered, so the fleet's expected
confusion matrix over any window is PromQL over a counter that sums across replicas, as the
feedback outcomes do; the per-replica gauges read the last rows of the window. None of it is
meaningful once calibration breaks, which the feedback's Brier score and ECE show.

The request path only adds to counters and appends to a bounded window; estimates are
recomputed off the request path (ModelMonitor.run). No value of a row is ever a label: the
data-quality counters name the feature and the kind, never the value.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from api.versions import version_label
from contract.drift import profile_digest
from contract.features import FEATURES, LABELS
from contract.settings import GATEWAY_DEFAULTS
from telemetry import Telemetry
from telemetry import instruments as ins

_MINIMA = [f.minimum for f in FEATURES]
_MAXIMA = [f.maximum for f in FEATURES]
# Keys (sticky keys, API keys) whose last row is remembered for repeated_row: the oldest is
# forgotten first, so memory stays bounded whatever the callers send.
MAX_KEYS = 10_000
# Confidence deciles of the calibration counters, by lower edge: 1/3 is the least a top
# class can have among three.
BINS = ("0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")
ROW = "row"  # the `feature` label of the row-level kinds


def confidence_bin(confidence: float) -> str:
    return BINS[min(max(int(confidence * 10), 3), 9) - 3]


def brier(probabilities: Sequence[float], true_class: int) -> float:
    """Multiclass Brier score: sum over classes of (p_k - [k is the true class])^2, 0..2."""
    return sum((p - (k == true_class)) ** 2 for k, p in enumerate(probabilities))


class QualityMonitor:
    def __init__(
        self, telemetry: Telemetry, window_rows: int = GATEWAY_DEFAULTS.drift_window_rows
    ) -> None:
        meter = telemetry.meter("lungwatch.gateway")
        self._expected = ins.create(meter, ins.EXPECTED_OUTCOMES)
        self._quality = ins.create(meter, ins.INPUT_QUALITY)
        self._brier = ins.create(meter, ins.FEEDBACK_BRIER)
        self._scored = ins.create(meter, ins.FEEDBACK_SCORED)
        self._calibration = ins.create(meter, ins.FEEDBACK_CALIBRATION)
        self._confidence = ins.create(meter, ins.FEEDBACK_CONFIDENCE)
        ins.create(meter, ins.ESTIMATED_ACCURACY, callbacks=[self._observe_accuracy])
        ins.create(meter, ins.ESTIMATED_RECALL, callbacks=[self._observe_recall])
        ins.create(meter, ins.ESTIMATED_PRECISION, callbacks=[self._observe_precision])
        # (version, predicted) -> the three attribute sets of actual 0, 1, 2: built once.
        self._cells: dict[tuple[str, int], list[dict[str, str]]] = {}
        self._kinds = {
            (feature.name, kind): {"feature": feature.name, "kind": kind}
            for feature in FEATURES
            for kind in ("at_range_edge", "outside_training_range")
        }
        self._repeated = {"feature": ROW, "kind": "repeated_row"}
        self._unseen = {"feature": ROW, "kind": "unseen_profile"}
        self.window: deque[tuple[str, int, tuple[float, float, float]]] = deque(maxlen=window_rows)
        # version -> E[actual][predicted] over the window; recomputed by compute()
        self.expected: dict[str, list[list[float]]] = {}
        self.ranges: list[tuple[int, int]] | None = None  # training min/max per feature
        self.profiles: frozenset[str] | None = None  # training profiles' digests
        self._last_rows: OrderedDict[str, str] = OrderedDict()
        # Every series at 0 from the start: increase() cannot see what a counter held at
        # its first scrape, so a series born at 3 loses those 3 from every window.
        self._quality.add(0, self._repeated)

    def prepare_version(self, version: str) -> None:
        """A model version this replica answers for the first time: its feedback counters
        at 0 now, so the first labels, which come much later, are counted by increase()."""
        labels = {"model_version": version}
        self._brier.add(0, labels)
        self._scored.add(0, labels)
        for decile in BINS:
            self._confidence.add(0, {"bin": decile, "model_version": version})
            for correct in ("true", "false"):
                self._calibration.add(
                    0, {"bin": decile, "correct": correct, "model_version": version}
                )

    def set_reference(self, reference: dict[str, Any]) -> None:
        """The served champion's training reference: its ranges and profiles (newer
        references only; an older one leaves those two kinds uncounted)."""
        ranges = reference.get("ranges")
        self.ranges = [tuple(ranges[f.name]) for f in FEATURES] if ranges else None  # type: ignore[misc]
        profiles = reference.get("profiles")
        self.profiles = frozenset(profiles) if profiles else None
        # The kinds this reference lets us count, at 0 (see __init__).
        if self.ranges is not None:
            for attributes in self._kinds.values():
                self._quality.add(0, attributes)
        if self.profiles is not None:
            self._quality.add(0, self._unseen)

    # --- request path -------------------------------------------------------------------
    def observe(
        self,
        rows: Sequence[Sequence[int]],
        answers: Sequence[tuple[int, tuple[float, float, float]]],
        model_version: str | None,
        key: str | None,
    ) -> None:
        """Rows answered with (class, probabilities) by `model_version`; `key` identifies
        whose consecutive rows are compared (None: not compared)."""
        version = version_label(model_version)
        add_expected, add_quality = self._expected.add, self._quality.add
        kinds, ranges, profiles = self._kinds, self.ranges, self.profiles
        for row, (predicted, probabilities) in zip(rows, answers, strict=True):
            cells = self._cells.get((version, predicted)) or self._new_cells(version, predicted)
            for actual in range(3):
                add_expected(probabilities[actual], cells[actual])
            self.window.append((version, predicted, probabilities))
            if ranges is not None:
                for index, value in enumerate(row):
                    low, high = ranges[index]
                    if low <= value <= high:
                        continue
                    name = FEATURES[index].name
                    add_quality(1, kinds[(name, "outside_training_range")])
                    # The accepted range's own end (an age of 1 or 120): what a form's
                    # default or a unit mix-up sends, rarely a patient.
                    if value == _MINIMA[index] or value == _MAXIMA[index]:
                        add_quality(1, kinds[(name, "at_range_edge")])
            digest = profile_digest(row)
            if profiles is not None and digest not in profiles:
                add_quality(1, self._unseen)
            if key is not None:
                if self._last_rows.get(key) == digest:
                    add_quality(1, self._repeated)
                self._last_rows[key] = digest
                self._last_rows.move_to_end(key)
                if len(self._last_rows) > MAX_KEYS:
                    self._last_rows.popitem(last=False)

    def _new_cells(self, version: str, predicted: int) -> list[dict[str, str]]:
        cells = [
            {
                "predicted": LABELS[predicted],
                "actual": LABELS[actual],
                "correct": "true" if actual == predicted else "false",
                "model_version": version,
            }
            for actual in range(3)
        ]
        self._cells[(version, predicted)] = cells
        return cells

    def record_feedback(
        self,
        probabilities: tuple[float, float, float] | None,
        predicted: int,
        true_class: int,
        model_version: str | None,
    ) -> None:
        """An accepted feedback: Brier and calibration counters, when the id carried the
        answered probabilities."""
        if probabilities is None:
            return
        version = version_label(model_version)
        labels = {"model_version": version}
        self._brier.add(brier(probabilities, true_class), labels)
        self._scored.add(1, labels)
        decile = confidence_bin(probabilities[predicted])
        correct = "true" if predicted == true_class else "false"
        self._calibration.add(1, {"bin": decile, "correct": correct, "model_version": version})
        self._confidence.add(probabilities[predicted], {"bin": decile, "model_version": version})

    # --- off the request path -----------------------------------------------------------
    def compute(self, window: Iterable[tuple[str, int, tuple[float, float, float]]]) -> None:
        """The expected confusion matrix per version over a snapshot of the window."""
        expected: dict[str, list[list[float]]] = {}
        for version, predicted, probabilities in window:
            matrix = expected.get(version)
            if matrix is None:
                matrix = expected[version] = [[0.0] * 3 for _ in range(3)]
            for actual in range(3):
                matrix[actual][predicted] += probabilities[actual]
        self.expected = expected

    def _observe_accuracy(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(sum(m[k][k] for k in range(3)) / total, {"model_version": version})
            for version, m in self.expected.items()
            if (total := sum(map(sum, m))) > 0
        ]

    def _observe_recall(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(m[k][k] / sum(m[k]), {"class": LABELS[k], "model_version": version})
            for version, m in self.expected.items()
            for k in range(3)
            if sum(m[k]) > 0
        ]

    def _observe_precision(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for version, m in self.expected.items():
            for j in range(3):
                column = sum(m[k][j] for k in range(3))
                if column > 0:
                    labels = {"class": LABELS[j], "model_version": version}
                    out.append(Observation(m[j][j] / column, labels))
        return out
