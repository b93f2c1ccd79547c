"""The dataset and the pipeline's shape; the model client refuses what is not a prediction."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from api.model_client import ModelBadResponse, ModelClient, ModelTimeout, ModelUnavailable
from contract.features import FEATURE_NAMES, FEATURES
from model.dataset import load_dataset
from model.evaluate import ProfileFolds, scores
from model.train import build_pipeline
from telemetry import build_telemetry


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


def client_answering(handler) -> ModelClient:  # type: ignore[no-untyped-def]
    return ModelClient(
        "http://model",
        build_telemetry("unit"),
        timeout=0.5,
        transport=httpx.MockTransport(handler),
    )


ROW = {"prediction": 2, "label": "High", "prob_low": 0.1, "prob_medium": 0.2, "prob_high": 0.7}


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (200, b"not json", ModelBadResponse, "invalid JSON"),
        (200, b'{"predictions": []}', ModelBadResponse, "returned 0 predictions for 1 rows"),
        (200, b'{"predictions": [{"prediction": 2}]}', ModelBadResponse, "lacks class"),
        (200, b'{"predictions": [{"prediction": 5, "prob_low": 0.1, "prob_medium": 0.2, "prob_high": 0.7}]}', ModelBadResponse, "class 5"),
        (200, b'{"predictions": [{"prediction": 2, "prob_low": 0.5, "prob_medium": 0.5, "prob_high": 0.7}]}', ModelBadResponse, "invalid probabilities"),
        (500, b"boom", ModelBadResponse, "HTTP 500"),
        (503, b"", ModelUnavailable, "not ready"),
        (504, b"", ModelTimeout, "gave up"),
    ],
)  # fmt: skip
def test_model_client_refuses_what_is_not_a_prediction(
    status: int, body: bytes, error: type[Exception], words: str
) -> None:
    client = client_answering(lambda request: httpx.Response(status, content=body))
    with pytest.raises(error, match=words):
        asyncio.run(client.predict([[1] * 23]))


def test_model_client_parses_a_good_answer_and_version() -> None:
    client = client_answering(
        lambda request: httpx.Response(
            200, json={"predictions": [ROW]}, headers={"x-model-version": "3"}
        )
    )
    answer = asyncio.run(client.predict([[1] * 23]))
    assert answer.model_version == "3"
    assert answer.rows[0].label == "High" and answer.rows[0].confidence == 0.7


def test_model_client_refused_connection_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ModelUnavailable, match="unreachable"):
        asyncio.run(client_answering(refuse).predict([[1] * 23]))
