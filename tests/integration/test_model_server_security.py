"""The model server trusts only the gateway (issue 16, finding 6): one real model server with a
shared secret, and the real gateway holding the same secret in front of it.

Refused without the secret: every route but /ping, /health and /metrics (so /docs, /version,
/reference, /openapi.json too). Refused with it: rows out of range, non-integers, 1e308. No
error body quotes what the caller sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES
from contract.wire import ROWS_PATH
from devtools import procs

ROW = list(EXAMPLE_FEATURES)
# A value no message of ours contains: if it comes back, the body was echoed.
MARKER = 987_654_321


@dataclass
class Guarded:
    model_server: procs.ManagedProcess
    gateway: procs.ManagedProcess
    secret: str

    def client(self, secret: str | None = None) -> httpx.Client:
        """A client of the model server bearing `secret` (the right one unless told)."""
        headers = {"authorization": f"Bearer {secret or self.secret}"}
        return httpx.Client(base_url=self.model_server.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def guarded(trained_model: procs.TrainedModel, integration_dir: Path) -> Iterator[Guarded]:
    secret = secrets.token_urlsafe(32)
    logs = integration_dir / "logs"
    model_server = procs.model_server(
        trained_model,
        logs,
        name="model-server-guarded",
        LUNGWATCH_MODEL_SERVER_SHARED_SECRET=secret,
    ).start()
    try:
        gateway = procs.gateway(
            model_server.url,
            logs,
            name="gateway-guarded",
            ready_path="/ready",
            LUNGWATCH_GATEWAY_MODEL_SERVER_SECRET=secret,
        ).start()
    except BaseException:
        model_server.stop()
        raise
    yield Guarded(model_server, gateway, secret)
    gateway.stop()
    model_server.stop()


def invocations_body(*rows: Sequence[object]) -> dict[str, object]:
    return {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": list(rows)}}


GUARDED = [
    ("POST", "/invocations"),
    ("POST", ROWS_PATH),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/version"),
    ("GET", "/reference"),
    ("GET", "/model"),
    ("GET", "/no-such-route"),
]


def test_every_route_but_the_probes_and_metrics_wants_the_secret(guarded: Guarded) -> None:
    bodies = {"/invocations": invocations_body(ROW), ROWS_PATH: {"rows": [ROW]}}
    with httpx.Client(base_url=guarded.model_server.url, timeout=10) as anyone:
        for method, path in GUARDED:
            for headers in (
                {},
                {"authorization": f"Bearer {guarded.secret[:-1]}x"},  # one character off
                {"authorization": guarded.secret},  # no scheme
                {"x-api-key": guarded.secret},
            ):
                response = anyone.request(method, path, json=bodies.get(path), headers=headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["error"] == "unauthorized"
                assert "x-model-version" not in response.headers  # nothing about the model
        for path in ("/ping", "/health", "/metrics"):
            assert anyone.get(path).status_code == 200, path

    with guarded.client() as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/version").status_code == 200
        assert client.get("/reference").json()  # the training distribution, to the gateway
        assert client.get("/openapi.json").status_code == 200
        assert client.post(ROWS_PATH, json={"rows": [ROW]}).status_code == 200
        assert client.post("/invocations", json=invocations_body(ROW)).status_code == 200


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (987_654, "age must be within 1..120"),
        (0, "age must be within 1..120"),
        (1e308, "age must be within 1..120"),  # was cast to -9223372036854775808 and scored
        (33.5, "age must be a whole number"),
        (2**64, "age must be within 1..120"),
    ],
)
def test_rows_out_of_range_or_not_whole_are_refused_naming_the_feature(
    guarded: Guarded, value: object, named: str
) -> None:
    row = [value, *ROW[1:]]
    with guarded.client() as client:
        lean: dict[str, object] = {"rows": [ROW, row]}
        for path, body in ((ROWS_PATH, lean), ("/invocations", invocations_body(ROW, row))):
            response = client.post(path, json=body)
            assert response.status_code == 400, (path, value, response.text)
            assert named in response.json()["message"]
            assert "(row 1)" in response.json()["message"]
        # Another feature's own range, not age's.
        high = [*ROW[:-1], 8]
        response = client.post(ROWS_PATH, json={"rows": [high]})
        assert response.status_code == 400
        assert "snoring must be within 1..7" in response.json()["message"]


def test_no_error_body_quotes_the_input(guarded: Guarded) -> None:
    marker = str(MARKER)
    as_text = [f"x{marker}", *ROW[1:]]
    records = [dict(zip(FEATURE_NAMES, as_text, strict=True))]
    csv = ",".join(FEATURE_NAMES) + "\n" + ",".join(str(v) for v in as_text) + "\n"
    attempts = [
        ("/invocations", {"json": invocations_body(as_text)}),
        ("/invocations", {"json": {"dataframe_records": records}}),
        ("/invocations", {"json": {"instances": records}}),
        ("/invocations", {"json": {"inputs": {"age": [MARKER]}}}),
        ("/invocations", {"json": {"no_such_format": MARKER}}),
        ("/invocations", {"content": csv, "headers": {"content-type": "text/csv"}}),
        (
            "/invocations",
            {"content": f"[{marker}", "headers": {"content-type": "application/json"}},
        ),
        ("/invocations", {"content": marker, "headers": {"content-type": f"text/{marker}"}}),
        ("/invocations", {"content": marker, "headers": {"content-type": f"text/csv; x={marker}"}}),
        (ROWS_PATH, {"json": {"rows": [as_text]}}),
        (ROWS_PATH, {"json": {"rows": [[MARKER, *ROW[1:]]]}}),
        (ROWS_PATH, {"content": f"[{marker}"}),
    ]
    with guarded.client() as client:
        for path, request in attempts:
            response = client.post(path, **request)  # type: ignore[arg-type]
            assert 400 <= response.status_code < 500, (path, request, response.text)
            assert marker not in response.text, (path, request, response.text)
            assert set(response.json()) == {"error", "message"}


def test_the_gateway_with_the_secret_predicts_end_to_end(guarded: Guarded) -> None:
    response = httpx.post(f"{guarded.gateway.url}/predict", json={"features": ROW}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "Low" and body["model_version"] != "unknown"
    ready = httpx.get(f"{guarded.gateway.url}/ready", timeout=10).json()
    assert ready["model"]["version"]  # /model (guarded) answered the gateway
