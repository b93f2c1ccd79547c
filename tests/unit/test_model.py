"""Training: the dataset matches its card, splits by profile, evaluation per class."""

from __future__ import annotations

import numpy as np

from contract.features import FEATURE_NAMES, FEATURES
from model.dataset import load_dataset
from model.train import build_pipeline, evaluate, split_by_profile


def test_dataset_matches_the_data_card() -> None:
    frame = load_dataset()
    assert len(frame) == 1000
    assert frame["level"].value_counts().to_dict() == {2: 365, 1: 332, 0: 303}
    assert len(frame[list(FEATURE_NAMES)].drop_duplicates()) == 152
    for feature in FEATURES:
        assert frame[feature.name].between(feature.minimum, feature.maximum).all(), feature


def test_holdout_shares_no_profile_with_training() -> None:
    frame = load_dataset()
    train_idx, test_idx = split_by_profile(frame, 0.25, seed=42)
    as_tuples = lambda idx: set(map(tuple, frame.iloc[idx][list(FEATURE_NAMES)].to_numpy()))  # noqa: E731
    assert as_tuples(train_idx).isdisjoint(as_tuples(test_idx))
    assert len(train_idx) + len(test_idx) == len(frame)
    again = split_by_profile(frame, 0.25, seed=42)
    assert np.array_equal(again[1], test_idx)  # seeded and repeatable


def test_pipeline_scales_inside_and_evaluation_reports_per_class_recall() -> None:
    frame = load_dataset()
    pipeline = build_pipeline("forest", seed=1)
    assert list(pipeline.named_steps) == ["scale", "clf"]
    pipeline.fit(frame[list(FEATURE_NAMES)], frame["level"])
    metrics, matrix = evaluate(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert metrics["test_accuracy"] == 0.75
    assert metrics["test_recall_high"] == 0.5 and metrics["test_recall_low"] == 1.0
    assert matrix == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
