"""deploy/ renders, validates against the Kubernetes schemas, meets the pod policy, agrees with the code.

Only offline kubectl is used (`kubectl kustomize`): with no kubeconfig, a command that
contacts a server would go to localhost:8080, the model server's port.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from devtools import procs
from tests.config import stack_files

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSIONS = ("1.31", "1.32", "1.33", "1.34")
# Kinds that kubernetes-validate has no schema for; test_deploy_crds.py validates them.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
GATEWAY, MODEL_SERVER = "lungwatch-gateway", "lungwatch-model-server"


# --- rendering (shared with the other deploy tests) -------------------------------------
@functools.cache
def _render(overlay: str) -> str:
    kubectl = procs.require_binary("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return done.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    """Every object `kubectl kustomize deploy/overlays/<overlay>` renders (fresh copies)."""
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    template = workload["spec"]["template"]
    if workload["kind"] == "CronJob":
        template = workload["spec"]["jobTemplate"]["spec"]["template"]
    spec: dict[str, Any] = template["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def scaled_object_query(name: str = GATEWAY) -> str:
    scaled = find(rendered("prod"), "ScaledObject", name)
    (trigger,) = scaled["spec"]["triggers"]
    return str(trigger["metadata"]["query"])


# --- render and schema validation --------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_both_workloads(overlay: str) -> None:
    objects = rendered(overlay)
    for name in (GATEWAY, MODEL_SERVER):
        for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceAccount"):
            find(objects, kind, name)
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    assert namespaces == {namespace}, "every object lands in the overlay's namespace"


def test_dev_has_one_replica_and_no_autoscaler_prod_scales() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    assert not [o for o in dev if o["kind"] == "ScaledObject"]
    for name in (GATEWAY, MODEL_SERVER):
        assert find(dev, "Deployment", name)["spec"]["replicas"] == 1
        replicas = find(prod, "Deployment", name)["spec"]["replicas"]
        scaled = find(prod, "ScaledObject", name)["spec"]
        assert replicas >= 2 and replicas == scaled["minReplicaCount"]


def test_prod_images_are_pinned_by_digest() -> None:
    for workload in (o for o in rendered("prod") if o["kind"] in WORKLOAD_KINDS):
        for container in all_containers(pod_spec(workload)):
            assert re.search(r"@sha256:[0-9a-f]{64}$", container["image"]), container["image"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    errors, custom = [], 0
    for obj in rendered(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            custom += 1
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert custom, "the monitoring component renders custom resources"


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The schemas really bite: a misspelt key is an error, not silently dropped."""
    deployment = find(rendered("prod"), "Deployment", GATEWAY)
    pod_spec(deployment)["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.34", strict=True)


# --- policy: restricted Pod Security Standard, resources, probes -------------------------
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def policy_violations(workload: dict[str, Any]) -> list[str]:
    """Why a workload's pods fail the restricted PSS or Lungwatch's own rules ([] if none)."""
    name = workload["metadata"]["name"]
    spec = pod_spec(workload)
    pod_sc = spec.get("securityContext", {})
    out = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"{name}: {flag}")
    if spec.get("automountServiceAccountToken") is not False:
        out.append(f"{name}: the pod mounts a service account token")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"{name}: volume {volume['name']} of type {kinds}")
    for container in all_containers(spec):
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext", {})

        def setting(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        if setting("runAsNonRoot") is not True:
            out.append(f"{where}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            out.append(f"{where}: runAsUser 0")
        seccomp = (setting("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile {seccomp}")
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: privilege escalation allowed")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            out.append(f"{where}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: adds capabilities {capabilities['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{where}: root filesystem is writable")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']}")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    out.append(f"{where}: no {resource} {part[:-1]}")
    for container in spec["containers"]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in container:
                out.append(f"{name}/{container['name']}: no {probe}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_standard_with_resources_and_probes(overlay: str) -> None:
    workloads = [o for o in rendered(overlay) if o["kind"] in WORKLOAD_KINDS]
    assert len(workloads) == 2
    violations = [v for w in workloads for v in policy_violations(w)]
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize(
    ("loosen", "expected"),
    [
        (
            lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False),
            "runAsNonRoot",
        ),
        (
            lambda s: s.update(initContainers=[s["containers"][0] | {"securityContext": {}}]),
            "escalation",
        ),
        (lambda s: s["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda s: s["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda s: s["containers"][0]["securityContext"].pop("capabilities"), "capabilities"),
        (
            lambda s: s["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
            "writable",
        ),
        (lambda s: s["containers"][0]["resources"].pop("limits"), "limit"),
        (lambda s: s["containers"][0].pop("livenessProbe"), "livenessProbe"),
        (lambda s: s.update(hostNetwork=True), "hostNetwork"),
        (lambda s: s.update(automountServiceAccountToken=True), "token"),
        (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    ],
)
def test_policy_catches_a_loosened_pod(loosen: Any, expected: str) -> None:
    deployment = find(rendered("prod"), "Deployment", GATEWAY)
    loosen(pod_spec(deployment))
    assert any(expected in v for v in policy_violations(deployment))


def test_service_accounts_mount_no_token() -> None:
    for name in (GATEWAY, MODEL_SERVER):
        account = find(rendered("prod"), "ServiceAccount", name)
        assert account["automountServiceAccountToken"] is False
        assert pod_spec(find(rendered("prod"), "Deployment", name))["serviceAccountName"] == name


def test_namespace_enforces_the_restricted_standard() -> None:
    (namespace,) = [o for o in rendered("prod") if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_writable_path_is_an_emptydir_mount() -> None:
    """Read-only root: the model server's sqlite store and /tmp are emptyDirs, seeded by
    an init container from the image's baked store at the path MLFLOW_TRACKING_URI names."""
    spec = pod_spec(find(rendered("prod"), "Deployment", MODEL_SERVER))
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    (server,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert set(mounts.values()) <= empty_dirs
    store = env_of(server)["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    store_dir = str(Path(store).parent)
    assert store_dir in mounts, f"{store} is not on a writable mount"
    (init,) = spec["initContainers"]
    assert init["image"] == server["image"], "the store is copied from the same image"
    assert init["command"][-2].startswith(store_dir), init["command"]
    (seed_mount,) = init["volumeMounts"]
    assert seed_mount["name"] == mounts[store_dir]
    assert init["command"][-1].rstrip("/") == seed_mount["mountPath"].rstrip("/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_pdb_selecting_its_pods(overlay: str) -> None:
    objects = rendered(overlay)
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            p
            for p in objects
            if p["kind"] == "PodDisruptionBudget"
            and p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1, deployment["metadata"]["name"]
        # maxUnavailable keeps a single-replica install drainable.
        assert budgets[0]["spec"].get("maxUnavailable") == 1


def test_termination_grace_covers_prestop_and_the_servers_drain() -> None:
    for name, prefix in (
        (GATEWAY, "LUNGWATCH_GATEWAY_"),
        (MODEL_SERVER, "LUNGWATCH_MODEL_SERVER_"),
    ):
        spec = pod_spec(find(rendered("prod"), "Deployment", name))
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain = float(env_of(container)[f"{prefix}GRACEFUL_SHUTDOWN_SECONDS"])
        assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain


def test_network_policy_lets_only_the_gateway_reach_the_model_server() -> None:
    objects = rendered("prod")
    model_labels = pod_spec_labels(objects, MODEL_SERVER)
    gateway_labels = pod_spec_labels(objects, GATEWAY)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} for p in policies), "a default deny"
    applying = [
        p
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= model_labels.items()
        and p["spec"]["podSelector"] != {}
    ]
    (policy,) = applying
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "no rule open to every source"
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                # Prometheus, for /metrics: only from the monitoring namespace.
                ns = peer["namespaceSelector"]["matchLabels"]
                assert ns == {"kubernetes.io/metadata.name": "monitoring"}
                assert peer["podSelector"]["matchLabels"] == {
                    "app.kubernetes.io/name": "prometheus"
                }
            else:
                selector = peer["podSelector"]["matchLabels"]
                assert selector.items() <= gateway_labels.items()
                assert not selector.items() <= model_labels.items()


def pod_spec_labels(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    labels: dict[str, str] = find(objects, "Deployment", name)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


# --- cross-checks with the code -----------------------------------------------------------
def settings_env_names(cls: type, prefix: str) -> set[str]:
    return {prefix + field.upper() for field in cls.model_fields}  # type: ignore[attr-defined]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_variables_are_settings_fields_and_parse(overlay: str) -> None:
    """Every LUNGWATCH_* variable is a field of the process's settings class, and the
    settings class accepts the values (a typo or a bad value fails here, not in a pod)."""
    from contract.settings import GatewaySettings, ModelServerSettings

    objects = rendered(overlay)
    for name, cls, prefix in (
        (GATEWAY, GatewaySettings, "LUNGWATCH_GATEWAY_"),
        (MODEL_SERVER, ModelServerSettings, "LUNGWATCH_MODEL_SERVER_"),
    ):
        (container,) = pod_spec(find(objects, "Deployment", name))["containers"]
        names = {e["name"] for e in container["env"] if e["name"].startswith("LUNGWATCH_")}
        assert names, name
        unknown = names - settings_env_names(cls, prefix)
        assert not unknown, f"{name}: not settings fields: {sorted(unknown)}"
        values = {
            e["name"].removeprefix(prefix).lower(): e["value"]
            for e in container["env"]
            if e["name"] in names and "value" in e
        }
        cls(**values)


def test_ports_agree_between_settings_containers_services_and_urls() -> None:
    objects = rendered("prod")
    gateway = pod_spec(find(objects, "Deployment", GATEWAY))["containers"][0]
    model = pod_spec(find(objects, "Deployment", MODEL_SERVER))["containers"][0]
    gateway_ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    model_ports = {p["name"]: p["containerPort"] for p in model["ports"]}
    genv, menv = env_of(gateway), env_of(model)
    assert gateway_ports["http"] == int(genv["LUNGWATCH_GATEWAY_PORT"]) == 8000
    assert gateway_ports["metrics"] == int(genv["LUNGWATCH_GATEWAY_METRICS_PORT"])
    assert model_ports["http"] == int(menv["LUNGWATCH_MODEL_SERVER_PORT"]) == 8080
    assert genv["LUNGWATCH_GATEWAY_HOST"] == menv["LUNGWATCH_MODEL_SERVER_HOST"] == "0.0.0.0"
    # The model server serves /metrics on its API port only with one worker.
    assert menv["LUNGWATCH_MODEL_SERVER_WORKERS"] == "1"

    service = find(objects, "Service", MODEL_SERVER)
    (service_port,) = service["spec"]["ports"]
    assert service["spec"]["selector"].items() <= pod_spec_labels(objects, MODEL_SERVER).items()
    assert service_port["targetPort"] == "http"
    host, port = stack_files.host_port(genv["LUNGWATCH_GATEWAY_MODEL_SERVER_URL"])
    assert (host, port) == (MODEL_SERVER, service_port["port"])

    gateway_service = find(objects, "Service", GATEWAY)
    assert gateway_service["spec"]["ports"][0]["targetPort"] == "http"
    assert "metrics" not in {p["name"] for p in gateway_service["spec"]["ports"]}


def probes(objects: list[dict[str, Any]], name: str) -> dict[str, tuple[str, int]]:
    """probe name -> (path, container port number)."""
    (container,) = pod_spec(find(objects, "Deployment", name))["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    out = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        port = get["port"] if isinstance(get["port"], int) else ports[get["port"]]
        out[probe] = (get["path"], port)
    return out


def test_probes_use_the_documented_endpoints() -> None:
    """Gateway: /health for liveness (a model-server outage must not restart it), /ready for
    readiness; model server: /ping. The integration test calls them on the real servers."""
    objects = rendered("prod")
    assert probes(objects, GATEWAY) == {
        "startupProbe": ("/health", 8000),
        "readinessProbe": ("/ready", 8000),
        "livenessProbe": ("/health", 8000),
    }
    assert set(probes(objects, MODEL_SERVER).values()) == {("/ping", 8080)}


def test_monitors_scrape_named_ports_and_set_the_rules_job_names() -> None:
    objects = rendered("prod")
    for name in (GATEWAY, MODEL_SERVER):
        monitor = find(objects, "PodMonitor", name)["spec"]
        labels = pod_spec_labels(objects, name)
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        # The job label comes from this pod label: the names the rules and dashboards query.
        assert labels[monitor["jobLabel"]] == name
        (endpoint,) = monitor["podMetricsEndpoints"]
        (container,) = pod_spec(find(objects, "Deployment", name))["containers"]
        assert endpoint["port"] in {p["name"] for p in container["ports"]}
        assert endpoint["path"] == "/metrics"
    jobs_in_rules = {
        job for rule in stack_files.rules() for job in re.findall(r'job="([^"]+)"', rule.expr)
    }
    assert {GATEWAY, MODEL_SERVER} <= jobs_in_rules


def test_autoscaler_query_uses_declared_metrics_and_the_monitors_labels() -> None:
    from telemetry.instruments import ALL_INSTRUMENTS

    declared = {spec.name for spec in ALL_INSTRUMENTS}
    for name in (GATEWAY, MODEL_SERVER):
        query = scaled_object_query(name)
        used = stack_files.metric_names(query)
        assert used - {"up"} <= declared, f"undeclared metrics in {query!r}"
        assert "api_total_requests_total" in used
        (namespace,) = {o["metadata"]["name"] for o in rendered("prod") if o["kind"] == "Namespace"}
        for selector in re.findall(r"\{([^}]*)\}", query):
            assert f'job="{GATEWAY}"' in selector and f'namespace="{namespace}"' in selector


def test_scaled_objects_fall_back_and_stabilise() -> None:
    objects = rendered("prod")
    # One signal, one threshold, one range: the Deployments scale one-to-one, the pairing
    # `make bench` measured (docs/scaling.md).
    gateway, model = (find(objects, "ScaledObject", n)["spec"] for n in (GATEWAY, MODEL_SERVER))
    for key in ("minReplicaCount", "maxReplicaCount", "triggers"):
        assert gateway[key] == model[key], key
    for name in (GATEWAY, MODEL_SERVER):
        spec = find(objects, "ScaledObject", name)["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        find(objects, "Deployment", name)
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        assert spec["fallback"]["failureThreshold"] >= 1
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        # KEDA applies fallback only to AverageValue triggers; the threshold is per replica.
        assert trigger["metricType"] == "AverageValue"
        assert float(trigger["metadata"]["threshold"]) > 0
        # An empty answer is an error (-> fallback), not zero load (-> scale to minimum).
        assert trigger["metadata"]["ignoreNullValues"] == "false"
