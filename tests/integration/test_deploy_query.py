"""deploy/'s autoscaler query and probes, run against the real gateway, model server and Prometheus.

The servers start with the LUNGWATCH_* environment of the prod overlay's containers (only
addresses and ports are replaced by free local ones); Prometheus scrapes them the way the
PodMonitors do (same paths, job from the pod's name label, the namespace label the Operator
adds); then the exact PromQL of the rendered KEDA ScaledObject must return a number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx

from contract.features import EXAMPLE_FEATURES
from devtools import procs
from tests.config.test_deploy_manifests import (
    GATEWAY,
    MODEL_SERVER,
    find,
    pod_spec,
    probes,
    rendered,
    scaled_object_query,
)
from tests.integration.conftest import Spawn

# Set by the test for the local processes (addresses, ports, the model's URI in its store).
LOCAL = {"HOST", "PORT", "METRICS_PORT", "MODEL_SERVER_URL", "MODEL_URI"}


def manifest_env(name: str, prefix: str) -> dict[str, str]:
    """The container's LUNGWATCH_* literal values, minus what must point at local processes."""
    (container,) = pod_spec(find(rendered("prod"), "Deployment", name))["containers"]
    return {
        e["name"]: e["value"]
        for e in container["env"]
        if e["name"].startswith(prefix)
        and "value" in e
        and e["name"].removeprefix(prefix) not in LOCAL
    }


def podmonitor_job(name: str, target: str, namespace: str) -> dict[str, Any]:
    monitor = find(rendered("prod"), "PodMonitor", name)["spec"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    return {
        "job_name": name,  # what jobLabel (app.kubernetes.io/name) gives in the cluster
        "metrics_path": endpoint["path"],
        "static_configs": [{"targets": [target], "labels": {"namespace": namespace}}],
    }


def test_the_keda_query_returns_the_request_rate_from_a_real_prometheus(
    trained_model: procs.TrainedModel, spawn: Spawn, integration_dir: Path
) -> None:
    workdir = integration_dir / "deploy-query"
    logs = workdir / "logs"
    model_server = spawn(
        procs.model_server(
            trained_model, logs, extra_env=manifest_env(MODEL_SERVER, "LUNGWATCH_MODEL_SERVER_")
        )
    )
    metrics_port = procs.free_port()
    gateway = spawn(
        procs.gateway(
            model_server.url,
            logs,
            extra_env=manifest_env(GATEWAY, "LUNGWATCH_GATEWAY_")
            | {"LUNGWATCH_GATEWAY_METRICS_PORT": str(metrics_port)},
        )
    )

    # The probes of the manifests answer 200 on the real servers (ports mapped to local ones).
    objects = rendered("prod")
    local_url = {8000: gateway.url, 8080: model_server.url}
    for name in (GATEWAY, MODEL_SERVER):
        for probe, (path, port) in probes(objects, name).items():
            response = httpx.get(f"{local_url[port]}{path}", timeout=5)
            assert response.status_code == 200, f"{name} {probe} {path}: {response.status_code}"

    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    config = procs.prometheus_config({})
    config["scrape_configs"] = [
        podmonitor_job(GATEWAY, f"127.0.0.1:{metrics_port}", namespace),
        podmonitor_job(MODEL_SERVER, model_server.url.removeprefix("http://"), namespace),
    ]
    prometheus = spawn(procs.prometheus(workdir / "prometheus", {}, config=config))

    query = scaled_object_query(GATEWAY)
    assert query == scaled_object_query(MODEL_SERVER), "both Deployments follow the same load"

    # Gateways scraped, no prediction yet: zero load, not "no data" (which would be fallback).
    procs.wait_until(
        lambda: procs.scraped_since(prometheus.url, GATEWAY, 0), 30, "a scrape of the gateway"
    )
    assert procs.prom_value(prometheus.url, query) == 0

    # Real traffic through the real gateway until the query sees it: the counter appears with
    # the first request, and rate() needs two scrapes of it, so traffic keeps flowing meanwhile.
    sent = 0

    def rate_under_traffic() -> float:
        nonlocal sent
        for _ in range(5):
            response = httpx.post(
                f"{gateway.url}/predict", json={"features": list(EXAMPLE_FEATURES)}, timeout=10
            )
            assert response.status_code == 200, response.text
            sent += 1
        return procs.prom_value(prometheus.url, query) or 0.0

    value = procs.wait_until(rate_under_traffic, 60, f"a non-zero answer to {query!r}", 0.2)
    assert math.isfinite(value) and value > 0
    # rate() divides by the 1m window: far below the requests sent, never above them.
    assert value <= sent

    for job in (GATEWAY, MODEL_SERVER):
        assert procs.prom_value(prometheus.url, f'up{{job="{job}",namespace="{namespace}"}}') == 1

    # No gateway scraped in the namespace: the query answers nothing, which KEDA (with
    # ignoreNullValues "false") counts as a failure and answers with its fallback replicas.
    elsewhere = query.replace(f'namespace="{namespace}"', 'namespace="not-lungwatch"')
    assert procs.prom_query(prometheus.url, elsewhere) == []
