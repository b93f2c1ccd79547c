"""The compiled model served for real: ONNX and scikit-learn give the same answers through the
gateway, the lean path gives what MLflow's /invocations gives, and model_info says which runs."""

from __future__ import annotations

import random
from collections.abc import Iterator

import httpx
import pytest

from contract.dataset import read_rows
from contract.features import FEATURE_NAMES, FEATURES
from contract.wire import ROWS_PATH
from devtools import procs
from tests.integration.conftest import Stack

# Training refuses a compiled model further than this from scikit-learn's probabilities.
TOLERANCE = 1e-5


def dataset_and_random_rows(n_random: int, seed: int = 11) -> list[list[int]]:
    distinct = sorted({row.features for row in read_rows()})
    rng = random.Random(seed)
    made_up = [[rng.randint(f.minimum, f.maximum) for f in FEATURES] for _ in range(n_random)]
    return [list(row) for row in distinct] + made_up


def gateway_answers(url: str, rows: list[list[int]]) -> list[tuple[int, list[float]]]:
    out: list[tuple[int, list[float]]] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for start in range(0, len(rows), 100):  # /predict/batch takes 100 rows a call
            chunk = [{"features": row} for row in rows[start : start + 100]]
            response = client.post("/predict/batch", json={"rows": chunk})
            assert response.status_code == 200, response.text
            out += [
                (p["prediction"], p["prediction_probabilities"])
                for p in response.json()["predictions"]
            ]
    return out


@pytest.fixture(scope="module")
def sklearn_gateway(stack: Stack) -> Iterator[procs.ManagedProcess]:
    """A second pair serving the same registered version with the scikit-learn runtime."""
    logs = stack.workdir / "logs"
    server = procs.model_server(
        stack.model, logs, name="model-server-sklearn", LUNGWATCH_MODEL_SERVER_RUNTIME="sklearn"
    )
    gateway = procs.gateway(server.url, logs, name="gateway-sklearn", ready_path="/ready")
    try:
        server.start()
        yield gateway.start()
    finally:
        gateway.stop()
        server.stop()


def test_the_default_runtime_is_onnx_and_model_info_says_so(stack: Stack) -> None:
    model = httpx.get(f"{stack.model_server_url}/model").json()
    assert model["runtime"] == "onnx"
    metrics = httpx.get(f"{stack.model_server_url}/metrics").text
    assert 'runtime="onnx"' in next(line for line in metrics.splitlines() if "model_info{" in line)


def test_onnx_and_sklearn_answers_agree_through_the_gateway(
    stack: Stack, sklearn_gateway: procs.ManagedProcess
) -> None:
    assert httpx.get(f"{sklearn_gateway.url}/ready").json()["model"]["runtime"] == "sklearn"
    rows = dataset_and_random_rows(2000)
    onnx = gateway_answers(stack.gateway_url, rows)
    sklearn = gateway_answers(sklearn_gateway.url, rows)
    worst = max(
        abs(a - b)
        for (_, pa), (_, pb) in zip(onnx, sklearn, strict=True)
        for a, b in zip(pa, pb, strict=True)
    )
    assert worst <= TOLERANCE, f"largest probability difference {worst:g}"
    assert [c for c, _ in onnx] == [c for c, _ in sklearn]


def test_the_lean_path_answers_what_invocations_answers(stack: Stack) -> None:
    rows = dataset_and_random_rows(200)
    with httpx.Client(base_url=stack.model_server_url, timeout=30) as client:
        lean = client.post(ROWS_PATH, json={"rows": rows})
        mlflow = client.post(
            "/invocations",
            json={"dataframe_split": {"columns": list(FEATURE_NAMES), "data": rows}},
        )
    assert lean.status_code == mlflow.status_code == 200
    assert (
        lean.headers["x-model-version"] == mlflow.headers["x-model-version"] == stack.model.version
    )
    expected = [
        [p["prob_low"], p["prob_medium"], p["prob_high"]] for p in mlflow.json()["predictions"]
    ]
    assert lean.json()["probabilities"] == expected
    assert [p["prediction"] for p in mlflow.json()["predictions"]] == [
        max(range(3), key=row.__getitem__) for row in expected
    ]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "JSON object"),
        (b'{"rows": [[1, 2]]}', "23 integers"),
        (b'{"rows": []}', "non-empty"),
        (b'{"rows": [["a"]]}', "integers"),
        (b'{"other": 1}', "JSON object"),
    ],
)
def test_the_lean_path_refuses_what_is_not_rows_without_echoing_it(
    stack: Stack, body: bytes, words: str
) -> None:
    response = httpx.post(f"{stack.model_server_url}{ROWS_PATH}", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_rows"
    assert words in response.json()["message"]
    assert body.decode() not in response.text
