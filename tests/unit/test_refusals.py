"""Issue 16, findings 1 and 4: no caller can mint metric series, and refused requests are
counted apart from traffic. In process: the gateway's real app and its real /metrics."""

from __future__ import annotations

import random
import string

from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from api.app import create_app
from contract.features import EXAMPLE_FEATURES
from contract.settings import GatewaySettings
from telemetry import build_telemetry
from tests.unit.conftest import ScriptedModelClient
from tests.unit.test_gateway import counter_values

GOOD = {"features": list(EXAMPLE_FEATURES)}
KEY = {"X-API-Key": "key-one"}


def _series(client: TestClient) -> set[str]:
    """Every sample line's name and labels on /metrics (values and exemplars stripped)."""
    text = client.get("/metrics").text
    return {line.split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def _junk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def test_random_methods_paths_queries_and_headers_mint_no_series() -> None:
    app = create_app(
        GatewaySettings(api_keys="key-one"),
        telemetry=build_telemetry("unit"),
        model_client=ScriptedModelClient(),  # type: ignore[arg-type]
    )
    client = TestClient(app)
    rng = random.Random(16)

    def one_of_each() -> None:
        client.post("/predict", json=GOOD, headers=KEY)
        client.request(f"M{_junk(rng, 8)}", "/health")
        client.request(f"M{_junk(rng, 8)}", "/predict", headers=KEY)
        client.request(f"M{_junk(rng, 8)}", "/predict")
        client.get(f"/{_junk(rng, 12)}")
        client.post("/predict", json=GOOD)  # 401
        client.request(f"M{_junk(rng, 8)}", f"/{_junk(rng, 5)}")

    one_of_each()  # the first request of each kind creates its series; from here on, none
    one_of_each()  # (the same row twice from one key: model_input_quality_total's repeated_row)
    _series(client)  # and so does the first scrape
    before = _series(client)
    for _ in range(60):
        one_of_each()
        headers = {
            "Host": f"{_junk(rng, 10)}.example",
            "User-Agent": _junk(rng, 30),
            "X-Forwarded-For": f"10.{rng.randrange(256)}.{rng.randrange(256)}.1",
            "X-Request-Id": _junk(rng, 16),
            **KEY,
        }
        client.post(f"/predict?{_junk(rng, 6)}={_junk(rng, 6)}", json=GOOD, headers=headers)
        client.get(f"/{_junk(rng, 40)}/{_junk(rng, 3)}?q={_junk(rng, 9)}", headers=headers)
        client.request(_junk(rng, 200).upper(), f"/{_junk(rng, 5)}")
    after = _series(client)
    assert after == before, sorted(after - before)[:10]
    assert any('method="_OTHER"' in s for s in after)


def test_refusals_are_not_traffic_and_name_their_route() -> None:
    reader = InMemoryMetricReader()
    app = create_app(
        GatewaySettings(api_keys="key-one", max_body_bytes=4096),
        telemetry=build_telemetry("unit", metric_readers=[reader]),
        model_client=ScriptedModelClient(),  # type: ignore[arg-type]
    )
    client = TestClient(app)
    for _ in range(3):
        assert client.post("/predict", json=GOOD).status_code == 401
    assert client.post("/predict/batch", json={"rows": [GOOD["features"]]}).status_code == 401
    assert client.post("/feedback", json={}).status_code == 401
    assert client.post("/predict", json=GOOD, headers=KEY).status_code == 200
    assert client.post("/predict", json={"features": [1]}, headers=KEY).status_code == 422
    holder = type("A", (), {"reader": reader})()
    assert counter_values(holder, "api_total_requests_total") == {(("endpoint", "/predict"),): 2}  # type: ignore[arg-type]
    assert counter_values(holder, "api_successful_requests_total") == {  # type: ignore[arg-type]
        (("endpoint", "/predict"),): 1
    }
    assert counter_values(holder, "api_failed_requests_total") == {  # type: ignore[arg-type]
        (("endpoint", "/predict"), ("reason", "invalid_request")): 1
    }
    assert counter_values(holder, "api_refused_requests_total") == {  # type: ignore[arg-type]
        (("endpoint", "/predict"), ("reason", "unauthorized")): 3,
        (("endpoint", "/predict/batch"), ("reason", "unauthorized")): 1,
        (("endpoint", "/feedback"), ("reason", "unauthorized")): 1,
    }
    timing = counter_values(holder, "endpoint_request_time_seconds")  # type: ignore[arg-type]
    # The route they targeted, not "unmatched": the guard answers before routing.
    assert timing[(("endpoint", "/predict"), ("method", "POST"), ("status_code", "401"))] == 3
