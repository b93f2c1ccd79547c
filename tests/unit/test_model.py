"""Training splits by profile; the model client refuses anything that is not a prediction."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from api.model_client import ModelBadResponse, ModelClient, ModelTimeout, ModelUnavailable
from contract.features import FEATURE_NAMES, FEATURES
from model.dataset import load_dataset
from model.train import build_pipeline, evaluate, split_by_profile
from telemetry import build_telemetry


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
