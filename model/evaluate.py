"""How good and how calibrated a model is on profiles it never saw: grouped folds, repeated CV.

    python -m model.evaluate --write-card   # refresh the figures in docs/model-card.md and its PNG

The 1,000 rows hold only 152 distinct profiles, each copy with the same label, so every split here
groups rows by profile: a profile is wholly on one side of any fit/score or fit/calibrate split.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from contract.dataset import REPO_ROOT
from contract.features import FEATURE_NAMES, LABELS

FOLDS = 5
REPEATS = 10
ECE_BINS = 10
# A bin with fewer held-out predictions (over all repeats) says little about frequency.
MIN_BIN_PREDICTIONS = 50
INTERVAL = (2.5, 97.5)  # percentiles over held-out folds: where 95 % of single-fold figures fall
CLASSES = tuple(range(len(LABELS)))

# (key, label in tables, higher is better)
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("accuracy", "accuracy", True),
    ("macro_f1", "macro F1", True),
    *((f"recall_{label.lower()}", f"recall {label}", True) for label in LABELS),
    ("log_loss", "log loss", False),
    ("brier", "Brier score", False),
    ("ece", "calibration error (ECE)", False),
)

CARD_PATH = REPO_ROOT / "docs" / "model-card.md"
CARD_FIGURE = REPO_ROOT / "docs" / "model-card-reliability.png"
FIGURES_START = "<!-- figures:start (python -m model.evaluate --write-card) -->"
FIGURES_END = "<!-- figures:end -->"


def profile_groups(x: Any) -> np.ndarray:
    """One group id per distinct feature row."""
    _, ids = np.unique(np.asarray(x), axis=0, return_inverse=True)
    return np.asarray(ids).ravel()


class ProfileFolds(StratifiedGroupKFold):
    """Stratified K folds over distinct profiles, the groups read from the rows themselves.

    Inside a pipeline nothing passes `groups` (CalibratedClassifierCV's cross_val_predict does
    not), so the splitter derives them: the calibrator of the registered model is fitted on
    predictions for profiles its forest never saw.
    """

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Any:  # noqa: N803 (sklearn's name)
        return super().split(X, y, profile_groups(X))


def split_by_profile(frame: Any, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One holdout by distinct profile (what training reported before repeated CV)."""
    x = frame[list(FEATURE_NAMES)]
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train_idx, test_idx = next(splitter.split(x, frame["level"], profile_groups(x)))
    return train_idx, test_idx


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the gateway returns the top class's probability as `confidence`, so this
    is how far that number is from the observed accuracy, averaged over equal-width bins."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = abs(confidence[in_bin].mean() - correct[in_bin].mean())
            error += in_bin.mean() * gap
    return float(error)


def scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Every metric of METRICS for one set of held-out rows (numpy: scikit-learn's metric
    functions validate their input for ~10 ms a call, and CV makes hundreds of calls)."""
    predicted = proba.argmax(axis=1)
    result = {"accuracy": float(np.mean(predicted == y))}
    f1s = []
    for cls, label in zip(CLASSES, LABELS, strict=True):
        hits = float(np.sum((predicted == cls) & (y == cls)))
        actual, claimed = float(np.sum(y == cls)), float(np.sum(predicted == cls))
        result[f"recall_{label.lower()}"] = hits / actual if actual else 0.0
        f1s.append(2 * hits / (actual + claimed) if actual + claimed else 0.0)
    result["macro_f1"] = float(np.mean(f1s))
    # Clipped like scikit-learn's log_loss: a hard 0 on the true class costs -log(eps) = 36.
    eps = np.finfo(np.float64).eps
    true_class = np.clip(proba[np.arange(len(y)), y], eps, 1.0)
    result["log_loss"] = float(-np.mean(np.log(true_class)))
    onehot = np.eye(len(CLASSES))[y]
    result["brier"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))  # multiclass, 0..2
    result["ece"] = expected_calibration_error(y, proba)
    return {key: result[key] for key, _, _ in METRICS}


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class Evaluation:
    """Held-out figures of one model over every fold of every repeat."""

    name: str
    folds: list[dict[str, float]]  # one record per held-out fold: repeat, fold, rows, metrics
    held_out: np.ndarray  # (repeats, rows, classes): each row's probabilities when held out
    labels: np.ndarray
    summary: dict[str, Interval] = field(init=False)

    def __post_init__(self) -> None:
        self.summary = {}
        for key, _, _ in METRICS:
            values = np.array([record[key] for record in self.folds])
            low, high = np.percentile(values, INTERVAL)
            self.summary[key] = Interval(float(values.mean()), float(low), float(high))

    def flat_metrics(self, prefix: str) -> dict[str, float]:
        """MLflow metric names: <prefix><metric>_mean / _low / _high."""
        flat = {}
        for key, interval in self.summary.items():
            flat[f"{prefix}{key}_mean"] = interval.mean
            flat[f"{prefix}{key}_low"] = interval.low
            flat[f"{prefix}{key}_high"] = interval.high
        return flat

    def confusion_matrix(self) -> list[list[int]]:
        """Pooled over every held-out prediction of every repeat."""
        from sklearn.metrics import confusion_matrix

        predicted = self.held_out.argmax(axis=2).ravel()
        truth = np.tile(self.labels, self.held_out.shape[0])
        return confusion_matrix(truth, predicted, labels=CLASSES).tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SigmoidCalibrator:
    """Per-class Platt scaling then renormalisation, as CalibratedClassifierCV(method="sigmoid")
    fits and applies it: same smoothed targets, same convex loss, so the same optimum, but
    Newton steps on two numbers instead of scipy's L-BFGS (80 ms a class; CV fits hundreds).
    A unit test holds it to scikit-learn's calibrator."""

    slopes: np.ndarray  # a_k: p_k = 1 / (1 + exp(a_k * f_k + b_k))
    intercepts: np.ndarray

    @classmethod
    def fit(cls, proba: np.ndarray, y: np.ndarray) -> SigmoidCalibrator:
        fitted = [_platt(proba[:, k], y == k) for k in range(proba.shape[1])]
        return cls(np.array([a for a, _ in fitted]), np.array([b for _, b in fitted]))

    def predict_proba(self, proba: np.ndarray) -> np.ndarray:
        calibrated = 1.0 / (1.0 + np.exp(proba * self.slopes + self.intercepts))
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / calibrated.shape[1])  # as scikit-learn does
        return np.divide(calibrated, total, out=uniform, where=total != 0)  # type: ignore[no-any-return]


def _platt(f: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """Platt (2000) with Lin, Lin & Weng's (2007) Newton iteration: minimise the cross-entropy
    between 1/(1+exp(a f + b)) and the prior-smoothed targets."""
    n_pos = float(positive.sum())
    n_neg = len(f) - n_pos
    target = np.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    a, b = 0.0, float(np.log((n_neg + 1.0) / (n_pos + 1.0)))

    def loss(a: float, b: float) -> float:
        z = a * f + b  # loss = sum t*log(1+e^z) + (1-t)*log(1+e^-z), stable form
        return float(np.sum(target * np.logaddexp(0, z) + (1 - target) * np.logaddexp(0, -z)))

    current = loss(a, b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(a * f + b))  # P(positive)
        g = target - p  # d loss / d z
        grad = np.array([np.dot(g, f), g.sum()])
        w = p * (1 - p) + 1e-12
        hessian = np.array([[np.dot(w, f * f), np.dot(w, f)], [np.dot(w, f), w.sum()]])
        step = np.linalg.solve(hessian, grad)
        size = 1.0
        while size >= 1e-10:  # backtracking: Newton may overshoot on separable data
            new = loss(a - size * step[0], b - size * step[1])
            if new < current + 1e-4 * size * float(grad @ -step):
                break
            size /= 2
        a, b = a - size * step[0], b - size * step[1]
        if abs(current - new) < 1e-12 * max(1.0, abs(current)) or np.abs(grad).max() < 1e-9:
            current = new
            break
        current = new
    return a, b


def calibration_input(estimator: Any, x: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """What CalibratedClassifierCV calibrates: the decision function when there is one
    (logistic regression), otherwise the probabilities (forest), given as `proba`."""
    if hasattr(estimator, "decision_function"):
        return np.asarray(estimator.decision_function(x))
    return proba


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    make_estimator: Callable[[], Any],
    name: str,
    *,
    seed: int,
    repeats: int = REPEATS,
    folds: int = FOLDS,
) -> tuple[Evaluation, Evaluation]:
    """Repeated grouped CV of an uncalibrated estimator, and of the same estimator calibrated.

    The calibrated figures cost no extra fits: in each repeat, the calibrator scored on fold k is
    fitted on the held-out probabilities of the other folds only (no fold-k profile), the same
    sigmoid that the registered pipeline fits on its own grouped out-of-fold probabilities.
    """
    held_out = np.zeros((repeats, len(y), len(CLASSES)))
    calibrated = np.zeros_like(held_out)
    scored = np.zeros((len(y), len(CLASSES)))
    records: list[dict[str, float]] = []
    records_calibrated: list[dict[str, float]] = []
    for repeat in range(repeats):
        splitter = ProfileFolds(n_splits=folds, shuffle=True, random_state=seed + repeat)
        splits = list(splitter.split(x, y))
        for train_idx, test_idx in splits:
            estimator = make_estimator().fit(x[train_idx], y[train_idx])
            held_out[repeat, test_idx] = estimator.predict_proba(x[test_idx])
            scored[test_idx] = calibration_input(estimator, x[test_idx], held_out[repeat, test_idx])
        for train_idx, test_idx in splits:
            calibrator = SigmoidCalibrator.fit(scored[train_idx], y[train_idx])
            calibrated[repeat, test_idx] = calibrator.predict_proba(scored[test_idx])
        for fold, (_, test_idx) in enumerate(splits):
            where = {"repeat": repeat, "fold": fold, "rows": len(test_idx)}
            where["profiles"] = len(np.unique(profile_groups(x[test_idx])))
            records.append({**where, **scores(y[test_idx], held_out[repeat, test_idx])})
            records_calibrated.append(
                {**where, **scores(y[test_idx], calibrated[repeat, test_idx])}
            )
    return (
        Evaluation(name, records, held_out, y),
        Evaluation(f"{name} + sigmoid calibration", records_calibrated, calibrated, y),
    )


def summary_markdown(evaluations: list[Evaluation], registered: Evaluation | None = None) -> str:
    """One row per metric, one column per model: mean [95 % interval over held-out folds]."""
    names = [e.name + (" (registered)" if e is registered else "") for e in evaluations]
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(evaluations),
    ]
    for key, label, better_high in METRICS:
        arrow = "↑" if better_high else "↓"
        cells = " | ".join(str(e.summary[key]) for e in evaluations)
        lines.append(f"| {label} {arrow} | {cells} |")
    return "\n".join(lines) + "\n"


def reliability_png(before: Evaluation, after: Evaluation, bins: int = ECE_BINS) -> bytes:
    """Per-class reliability diagram (observed frequency against predicted probability) and, below
    it, how many predictions fell in each bin; pooled over every held-out prediction of every
    repeat, before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        2, len(CLASSES), figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    edges = np.linspace(0, 1, bins + 1)
    curves = [(after, "s-")] if after is before else [(before, "o--"), (after, "s-")]
    for cls in CLASSES:
        top, bottom = axes[0][cls], axes[1][cls]
        for offset, (evaluation, style) in enumerate(curves):
            predicted = evaluation.held_out[:, :, cls].ravel()
            observed = np.tile(evaluation.labels == cls, evaluation.held_out.shape[0])
            which = np.clip(np.digitize(predicted, edges[1:-1]), 0, bins - 1)
            counts = np.bincount(which, minlength=bins)
            drawn = [b for b in range(bins) if counts[b] >= MIN_BIN_PREDICTIONS]
            xs = [predicted[which == b].mean() for b in drawn]
            ys = [observed[which == b].mean() for b in drawn]
            top.plot(xs, ys, style, label=evaluation.name)
            width = 1 / bins / len(curves)
            bottom.bar(edges[:-1] + offset * width, counts, width=width, align="edge")
        top.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        top.set_title(f"class {LABELS[cls]}")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        bottom.set_yscale("log")
        bottom.set_xlabel("predicted probability")
    axes[0][0].set_ylabel("observed frequency")
    axes[1][0].set_ylabel("predictions")
    axes[0][0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def card_with_figures(card: str, figures: str) -> str:
    """The card with the block between the figure markers replaced."""
    pattern = re.compile(re.escape(FIGURES_START) + ".*?" + re.escape(FIGURES_END), re.DOTALL)
    if not pattern.search(card):
        raise ValueError("the model card lacks its figure markers")
    return pattern.sub(lambda _: f"{FIGURES_START}\n{figures}{FIGURES_END}", card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-card", action="store_true", help="rewrite the card's figures")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    from model.train import evaluate_all, figures_markdown

    report = evaluate_all("forest", args.seed)
    figures = figures_markdown(report)
    if not args.write_card:
        print(figures)
        return 0
    CARD_PATH.write_text(card_with_figures(CARD_PATH.read_text(), figures))
    CARD_FIGURE.write_bytes(reliability_png(report.uncalibrated, report.registered))
    print(f"wrote {CARD_PATH} and {CARD_FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
