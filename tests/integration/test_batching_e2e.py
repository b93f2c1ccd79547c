"""Batching and model-server workers against the real processes: same answers, exact totals."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from contract.features import FEATURE_NAMES
from contract.wire import ROWS_PATH
from devtools import procs
from model.dataset import load_dataset
from tests.integration.conftest import Spawn, Stack


def rows(n: int) -> list[list[int]]:
    frame = load_dataset().drop_duplicates(subset=list(FEATURE_NAMES)).head(n)
    return [[int(v) for v in row] for row in frame[list(FEATURE_NAMES)].to_numpy().tolist()]


def answers(url: str, data: list[list[int]]) -> list[tuple[int, list[float]]]:
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda r: client.post(f"{url}/predict", json={"features": r}), data))
    assert all(b.status_code == 200 for b in bodies)
    return [(b.json()["prediction"], b.json()["prediction_probabilities"]) for b in bodies]


def metric(url: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{url}/metrics").text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_batched_and_unbatched_answers_are_identical(stack: Stack, spawn: Spawn) -> None:
    logs = stack.workdir / "logs"
    unbatched = spawn(
        procs.gateway(stack.model_server_url, logs, LUNGWATCH_GATEWAY_BATCHING="false")
    )
    batched = spawn(
        procs.gateway(stack.model_server_url, logs, LUNGWATCH_GATEWAY_BATCH_MAX_CALLS_IN_FLIGHT="1")
    )
    data = rows(80)
    assert answers(batched.url, data) == answers(unbatched.url, data)
    # The batched gateway really shared calls; the other sent one row per call.
    assert metric(batched.url, "gateway_batch_size_rows_count") < len(data)
    assert metric(unbatched.url, "gateway_batch_size_rows_count") == 0
    assert metric(batched.url, "gateway_batch_queue_depth") == 0


def test_two_model_server_workers_report_exact_totals_to_prometheus(
    stack: Stack, spawn: Spawn
) -> None:
    logs = stack.workdir / "logs"
    metrics_port = procs.free_port()
    second_port = metrics_port + 1
    model_server = spawn(
        procs.model_server(
            stack.model,
            logs,
            LUNGWATCH_MODEL_SERVER_WORKERS="2",
            LUNGWATCH_MODEL_SERVER_METRICS_PORT=str(metrics_port),
        )
    )
    gateway = spawn(procs.gateway(model_server.url, logs, LUNGWATCH_GATEWAY_BATCHING="false"))
    worker_targets = [f"127.0.0.1:{metrics_port}", f"127.0.0.1:{second_port}"]
    prometheus = spawn(
        procs.prometheus(stack.workdir / "prom-workers", {"lungwatch-model-server": worker_targets})
    )
    data = rows(60)
    answers(gateway.url, data)
    since = time.time()
    procs.wait_until(
        lambda: procs.scraped_since(prometheus.url, "lungwatch-model-server", since),
        20,
        "a scrape of both model-server workers",
    )
    per_worker = procs.prom_query(prometheus.url, "model_predicted_rows_total")
    assert len(per_worker) == 2  # both workers served and are scraped separately
    total = procs.prom_value(prometheus.url, "sum(model_predicted_rows_total)")
    assert total == len(data)
    calls = procs.prom_value(
        prometheus.url,
        f'sum(http_server_request_duration_seconds_count{{http_route="{ROWS_PATH}"}})',
    )
    assert calls == len(data)

    # SIGTERM to the parent stops both workers cleanly.
    model_server.signal(signal.SIGTERM)
    assert model_server.proc is not None and model_server.proc.wait(20) == 0
