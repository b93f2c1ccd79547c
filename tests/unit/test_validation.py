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


# --- issue 16: one input policy, decided before pydantic sees a value ------------------------
FEATURES_JSON = ", ".join(str(v) for v in GOOD)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"features": [' + FEATURES_JSON.encode() + b'], "features": [' + FEATURES_JSON.encode() + b"]}", "features"),
        (b'{"patient": {"age": 61, "age": 62, ' + b", ".join(b'"%s": 1' % n.encode() for n in FEATURE_NAMES[1:]) + b"}}", "age"),
    ],
)  # fmt: skip
def test_duplicate_keys_are_refused_naming_the_key(gateway: App, raw: bytes, key: str) -> None:
    response = gateway.client.post(
        "/predict", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert f"duplicate key `{key}`" in response.json()["message"]
    assert "61" not in response.text and "62" not in response.text  # no value echoed
    assert gateway.model.calls == []


def test_feedback_with_duplicate_keys_is_refused_too(gateway: App) -> None:
    raw = b'{"prediction_id": "' + b"0" * 64 + b'", "true_class": 0, "true_class": 2}'
    response = gateway.client.post(
        "/feedback", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert "duplicate key `true_class`" in response.json()["message"]


@pytest.mark.parametrize(
    ("raw", "status", "words", "not_words"),
    [
        (b'{"features": [' + b"7" * 5001 + b"]}", 400, "too large (more than 4300 digits)", "nested"),
        (b"[" * 4000, 400, "nested too deeply", "too large"),
        (b'{"features": [\xff]}', 400, "not UTF-8", "nested"),
        (b'{"patient": {' + b", ".join(b'"k%d": 0' % i for i in range(65)) + b"}}", 422, "65 keys", "k64"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_bodies_the_parser_refuses_are_named_for_what_they_are(
    gateway: App, path: str, raw: bytes, status: int, words: str, not_words: str
) -> None:
    response = gateway.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == "invalid_request" and words in payload["message"], payload
    assert not_words not in response.text and "7777" not in response.text
    assert gateway.model.calls == []


def test_feedback_parse_failures_are_named_too(gateway: App) -> None:
    # /feedback keeps FastAPI's parsing; its 400 is still named after its cause.
    for raw, words in ((b'{"level": ' + b"7" * 5001 + b"}", "too large"), (b"[" * 4000, "nested")):
        response = gateway.client.post(
            "/feedback", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400 and words in response.json()["message"]


def test_the_row_count_is_checked_before_any_row_is_validated(gateway: App) -> None:
    response = gateway.client.post("/predict/batch", json={"rows": [{}] * 6})  # limit 5
    assert response.status_code == 422
    payload = response.json()
    assert payload["message"] == "rows: at most 5 rows per call, got 6"
    assert payload["errors"] == [{"field": "rows", "message": "at most 5 rows per call, got 6"}]


def test_a_422_lists_the_first_20_problems_and_counts_the_rest(gateway: App) -> None:
    bad_patient = {name: 99 for name in FEATURE_NAMES}  # 22 of 23 out of range (age is not)
    response = gateway.client.post("/predict/batch", json={"rows": [{"patient": bad_patient}] * 5})
    assert response.status_code == 422
    payload = response.json()
    assert len(payload["errors"]) == 20
    assert payload["errors_omitted"] == 5 * 22 - 20
    assert payload["message"].endswith(f"; and {5 * 22 - 5} more")


@pytest.mark.parametrize(("method", "path"), [("POST", "/predict/"), ("GET", "/health/")])
def test_no_redirect_is_built_from_the_host_header(gateway: App, method: str, path: str) -> None:
    response = gateway.client.request(
        method,
        path,
        json={"features": GOOD},
        headers={"Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert gateway.model.calls == []
