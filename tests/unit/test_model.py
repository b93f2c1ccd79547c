"""The dataset and the pipeline's shape (the model client's tests: test_model_client.py)."""

from __future__ import annotations

import numpy as np

from contract.features import FEATURE_NAMES, FEATURES
from model.dataset import load_dataset
from model.evaluate import ProfileFolds, scores
from model.train import build_pipeline


def test_dataset_matches_the_data_card() -> None:
    frame = load_dataset()
    assert len(frame) == 1000
    assert frame["level"].value_counts().to_dict() == {2: 365, 1: 332, 0: 303}
    assert len(frame[list(FEATURE_NAMES)].drop_duplicates()) == 152
    for feature in FEATURES:
        assert frame[feature.name].between(feature.minimum, feature.maximum).all(), feature


def test_forest_pipeline_is_calibrated_over_profile_folds_and_logreg_scales_inside() -> None:
    from sklearn.calibration import CalibratedClassifierCV

    forest = build_pipeline("forest", seed=1)
    assert list(forest.named_steps) == ["clf"]  # no scaler: trees split on raw integer levels
    calibrator = forest.named_steps["clf"]
    assert isinstance(calibrator, CalibratedClassifierCV)
    assert calibrator.method == "sigmoid" and calibrator.ensemble is False
    assert isinstance(calibrator.cv, ProfileFolds)
    assert list(build_pipeline("logreg", seed=1).named_steps) == ["scale", "clf"]


def test_scores_count_per_class_recall_and_punish_a_hard_zero() -> None:
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.0, 1.0, 0.0]])
    metrics = scores(y, proba)
    assert metrics["accuracy"] == 0.75
    assert metrics["recall_high"] == 0.5 and metrics["recall_low"] == 1.0
    # the last row gave its true class a probability of exactly 0
    assert metrics["log_loss"] > 8
