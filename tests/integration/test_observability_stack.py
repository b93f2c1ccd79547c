"""The observability stack against real processes: dashboards, rules and alert delivery.

1. Every PromQL query of every Grafana dashboard and every rule runs against a real
   Prometheus that scrapes the real gateway and model server (with the repo's rule files
   loaded) after real traffic, and returns data; a dashboard naming a metric nobody emits
   fails. Alert expressions are meant to be empty while all is well: they only have to run.
   The Rollout dashboard and rules/rollout.yml need a challenger: they run against a stack of
   their own (a model server serving a champion and a challenger, one gateway shadowing, one
   in canary, one in canary whose challenger calls all fail); on the plain stack the rollout
   rules only have to run.
2. Real Prometheus + real Alertmanager (Debian's prometheus-alertmanager) + a webhook
   receiver in this test: stopping the model server delivers ModelServerDown to the webhook
   (rules copied with short `for:`), its symptoms are inhibited, and it resolves after restart.
Scrape and evaluation intervals are 1 s so both finish in well under a minute.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from contract.features import EXAMPLE_FEATURES, FEATURE_NAMES, LABELS
from contract.settings import CHALLENGER_ALIAS, REGISTERED_MODEL_NAME
from contract.wire import CHALLENGER
from devtools import procs
from model.dataset import load_dataset
from tests.config import stack_files
from tests.integration.conftest import Spawn, Stack

RULE_FILES = stack_files.rule_files()
ROLLOUT_RULES = stack_files.RULES_DIR / "rollout.yml"
ROLLOUT_DASHBOARD = "lungwatch-rollout"
CHALLENGER_URI = f"models:/{REGISTERED_MODEL_NAME}@{CHALLENGER_ALIAS}"
# Counted only once a registry alias moves, which the session's stack never does.
ROLLOUT_ONLY_METRICS = {"model_reloads_total"}
# What Grafana would send: $__rate_interval is at least 4 scrape intervals (1 s here).
RATE_INTERVAL = "15s"
INTERVAL = "5s"


def hostport(process: procs.ManagedProcess) -> str:
    return process.url.removeprefix("http://")


def scrape_jobs(
    gateway: procs.ManagedProcess, model_server: procs.ManagedProcess
) -> dict[str, list[str]]:
    # Job names are the OTel service names, as in prometheus.yml and the Collector's job label.
    return {
        "lungwatch-gateway": [hostport(gateway)],
        "lungwatch-model-server": [hostport(model_server)],
    }


@functools.cache
def labelled_rows() -> tuple[tuple[list[int], str], ...]:
    """Dataset rows of all three levels with their true level, so every class gets counted."""
    frame = load_dataset()
    picked = frame.groupby("level").head(10).sort_index()
    return tuple(
        ([int(row[name]) for name in FEATURE_NAMES], LABELS[int(row["level"])])
        for _, row in picked.iterrows()
    )


def send_traffic(
    gateway_url: str, singles: int = 30, batches: int = 5, invalid: int = 5
) -> list[tuple[str, str]]:
    """Valid single and batch predictions, rejected input (reason="invalid_request") and a
    refused request (415).

    Returns (prediction_id, true level) of every predicted row, for POST /feedback.
    """
    rows = itertools.cycle(labelled_rows())
    answered: list[tuple[str, str]] = []
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        for _ in range(singles):
            features, level = next(rows)
            response = client.post("/predict", json={"features": features})
            assert response.status_code == 200, response.text
            answered.append((response.json()["prediction_id"], level))
        for _ in range(batches):
            batch = [next(rows) for _ in range(3)]
            response = client.post(
                "/predict/batch", json={"rows": [{"features": f} for f, _ in batch]}
            )
            assert response.status_code == 200, response.text
            ids = [p["prediction_id"] for p in response.json()["predictions"]]
            answered.extend(zip(ids, [level for _, level in batch], strict=True))
        for _ in range(invalid):
            assert client.post("/predict", json={"features": [1, 2, 3]}).status_code == 422
        # Refused before admission (not traffic): api_refused_requests_total, for its alert.
        refused = client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
        assert refused.status_code == 415
    return answered


def send_feedback(gateway_url: str, answered: list[tuple[str, str]]) -> None:
    """The true level of every other prediction, plus one duplicate and one unknown id, so
    model_feedback_total has all three results and the online-accuracy gauges exist."""
    accepted = answered[::2]
    assert accepted, "no prediction to give feedback on"
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        for prediction_id, level in accepted:
            response = client.post(
                "/feedback", json={"prediction_id": prediction_id, "level": level}
            )
            assert response.status_code == 200, response.text
        prediction_id, level = accepted[0]
        duplicate = {"prediction_id": prediction_id, "level": level}
        assert client.post("/feedback", json=duplicate).status_code == 409
        unknown = {"prediction_id": "0" * 32, "level": "Low"}
        assert client.post("/feedback", json=unknown).status_code == 404


def wait_for_gateway_metric(gateway_url: str, name: str, timeout: float = 20.0) -> None:
    """Block until the gateway's own /metrics carries a sample of `name`."""
    sample = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ", re.M)
    procs.wait_until(
        lambda: sample.search(httpx.get(f"{gateway_url}/metrics", timeout=5).text),
        timeout,
        f"{name} on the gateway's /metrics",
        interval=0.5,
    )


def wait_for_fresh_scrape(prom_url: str, timeout: float = 20.0) -> None:
    since = time.time()
    procs.wait_until(
        lambda: all(
            procs.scraped_since(prom_url, job, since)
            for job in ("lungwatch-gateway", "lungwatch-model-server")
        ),
        timeout,
        "a scrape of the gateway and the model server by the test's Prometheus",
    )


def only_alerts_series(expr: str) -> bool:
    """ALERTS has series only while some alert is pending or firing."""
    return stack_files.metric_names(expr) == {"ALERTS"}


def dashboard_queries(*, rollout: bool) -> list[stack_files.PanelQuery]:
    """The Prometheus queries of the Rollout dashboard, or of every other dashboard."""
    return [
        q
        for _, dashboard in stack_files.dashboards()
        if (dashboard["uid"] == ROLLOUT_DASHBOARD) == rollout
        for q in stack_files.panel_queries(dashboard)
        if q.datasource_uid == "prometheus"
    ]


def query_failures(
    prom_url: str,
    queries: list[stack_files.PanelQuery],
    rules: list[stack_files.Rule],
    rules_without_data: Collection[Path] = (),
    metrics_without_data: Collection[str] = (),
) -> list[str]:
    """Each dashboard query and rule run on a real Prometheus: what names a metric nobody
    emits, fails to run, or (a dashboard query, a recording rule) returns nothing. Rules of
    `rules_without_data`, and queries reading `metrics_without_data`, only have to run."""
    names = httpx.get(f"{prom_url}/api/v1/label/__name__/values", timeout=10).json()
    emitted = set(names["data"])
    failures: list[str] = []
    for query in queries:
        expr = stack_files.substitute_grafana_variables(query.expr, RATE_INTERVAL, INTERVAL)
        names = stack_files.metric_names(expr)
        must_have_data = not names & set(metrics_without_data)
        unknown = names - emitted - {"ALERTS"}
        if unknown and must_have_data:
            failures.append(f"{query}: names metrics nobody emits: {sorted(unknown)}")
            continue
        try:
            result = procs.prom_query(prom_url, expr)
        except AssertionError as exc:
            failures.append(f"{query}: {exc}")
            continue
        if must_have_data and not result and not only_alerts_series(expr):
            failures.append(f"{query}: no data for {expr}")

    for rule in rules:
        must_have_data = not rule.is_alert and rule.file not in rules_without_data
        unknown = stack_files.metric_names(rule.expr) - emitted - {"ALERTS"}
        if unknown and must_have_data:
            failures.append(f"rule {rule.name}: names metrics nobody emits: {sorted(unknown)}")
            continue
        try:
            result = procs.prom_query(prom_url, rule.expr)
        except AssertionError as exc:
            failures.append(f"rule {rule.name}: {exc}")
            continue
        if must_have_data and not result:
            failures.append(f"recording rule {rule.name}: no data")
    return failures


def test_every_dashboard_and_rule_query_returns_data(
    stack: Stack, spawn: Spawn, tmp_path: Path
) -> None:
    prometheus = spawn(
        procs.prometheus(
            tmp_path / "prometheus",
            scrape_jobs(stack.gateway, stack.model_server),
            rule_files=RULE_FILES,
        )
    )
    # A counter series first seen at N has not increased yet as far as rate() can tell: a
    # first round creates every series, the second is the traffic the rates measure.
    send_feedback(stack.gateway_url, send_traffic(stack.gateway_url, 2, 1, 1))
    for _ in range(2):
        wait_for_fresh_scrape(prometheus.url)
    send_feedback(stack.gateway_url, send_traffic(stack.gateway_url))
    # The drift gauges appear once the gateway has fetched the training reference from the
    # model server and computed the scores (every LUNGWATCH_GATEWAY_DRIFT_INTERVAL_SECONDS, 5 s).
    wait_for_gateway_metric(stack.gateway_url, "model_drift_score")
    for _ in range(3):
        wait_for_fresh_scrape(prometheus.url)
    # Recording rules run every second; wait until the latency SLI has seen the traffic.
    procs.wait_until(
        lambda: procs.prom_query(prometheus.url, "lungwatch:slo_latency_slow:ratio_rate5m >= 0"),
        20,
        "the latency recording rule to evaluate over the traffic",
    )
    queries = dashboard_queries(rollout=False)
    assert len(queries) > 30, "the dashboards lost their queries"
    # No challenger and no reload here: the rollout rules and the reloads panel must run (and
    # the alerts stay quiet), not have data; the rollout test below gives them data.
    failures = query_failures(
        prometheus.url,
        queries,
        stack_files.rules(),
        rules_without_data={ROLLOUT_RULES},
        metrics_without_data=ROLLOUT_ONLY_METRICS,
    )
    assert not failures, "\n".join(failures)


# --- the rollout: a champion and a challenger -------------------------------------------
@dataclass
class RolloutStack:
    model: procs.TrainedModel
    challenger_version: str
    model_server: procs.ManagedProcess
    shadow: procs.ManagedProcess
    canary: procs.ManagedProcess
    broken_canary: procs.ManagedProcess
    prometheus: procs.ManagedProcess

    @property
    def gateways(self) -> tuple[procs.ManagedProcess, ...]:
        return (self.shadow, self.canary, self.broken_canary)


def registry_client(tracking_uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def new_challenger_version(model: procs.TrainedModel) -> str:
    """Register the trained model's files again as a new version under @challenger: the same
    model behind another version number, so every shadowed row must agree."""
    client = registry_client(model.tracking_uri)
    # The trained version's files (its ONNX graph and pipeline: the model server gates a new
    # version on both) by their location: MLflow 3's `models:/m-...` source would be looked
    # up through the process-wide tracking URI, not this client's.
    source = client.get_model_version(REGISTERED_MODEL_NAME, model.version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    version = str(
        client.create_model_version(
            REGISTERED_MODEL_NAME, source=location, run_id=model.run_id
        ).version
    )
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHALLENGER_ALIAS, version)
    return version


def start_rollout_stack(spawn: Spawn, tmp_path: Path) -> RolloutStack:
    logs = tmp_path / "logs"
    logs.mkdir()
    # A registry of this test's own: moving aliases in the session's would reach its server.
    model = procs.train_model(tmp_path / "mlflow", "--repeats", "2")
    challenger = new_challenger_version(model)
    model_server = spawn(
        procs.model_server(
            model,
            logs,
            LUNGWATCH_MODEL_SERVER_CHALLENGER_URI=CHALLENGER_URI,
            # The registry is read at start-up only: nothing here moves an alias.
            LUNGWATCH_MODEL_SERVER_RELOAD_INTERVAL_SECONDS="0",
        )
    )
    # The challenger is fetched and gated after start-up, in a child process, and counted as
    # a reload (model_reloads_total{role="challenger", result="swapped"}).
    served = procs.wait_until(
        lambda: httpx.get(f"{model_server.url}/model", timeout=10).json()[CHALLENGER],
        120,
        "the model server to serve the challenger",
        interval=0.5,
    )
    assert served["version"] == challenger, served

    def gateway(name: str, **env: str) -> procs.ManagedProcess:
        return spawn(procs.gateway(model_server.url, logs, name=name, extra_env=env))

    shadow = gateway(
        "gateway-shadow",
        LUNGWATCH_GATEWAY_ROLLOUT_MODE="shadow",
        LUNGWATCH_GATEWAY_ROLLOUT_PERCENT="100",
    )
    canary = gateway(
        "gateway-canary",
        LUNGWATCH_GATEWAY_ROLLOUT_MODE="canary",
        LUNGWATCH_GATEWAY_ROLLOUT_PERCENT="50",
    )
    # Its challenger calls go to a port nothing listens on: every one falls back.
    broken_canary = gateway(
        "gateway-canary-broken",
        LUNGWATCH_GATEWAY_ROLLOUT_MODE="canary",
        LUNGWATCH_GATEWAY_ROLLOUT_PERCENT="100",
        LUNGWATCH_GATEWAY_CHALLENGER_URL=f"http://127.0.0.1:{procs.free_port()}",
    )
    prometheus = spawn(
        procs.prometheus(
            tmp_path / "prometheus",
            {
                "lungwatch-gateway": [hostport(g) for g in (shadow, canary, broken_canary)],
                "lungwatch-model-server": [hostport(model_server)],
            },
            rule_files=RULE_FILES,
        )
    )
    return RolloutStack(model, challenger, model_server, shadow, canary, broken_canary, prometheus)


def test_every_rollout_dashboard_and_rule_query_returns_data(spawn: Spawn, tmp_path: Path) -> None:
    rollout = start_rollout_stack(spawn, tmp_path)
    prom = rollout.prometheus.url
    # Two rounds, as above: the first creates every series (the shadow's comparisons, the
    # canary's fallbacks), the second is what the rates measure.
    for size in ((2, 1, 1), (30, 5, 5)):
        for gateway in rollout.gateways:
            send_feedback(gateway.url, send_traffic(gateway.url, *size))
        wait_for_gateway_metric(rollout.shadow.url, "model_shadow_comparisons_total")
        wait_for_gateway_metric(rollout.broken_canary.url, "gateway_canary_fallbacks_total")
        for _ in range(2):
            wait_for_fresh_scrape(prom)
    for gateway in rollout.gateways:
        wait_for_gateway_metric(gateway.url, "model_drift_score")
    wait_for_fresh_scrape(prom)
    procs.wait_until(
        lambda: procs.prom_query(prom, "lungwatch:model_shadow_agreement:ratio30m >= 0"),
        20,
        "the shadow agreement recording rule to evaluate over the traffic",
    )

    # The Model dashboard too: its reloads panel, and its drift panels that pick the
    # champion's version out of two.
    queries = dashboard_queries(rollout=True) + [
        q for q in dashboard_queries(rollout=False) if q.dashboard == "Lungwatch / Model"
    ]
    assert len(queries) > 50, "the Rollout and Model dashboards lost their queries"
    rules = [
        r for r in stack_files.rules() if r.file.name in ("rollout.yml", "model-monitoring.yml")
    ]
    failures = query_failures(prom, queries, rules)
    assert not failures, "\n".join(failures)

    # And the figures say what happened: the versions served, the challenger's load, one version
    # pair that agrees on every row (the challenger is the champion's model under another
    # version), both versions answering callers, and fallbacks from the broken canary only.
    champion, challenger = rollout.model.version, rollout.challenger_version
    served = {
        (s["metric"]["role"], s["metric"]["model_version"])
        for s in procs.prom_query(prom, "max by (role, model_version) (model_info)")
    }
    assert served == {("champion", champion), ("challenger", challenger)}
    reloads = procs.prom_query(prom, "sum by (role, result) (model_reloads_total)")
    assert [(s["metric"], s["value"][1]) for s in reloads] == [
        ({"role": "challenger", "result": "swapped"}, "1")
    ]
    agreement = procs.prom_query(prom, "lungwatch:model_shadow_agreement:ratio30m")
    assert [
        (s["metric"]["champion_version"], s["metric"]["challenger_version"], s["value"][1])
        for s in agreement
    ] == [(champion, challenger, "1")]
    shares = procs.prom_query(prom, "sum by (model_version) (model_predictions_total)")
    assert {s["metric"]["model_version"] for s in shares} == {champion, challenger}
    fallbacks = procs.prom_query(prom, "sum by (instance, reason) (gateway_canary_fallbacks_total)")
    assert {s["metric"]["instance"] for s in fallbacks} == {hostport(rollout.broken_canary)}
    assert {s["metric"]["reason"] for s in fallbacks} <= {"model_unavailable", "circuit_open"}


# --- alert delivery ----------------------------------------------------------------------
class WebhookSink:
    """An HTTP server that records every Alertmanager webhook payload it receives."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    sink.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", procs.free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def notifications(self, alertname: str, status: str) -> list[dict[str, Any]]:
        """(receiver, alert) pairs for one alert name in one status."""
        with self._lock:
            payloads = list(self.payloads)
        return [
            {"receiver": p["receiver"], **alert}
            for p in payloads
            for alert in p["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
        ]


def alertmanager_config(tmp_path: Path, webhook_url: str) -> Path:
    """The repo's template rendered by its own script, with test-speed grouping timers."""
    rendered = tmp_path / "alertmanager.yml"
    done = subprocess.run(
        [
            "sh",
            str(stack_files.ALERTMANAGER_DIR / "render-config.sh"),
            str(stack_files.ALERTMANAGER_DIR / "alertmanager.yml.tmpl"),
            str(rendered),
        ],
        env=procs.base_env(ALERTMANAGER_WEBHOOK_URL=webhook_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(rendered.read_text())
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s")
    rendered.write_text(yaml.safe_dump(config))
    return rendered


CAUSES = {"ModelServerDown", "GatewayDown"}


def rules_with_short_for(tmp_path: Path) -> list[Path]:
    """Copies of the rule files with test-speed `for:`: causes 1 s, everything else 8 s.

    The order matters as it does in production (ModelServerDown 1m < ErrorRateSpike 5m):
    inhibition only holds back a symptom while its cause is already active in Alertmanager.
    """
    out = []
    for path in RULE_FILES:
        data = yaml.safe_load(path.read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and "for" in rule:
                    rule["for"] = "1s" if rule["alert"] in CAUSES else "8s"
        copy = tmp_path / "rules" / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        out.append(copy)
    return out


class Traffic:
    """Prediction requests in the background, answered or not, until stopped."""

    def __init__(self, gateway_url: str) -> None:
        self.gateway_url = gateway_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        row = {"features": list(EXAMPLE_FEATURES)}
        with httpx.Client(base_url=self.gateway_url, timeout=5) as client:
            while not self._stop.is_set():
                # While the model server is down the gateway answers 503 or times out.
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/predict", json=row)
                self._stop.wait(0.05)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    with WebhookSink() as sink:
        yield sink


def rfc3339_seconds(stamp: str) -> float:
    """Alertmanager's timestamps carry nanoseconds; datetime takes microseconds at most."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def am_alerts(am_url: str, alertname: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{am_url}/api/v2/alerts", params={"filter": f'alertname="{alertname}"'}, timeout=5
    )
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def test_model_server_down_pages_once_and_resolves(
    trained_model: procs.TrainedModel, spawn: Spawn, webhook: WebhookSink, tmp_path: Path
) -> None:
    binary = procs.require_binary("prometheus-alertmanager", "alertmanager")
    logs = tmp_path / "logs"
    logs.mkdir()
    am_port = procs.free_port()
    alertmanager = spawn(
        procs.ManagedProcess(
            "alertmanager",
            [
                binary,
                f"--config.file={alertmanager_config(tmp_path, webhook.url)}",
                f"--storage.path={tmp_path / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # one instance: no gossip port to bind
            ],
            env=procs.base_env(),
            log_dir=logs,
            ready_url=f"http://127.0.0.1:{am_port}/-/ready",
            url=f"http://127.0.0.1:{am_port}",
        )
    )
    # A model server and gateway of this test's own: the session's stack must keep running.
    model_port = procs.free_port()
    model_server = spawn(procs.model_server(trained_model, logs, port=model_port))
    gateway = spawn(procs.gateway(model_server.url, logs))
    prometheus = spawn(
        procs.prometheus(
            tmp_path / "prometheus",
            scrape_jobs(gateway, model_server),
            rule_files=rules_with_short_for(tmp_path),
            alertmanager_url=alertmanager.url,
        )
    )
    procs.wait_until(
        lambda: procs.prom_query(prometheus.url, 'up{job="lungwatch-model-server"} == 1'),
        20,
        "Prometheus to see the model server up",
    )
    send_traffic(gateway.url, singles=20, batches=0, invalid=0)

    # Before the first scrape absent(up{...}) is true for a moment: only an alert that
    # started after the stop counts, and only that alert's resolution.
    stopped_at = time.time()
    with Traffic(gateway.url):
        model_server.stop()
        firing = procs.wait_until(
            lambda: [
                a
                for a in webhook.notifications("ModelServerDown", "firing")
                if rfc3339_seconds(a["startsAt"]) >= stopped_at - 1
            ],
            60,
            "ModelServerDown to reach the webhook",
        )
        assert firing[0]["receiver"] == "page"
        assert firing[0]["labels"]["severity"] == "page"
        assert firing[0]["annotations"]["runbook_url"].endswith("#modelserverdown")

        # The failing requests make ErrorRateSpike fire in Prometheus; Alertmanager holds it
        # back because ModelServerDown, its cause, is active.
        procs.wait_until(
            lambda: procs.prom_query(
                prometheus.url, 'ALERTS{alertname="ErrorRateSpike", alertstate="firing"}'
            ),
            60,
            "ErrorRateSpike to fire in Prometheus while predictions fail",
        )
        suppressed = procs.wait_until(
            lambda: [
                a
                for a in am_alerts(alertmanager.url, "ErrorRateSpike")
                if a["status"]["inhibitedBy"]
            ],
            30,
            "Alertmanager to inhibit ErrorRateSpike",
        )
        assert suppressed[0]["status"]["state"] == "suppressed"
        time.sleep(3)  # past group_wait (1 s): a non-inhibited alert would have been sent
        assert not webhook.notifications("ErrorRateSpike", "firing")

        # The same port again, so the scrape target comes back.
        spawn(procs.model_server(trained_model, logs, port=model_port))
        resolved = procs.wait_until(
            lambda: [
                a
                for a in webhook.notifications("ModelServerDown", "resolved")
                if a["fingerprint"] == firing[0]["fingerprint"]
                and a["startsAt"] == firing[0]["startsAt"]
            ],
            60,
            "ModelServerDown to resolve after the model server came back",
        )
    assert resolved[0]["receiver"] == "page"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", firing[0]["labels"]["instance"])
