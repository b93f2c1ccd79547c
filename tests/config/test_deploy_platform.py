"""deploy/platform's chart values are pinned and agree with the manifests and the compose stack.

The charts cannot be rendered here (no Helm, no chart repositories), so what is checked is
what the files say: pinned chart versions, the Service names and ports the manifests call,
the datasource uids the dashboards name, and the component versions compose runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.config import stack_files
from tests.config.test_deploy_manifests import (
    GATEWAY,
    MODEL_SERVER,
    env_of,
    find,
    pod_spec,
    rendered,
)

PLATFORM = stack_files.REPO_ROOT / "deploy" / "platform"
CHARTS: list[dict[str, Any]] = yaml.safe_load((PLATFORM / "charts.yaml").read_text())["charts"]


def values(release: str) -> dict[str, Any]:
    (chart,) = [c for c in CHARTS if c["release"] == release]
    data: dict[str, Any] = yaml.safe_load((PLATFORM / chart["values"]).read_text())
    return data


def namespace(release: str) -> str:
    (chart,) = [c for c in CHARTS if c["release"] == release]
    return str(chart["namespace"])


def test_every_platform_chart_is_pinned_and_has_values() -> None:
    releases = {c["release"] for c in CHARTS}
    assert releases == {"kube-prometheus-stack", "keda", "otel-collector", "tempo", "grafana"}
    for chart in CHARTS:
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart["version"])), chart
        assert chart["repo"].startswith("https://"), chart
        assert isinstance(values(chart["release"]), dict)
    files = {p.name for p in PLATFORM.glob("*-values.yaml")}
    assert files == {c["values"] for c in CHARTS}, "a values file no chart uses, or the reverse"


def prometheus_service() -> str:
    name = values("kube-prometheus-stack")["fullnameOverride"]
    return f"{name}-prometheus.{namespace('kube-prometheus-stack')}.svc:9090"


def test_keda_queries_the_prometheus_the_stack_installs() -> None:
    for name in (GATEWAY, MODEL_SERVER):
        (trigger,) = find(rendered("prod"), "ScaledObject", name)["spec"]["triggers"]
        assert trigger["metadata"]["serverAddress"] == f"http://{prometheus_service()}"


def test_prometheus_selects_lungwatchs_monitors_and_rules_and_takes_remote_write() -> None:
    spec = values("kube-prometheus-stack")["prometheus"]["prometheusSpec"]
    for key in ("podMonitor", "serviceMonitor", "rule"):
        assert spec[f"{key}SelectorNilUsesHelmValues"] is False
    assert (
        spec["scrapeInterval"]
        == stack_files.load_yaml(stack_files.PROMETHEUS_FILE)["global"]["scrape_interval"]
    )
    for monitor in (o for o in rendered("prod") if o["kind"] == "PodMonitor"):
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["interval"] == spec["scrapeInterval"]
    assert spec["enableRemoteWriteReceiver"] is True
    assert "exemplar-storage" in spec["enableFeatures"]
    assert values("kube-prometheus-stack")["grafana"]["enabled"] is False


def test_apps_export_traces_to_the_collector_the_chart_installs() -> None:
    collector = values("otel-collector")
    assert collector["mode"] == "deployment"
    host = f"{collector['fullnameOverride']}.{namespace('otel-collector')}.svc"
    for name in (GATEWAY, MODEL_SERVER):
        (container,) = pod_spec(find(rendered("prod"), "Deployment", name))["containers"]
        env = env_of(container)
        assert stack_files.host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == (host, 4318)
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        # Metrics are pulled by the PodMonitors; pushing them too would store them twice.
        assert env["OTEL_METRICS_EXPORTER"] == "none"
        assert env["OTEL_SERVICE_NAME"] == name
    assert collector["ports"].get("otlp-http", {}).get("enabled", True) is not False


def test_collector_pipeline_sends_traces_to_tempo_with_composes_processors() -> None:
    config = values("otel-collector")["config"]
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"] is None and pipelines["logs"] is None
    traces = pipelines["traces"]
    compose_traces = stack_files.collector()["service"]["pipelines"]["traces"]
    assert traces == compose_traces
    (exporter,) = traces["exporters"]
    tempo_host = f"{values('tempo')['fullnameOverride']}.{namespace('tempo')}.svc"
    assert stack_files.host_port(config["exporters"][exporter]["endpoint"]) == (tempo_host, 4317)
    assert config["processors"]["batch"] == stack_files.collector()["processors"]["batch"]
    # memory_limiter comes from the chart's defaults, sized from resources.limits.memory.
    assert values("otel-collector")["resources"]["limits"]["memory"]


def compose_image_tag(image_prefix: str) -> str:
    for service in stack_files.compose()["services"].values():
        image = service.get("image", "")
        if image.startswith(image_prefix + ":"):
            return str(image.split(":", 1)[1])
    raise AssertionError(f"compose.yaml runs no {image_prefix}")


def collector_version_in_compose() -> str:
    dockerfile = (stack_files.REPO_ROOT / "docker" / "otel-collector.Dockerfile").read_text()
    match = re.search(r"^FROM otel/opentelemetry-collector-contrib:(\S+)", dockerfile, re.M)
    assert match
    return match.group(1)


def test_components_run_the_versions_compose_runs() -> None:
    """One version of each backend, so the configs checked for compose hold in the cluster."""
    collector = values("otel-collector")["image"]
    assert collector["repository"] == "otel/opentelemetry-collector-contrib"
    assert collector["tag"] == collector_version_in_compose()
    assert values("tempo")["tempo"]["tag"] == compose_image_tag("grafana/tempo")
    assert values("grafana")["image"]["tag"] == compose_image_tag("grafana/grafana")


def test_tempo_remote_writes_span_metrics_to_prometheus() -> None:
    generator = values("tempo")["tempo"]["metricsGenerator"]
    assert generator["enabled"] is True
    assert generator["remoteWriteUrl"] == f"http://{prometheus_service()}/api/v1/write"


def test_grafana_datasources_have_the_uids_the_dashboards_name() -> None:
    datasources = values("grafana")["datasources"]["datasources.yaml"]["datasources"]
    by_uid = {d["uid"]: d for d in datasources}
    used = set().union(*(stack_files.datasource_uids_used(d) for _, d in stack_files.dashboards()))
    assert used <= set(by_uid), f"dashboards name uids Grafana lacks: {used - set(by_uid)}"
    assert by_uid["prometheus"]["url"] == f"http://{prometheus_service()}"
    tempo_host = f"{values('tempo')['fullnameOverride']}.{namespace('tempo')}.svc"
    assert stack_files.host_port(by_uid["tempo"]["url"]) == (tempo_host, 3200)
    compose_uids = {
        d["uid"] for d in stack_files.load_yaml(stack_files.DATASOURCES_FILE)["datasources"]
    }
    assert set(by_uid) == compose_uids


def test_network_policies_admit_prometheus_from_the_stacks_namespace() -> None:
    for policy in (o for o in rendered("prod") if o["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    assert ns == namespace("kube-prometheus-stack")


@pytest.mark.parametrize("path", sorted(PLATFORM.glob("*.yaml")), ids=lambda p: p.name)
def test_platform_files_open_with_a_header_naming_the_chart_version(path: Path) -> None:
    header = path.read_text().split("\n", 1)[0]
    assert header.startswith("#"), f"{path.name} has no header comment"
    if path.name != "charts.yaml":
        (chart,) = [c for c in CHARTS if c["values"] == path.name]
        assert str(chart["version"]) in path.read_text().split("\n\n", 1)[0], path.name
