"""Under load the servers' garbage collector runs rarely (contract/server.py raises the
young-generation threshold), and /metrics shows how often it ran (python_gc_*).

With CPython's default threshold (700) the gateway ran a young collection about every six
requests and, through them, generation-1 and full collections that traverse everything the
requests and the span batch processor keep alive: ~0.9 s of collector time over a 3 s
warm-up and 8 s at 64 connections (docs/performance.md)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from contract.dataset import read_rows
from devtools import procs
from tests.integration.conftest import Spawn, Stack

REQUESTS = 2_000


def collections(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M)
    assert {g for g, _ in found} == {"0", "1", "2"}, text[:500]
    return {g: float(v) for g, v in found}


def test_the_collector_runs_rarely_under_load_and_is_visible_on_metrics(
    spawn: Spawn, stack: Stack, tmp_path: Path
) -> None:
    # Its own gateway, exporting spans as in production (batches of 512 or every 5 s),
    # so the batch processor holds spans between exports.
    gateway = spawn(
        procs.gateway(
            stack.model_server_url,
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=stack.otlp.endpoint,
        )
    )
    collections(stack.model_server_url)  # the model server shows them too
    before = collections(gateway.url)

    rows = [list(row.features) for row in read_rows()[:100]]

    def predict(i: int) -> int:
        body = {"features": rows[i % len(rows)]}
        return client.post(f"{gateway.url}/predict", json=body).status_code

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(predict, range(REQUESTS)))
    assert statuses.count(200) == REQUESTS
    after = collections(gateway.url)

    young, older = after["0"] - before["0"], after["1"] + after["2"] - before["1"] - before["2"]
    print(f"{REQUESTS} predictions: {young:.0f} young collections, {older:.0f} older")
    # The default threshold (700) gave 268 young collections here and 26 older ones; 20,000
    # gave 1 and 0.
    assert young <= 20
    assert older <= 2
