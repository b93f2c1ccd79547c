"""Three gateway + model-server pairs behind a real haproxy (round robin, health check on
/ready), one real redis-server and a real Prometheus scraping every gateway (issue 13).

- feedback for a prediction made by one replica is accepted through the balancer, whichever
  replica gets it; the same feedback sent again to other replicas is refused;
- loadgen's prediction counts equal the sums across replicas in Prometheus exactly, and the
  fleet's online accuracy and recall, summed from the outcome counters, equal loadgen's;
- Redis stopped: predictions and feedback keep answering, the degraded mode shows in metrics;
- one replica SIGTERMed under steady traffic: not one failed request at the client.

The tests share one fleet and run in file order (the last one takes a replica away).
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.features import EXAMPLE_FEATURES, LABELS
from devtools import procs

GATEWAY_JOB = 'job="lungwatch-gateway"'
KEY = "replica-test-signing-key-0123456789"


@dataclass
class Fleet:
    gateways: list[procs.ManagedProcess]
    model_servers: list[procs.ManagedProcess]
    redis: procs.ManagedProcess
    balancer: procs.ManagedProcess
    prometheus: procs.ManagedProcess
    workdir: Path

    @property
    def url(self) -> str:
        return self.balancer.url

    def query(self, expr: str) -> dict[str, float]:
        """An instant query, as {instance or "": value}."""
        result = procs.prom_query(self.prometheus.url, expr)
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in result}

    def settled(self, expr: str) -> float:
        """The value of a sum once every gateway has been scraped since now, twice alike
        (a gateway counts a request a moment after answering it)."""
        previous = None
        for _ in range(30):
            since = time.time()
            procs.wait_until(
                lambda since=since: procs.scraped_since(  # type: ignore[misc]
                    self.prometheus.url, "lungwatch-gateway", since
                ),
                15,
                "a scrape of every gateway",
            )
            value = sum(self.query(expr).values())
            if value == previous:
                return value
            previous = value
        raise AssertionError(f"{expr} kept changing")


def haproxy_config(port: int, servers: list[str]) -> str:
    # The balancer a deployment would use: round robin; /ready as the health check (a
    # gateway whose model server is away is taken out); a request that finds its server gone
    # (refused, or a kept-alive connection closed under it by a draining gateway) is sent to
    # another server once, so a replica leaving fails no client request.
    lines = "\n".join(f"    server g{i} {address}" for i, address in enumerate(servers))
    return (
        textwrap.dedent(
            """\
        defaults
            mode http
            timeout connect 1s
            timeout client 30s
            timeout server 30s
            retries 2
            option redispatch 1
            retry-on conn-failure empty-response
            # A busy replica (two cores, three pairs) may answer /ready slowly: only a
            # refused or failed check counts, and twice in a row, or all are marked down.
            timeout check 5s
        frontend lungwatch
            bind 127.0.0.1:{port}
            default_backend gateways
        backend gateways
            balance roundrobin
            option httpchk GET /ready
            http-check expect status 200
            default-server check inter 500ms fall 2 rise 1
        """
        ).format(port=port)
        + lines
        + "\n"
    )


def redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


@pytest.fixture(scope="module")
def fleet(trained_model: procs.TrainedModel, integration_dir: Path) -> Iterator[Fleet]:
    haproxy = procs.require_binary("haproxy")
    redis_server = procs.require_binary("redis-server")
    workdir = integration_dir / "replicas"
    workdir.mkdir(exist_ok=True)
    started: list[procs.ManagedProcess] = []
    try:
        redis_port = procs.free_port()
        redis = procs.ManagedProcess(
            "redis",
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            env=procs.base_env(),
            log_dir=workdir,
        ).start()  # fmt: skip
        started.append(redis)
        procs.wait_until(lambda: redis_ping(redis_port), 15, "redis-server answering PING")

        # Start all three model servers, then wait: their start-ups overlap.
        model_servers = [
            procs.model_server(trained_model, workdir, name=f"model-server-{i}", ready_timeout=180)
            for i in range(3)
        ]
        for server in model_servers:
            ready_url, server.ready_url = server.ready_url, None
            started.append(server.start())
            server.ready_url = ready_url
        for server in model_servers:
            server.wait_ready()
        gateways = [
            procs.gateway(
                server.url,
                workdir,
                name=f"gateway-{i}",
                ready_path="/ready",
                LUNGWATCH_GATEWAY_PREDICTION_ID_KEY=KEY,
                LUNGWATCH_GATEWAY_FEEDBACK_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            )
            for i, server in enumerate(model_servers)
        ]
        for gateway in gateways:
            gateway.ready_timeout = 120  # three pairs starting at once on two cores
            started.append(gateway.start())
        hostports = [g.url.removeprefix("http://") for g in gateways]

        port = procs.free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(port, hostports))
        balancer = procs.ManagedProcess(
            "haproxy",
            [haproxy, "-db", "-f", str(config)],
            env=procs.base_env(),
            log_dir=workdir,
            ready_url=f"http://127.0.0.1:{port}/ready",
            url=f"http://127.0.0.1:{port}",
        ).start()
        started.append(balancer)
        prometheus = procs.prometheus(
            workdir / "prometheus", {"lungwatch-gateway": hostports}
        ).start()
        started.append(prometheus)
        yield Fleet(gateways, model_servers, redis, balancer, prometheus, workdir)
    finally:
        for process in reversed(started):
            process.stop()


def predict(url: str, rows: int = 1) -> list[dict[str, Any]]:
    body = {"rows": [{"features": list(EXAMPLE_FEATURES)}] * rows}
    response = httpx.post(f"{url}/predict/batch", json=body, timeout=10)
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def feedback(url: str, prediction_id: str, level: str = "Low") -> httpx.Response:
    body = {"prediction_id": prediction_id, "level": level}
    return httpx.post(f"{url}/feedback", json=body, timeout=10)


def accepted_by_instance(fleet: Fleet) -> dict[str, float]:
    return fleet.query('sum by (instance) (model_feedback_total{result="accepted"})')


def loadgen(fleet: Fleet, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [procs.PYTHON, "-m", "loadgen", "--quiet", "--url", fleet.url, "--json",
         str(fleet.workdir / f"{name}.json"), *args],
        env=procs.base_env(),
        cwd=procs.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def finished(fleet: Fleet, name: str, run: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    output, _ = run.communicate(timeout=180)
    assert "Traceback" not in output, output
    report: dict[str, Any] = json.loads((fleet.workdir / f"{name}.json").read_text())
    return report, output


def test_feedback_is_accepted_by_any_replica_and_a_duplicate_refused_by_another(
    fleet: Fleet,
) -> None:
    maker, *others = fleet.gateways
    ids = [p["prediction_id"] for p in predict(maker.url, rows=6)]
    fleet.settled("sum(model_feedback_total)")
    before = accepted_by_instance(fleet)
    # Through the balancer: round robin spreads the six calls over all three replicas.
    for prediction_id in ids:
        answer = feedback(fleet.url, prediction_id)
        assert answer.status_code == 200 and answer.json()["correct"] is True, answer.text
    fleet.settled('sum(model_feedback_total{result="accepted"})')
    after = accepted_by_instance(fleet)
    grew = {i for i, v in after.items() if v > before.get(i, 0)}
    assert len(grew) == 3, f"feedback accepted only by {grew} ({before} -> {after})"
    assert sum(after.values()) - sum(before.values()) == len(ids)

    # The same feedback again, straight to the two replicas that did not predict: refused,
    # whether or not that replica saw the first one.
    for prediction_id in ids[:2]:
        for other in others:
            again = feedback(other.url, prediction_id)
            assert again.status_code == 409 and again.json()["error"] == "duplicate", again.text
    # An id signed with another key, and one not shaped like ours: unknown here.
    forged = ids[0][:-4] + ("0000" if not ids[0].endswith("0000") else "1111")
    assert feedback(fleet.url, forged).status_code == 404
    assert feedback(fleet.url, "abc123").status_code == 404


def outcome_counts(fleet: Fleet) -> dict[tuple[str, str], float]:
    """Accepted feedback summed over the replicas, by (true class, correct), once settled."""
    fleet.settled("sum(model_feedback_outcomes_total)")
    result = procs.prom_query(
        fleet.prometheus.url, "sum by (actual, correct) (model_feedback_outcomes_total)"
    )
    return {(r["metric"]["actual"], r["metric"]["correct"]): float(r["value"][1]) for r in result}


def test_loadgen_counts_and_accuracy_equal_the_sums_across_replicas(fleet: Fleet) -> None:
    before = outcome_counts(fleet)
    run = loadgen(
        fleet,
        "reconcile",
        *("--rate", "20", "--duration", "5s", "--seed", "13", "--feedback"),
        *("--batch-share", "0.2", "--batch-size", "5", "--invalid", "0.05"),
        *("--check-prometheus", fleet.prometheus.url, "--prometheus-selector", GATEWAY_JOB),
    )
    report, output = finished(fleet, "reconcile", run)
    assert run.returncode == 0 and report["unexpected"] == 0, output
    # loadgen's reconciliation sums every replica's series: exact, not approximately.
    prom = report["prometheus"]
    assert prom["ok"], output
    assert prom["observed"]["api_total_requests_total"] == report["sent"], output
    per_replica = fleet.query(f"sum by (instance) (api_total_requests_total{{{GATEWAY_JOB}}})")
    assert len(per_replica) == 3 and all(v > 0 for v in per_replica.values()), per_replica

    answered = report["feedback"]
    assert answered["accepted"] == answered["sent"] > 100, output
    after = outcome_counts(fleet)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    total = sum(delta.values())
    right = sum(v for (_, correct), v in delta.items() if correct == "true")
    assert total == answered["accepted"]
    # The fleet's online accuracy and recall, from counters that add up across replicas (the
    # dashboard's and the alert's query, without the rate window), are loadgen's figures.
    assert right / total == pytest.approx(answered["accuracy_of_accepted"], abs=1e-12)
    for name in LABELS:
        rows = delta.get((name, "true"), 0.0) + delta.get((name, "false"), 0.0)
        expected = answered["recall_of_accepted"][name]
        if expected is None:
            assert rows == 0
        else:
            assert delta.get((name, "true"), 0.0) / rows == pytest.approx(expected, abs=1e-12)


def test_redis_down_degrades_to_per_replica_checks_and_fails_nothing(fleet: Fleet) -> None:
    fleet.redis.stop()
    maker = fleet.gateways[0]
    ids = [p["prediction_id"] for p in predict(fleet.url, rows=3)]
    for prediction_id in ids:
        assert feedback(fleet.url, prediction_id).status_code == 200
    # Still refused where it was first given: the replica's own memory.
    first = ids[0]
    statuses = [feedback(maker.url, first).status_code for _ in range(2)]
    assert statuses[-1] == 409, statuses
    for _ in range(6):  # predictions go on through every replica
        predict(fleet.url)
    procs.wait_until(
        lambda: sum(fleet.query("gateway_feedback_store_fallbacks_total").values()) >= 3,
        15,
        "the fallback counter in Prometheus",
    )
    down = fleet.query("gateway_feedback_store_up")
    assert 0 in down.values(), down


def test_a_replica_sigtermed_under_steady_traffic_fails_no_request(fleet: Fleet) -> None:
    leaving = fleet.gateways[2]
    run = loadgen(fleet, "sigterm", "--rate", "15", "--duration", "8s", "--seed", "21")
    # Take the replica away once traffic reaches it, like a scale-down or a rolling update.
    counted = f'sum(api_total_requests_total{{instance="{leaving.url.removeprefix("http://")}"}})'
    baseline = sum(fleet.query(counted).values())
    procs.wait_until(
        lambda: sum(fleet.query(counted).values()) > baseline + 10,
        30,
        "loadgen traffic reaching the replica to stop",
    )
    leaving.signal(signal.SIGTERM)
    report, output = finished(fleet, "sigterm", run)
    assert leaving.proc is not None and leaving.proc.wait(30) == 0, leaving.log_tail()
    # Not one failed request: every one of the 120 answered 200.
    assert report["sent"] == 120 and report["status_codes"] == {"200": 120}, output
    assert run.returncode == 0 and report["unexpected"] == 0, output
    procs.wait_until(
        lambda: len(fleet.query(f"up{{{GATEWAY_JOB}}} == 1")) == 2,
        15,
        "Prometheus seeing two replicas up",
    )
