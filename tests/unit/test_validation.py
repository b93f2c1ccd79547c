"""Every kind of bad input gets a 422 that names the field or position; good input passes."""

from __future__ import annotations

import pytest

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES
from tests.unit.conftest import App

GOOD = list(EXAMPLE_FEATURES)
PATIENT = dict(zip(FEATURE_NAMES, GOOD, strict=True))


def with_value(position: int, value: object) -> list[object]:
    row: list[object] = list(GOOD)
    row[position] = value
    return row


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"features": GOOD[:22]}, "features", "exactly 23 values, got 22"),
        ({"features": [*GOOD, 1]}, "features", "exactly 23 values, got 24"),
        ({"features": with_value(2, "high")}, "features", "features[2] (air_pollution)"),
        ({"features": with_value(3, None)}, "features", "features[3] (alcohol_use) must be a number, got null"),
        ({"features": with_value(4, True)}, "features", "features[4] (dust_allergy) must be a number, got a boolean"),
        ({"features": with_value(0, 3.5)}, "features", "features[0] (age) must be a whole number"),
        ({"features": with_value(1, 3)}, "features", "features[1] (gender) must be between 1 and 2, got 3"),
        ({"features": with_value(22, 0)}, "features", "features[22] (snoring) must be between 1 and 7"),
        ({"features": with_value(0, 10**400)}, "features", "401-digit number"),
        ({"features": with_value(5, [1])}, "features", "got an array"),
        ({"features": "33,1,2"}, "features", "must be an array of 23 numbers"),
        ({"patient": {**PATIENT, "smoking": 12}}, "patient.smoking", "between 1 and 8, got 12"),
        ({"patient": {**PATIENT, "smoking": False}}, "patient.smoking", "got a boolean"),
        ({"patient": {k: v for k, v in PATIENT.items() if k != "wheezing"}}, "patient.wheezing", "Field required"),
        ({"patient": {**PATIENT, "height": 180}}, "patient.height", "unknown field"),
        ({"features": GOOD, "patient": PATIENT}, "body", "got both"),
        ({}, "body", "got neither"),
        ({"features": GOOD, "debug": True}, "debug", "unknown field"),
    ],
)  # fmt: skip
def test_bad_input_is_a_422_naming_the_problem(
    gateway: App, body: dict[str, object], field: str, words: str
) -> None:
    response = gateway.client.post("/predict", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"] == "invalid_request"
    assert any(e["field"] == field and words in e["message"] for e in payload["errors"]), payload
    assert words in payload["message"]
    assert gateway.model.calls == []  # nothing invalid reaches the model server


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"features": [33, 1,', "not valid JSON"),
        (b"", "request body is empty"),
        (b'{"features": [33, 1, NaN' + b", 1" * 20 + b"]}", "features[2] (air_pollution) must be a finite"),
        (b'{"features": [Infinity' + b", 1" * 22 + b"]}", "features[0] (age) must be a finite number"),
    ],
)  # fmt: skip
def test_unparseable_bodies_are_422(gateway: App, raw: bytes, words: str) -> None:
    response = gateway.client.post(
        "/predict", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert words in response.json()["message"]


def test_integral_floats_are_accepted_as_levels(gateway: App) -> None:
    response = gateway.client.post("/predict", json={"features": [float(v) for v in GOOD]})
    assert response.status_code == 200
    assert gateway.model.calls == [[GOOD]]


def test_both_shapes_send_the_same_row(gateway: App) -> None:
    assert gateway.client.post("/predict", json={"features": GOOD}).status_code == 200
    assert gateway.client.post("/predict", json={"patient": PATIENT}).status_code == 200
    assert gateway.model.calls == [[GOOD], [GOOD]]


def test_batch_over_the_limit_is_refused(gateway: App) -> None:
    response = gateway.client.post("/predict/batch", json={"rows": [{"features": GOOD}] * 6})
    assert response.status_code == 422
    assert "at most 5 rows" in response.json()["message"]
    empty = gateway.client.post("/predict/batch", json={"rows": []})
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "rows"


def test_bad_row_in_a_batch_names_its_index(gateway: App) -> None:
    body = {"rows": [{"features": GOOD}, {"features": with_value(1, 9)}]}
    response = gateway.client.post("/predict/batch", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "rows[1].features"
