"""deploy/ renders, validates against the Kubernetes schemas, meets the pod policy, agrees with the code.

Only offline kubectl is used (`kubectl kustomize`): with no kubeconfig, a command that
contacts a server would go to localhost:8080, the model server's port. Besides the two
overlays, the overlays with the optional rollout components on top are rendered the way an
operator's overlay lists them; and compose.yaml's settings are held to the same checks.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
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


# Optional components an overlay adds for a rollout (deploy/README.md, "Rolling out a model"):
# the shared registry every model-server replica reads, then shadow or canary.
ROLLOUTS = ("shadow", "canary")
ROLLOUT_VARIANTS = tuple(("prod", ("registry", f"rollout/{mode}")) for mode in ROLLOUTS)
# Every rendering the tests check: the overlays alone, and prod with each rollout.
VARIANTS = tuple((overlay, ()) for overlay in OVERLAYS) + ROLLOUT_VARIANTS
VARIANT_IDS = ["+".join((overlay, *components)) for overlay, components in VARIANTS]


# --- rendering (shared with the other deploy tests) -------------------------------------
def _kustomize(directory: Path) -> str:
    kubectl = procs.require_binary("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return done.stdout


@functools.cache
def _render(overlay: str, components: tuple[str, ...] = (), patches: str = "") -> str:
    if not components and not patches:
        return _kustomize(DEPLOY_DIR / "overlays" / overlay)
    # An operator's overlay: the overlay as a resource, the components on top. kustomize
    # takes only relative paths, and a component directory outside the root is allowed.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(DEPLOY_DIR / "overlays" / overlay, root)],
            "components": [
                os.path.relpath(DEPLOY_DIR / "components" / c, root) for c in components
            ],
            "patches": yaml.safe_load(patches) if patches else [],
        }
        (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return _kustomize(root)


def rendered(
    overlay: str, components: tuple[str, ...] = (), patches: str = ""
) -> list[dict[str, Any]]:
    """Every object `kubectl kustomize deploy/overlays/<overlay>` renders (fresh copies), with
    the named deploy/components/ and `patches` (a YAML list) added on top, as an overlay of
    the operator's would."""
    return [doc for doc in yaml.safe_load_all(_render(overlay, components, patches)) if doc]


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


def config_maps_of(
    objects: list[dict[str, Any]], container: dict[str, Any]
) -> list[dict[str, Any]]:
    """The rendered ConfigMaps the container's envFrom names (each must exist)."""
    refs = [
        source["configMapRef"]["name"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    ]
    return [find(objects, "ConfigMap", name) for name in refs]


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment the container starts with, as far as the manifests say: envFrom
    ConfigMaps first, then `env` (which wins, as in the kubelet), ConfigMap keys resolved;
    values from Secrets and the downward API are absent."""
    out: dict[str, str] = {}
    for config_map in config_maps_of(objects, container):
        out.update(config_map.get("data", {}))
    for entry in container.get("env", []):
        if "value" in entry:
            out[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["configMapKeyRef"]
            out[entry["name"]] = find(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return out


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
@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_every_object_validates_strictly(
    overlay: str, components: tuple[str, ...], version: str
) -> None:
    errors, custom = [], 0
    for obj in rendered(overlay, components):
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


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_every_pod_meets_the_restricted_standard_with_resources_and_probes(
    overlay: str, components: tuple[str, ...]
) -> None:
    workloads = [o for o in rendered(overlay, components) if o["kind"] in WORKLOAD_KINDS]
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


def settings_classes() -> dict[str, tuple[Any, str]]:
    """Deployment (and compose service) name -> (settings class, environment prefix)."""
    from contract.settings import GatewaySettings, ModelServerSettings

    return {
        GATEWAY: (GatewaySettings, "LUNGWATCH_GATEWAY_"),
        MODEL_SERVER: (ModelServerSettings, "LUNGWATCH_MODEL_SERVER_"),
    }


def assert_settings_fields_that_parse(where: str, env: dict[str, str], name: str) -> Any:
    """Every LUNGWATCH_* name in `env` is a field of the process's settings class, and the
    class accepts the values; returns the settings built from them."""
    cls, prefix = settings_classes()[name]
    names = {key for key in env if key.startswith("LUNGWATCH_")}
    assert names, where
    unknown = names - settings_env_names(cls, prefix)
    assert not unknown, f"{where}: not settings fields: {sorted(unknown)}"
    return cls(**{key.removeprefix(prefix).lower(): env[key] for key in names})


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_environment_variables_are_settings_fields_and_parse(
    overlay: str, components: tuple[str, ...]
) -> None:
    """Every LUNGWATCH_* variable, listed under env or in an envFrom ConfigMap, is a field of
    the process's settings class, and the class accepts the values (a typo or a bad value
    fails here, not in a pod). Values from Secrets are named here but not parsed."""
    objects = rendered(overlay, components)
    for name in (GATEWAY, MODEL_SERVER):
        (container,) = pod_spec(find(objects, "Deployment", name))["containers"]
        env = container_env(objects, container)
        named = {e["name"] for e in container["env"]} | set(env)
        cls, prefix = settings_classes()[name]
        unknown = {n for n in named if n.startswith("LUNGWATCH_")} - settings_env_names(cls, prefix)
        assert not unknown, f"{name}: not settings fields: {sorted(unknown)}"
        assert_settings_fields_that_parse(f"{overlay} {name}", env, name)


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


# --- rollout: one place per process, explicit defaults, the same under compose -----------
# What an operator changes to roll a model out, per process (issue 23), field names.
ROLLOUT_SETTINGS = {
    GATEWAY: ("rollout_mode", "rollout_percent", "canary_sticky_header"),
    MODEL_SERVER: ("model_uri", "challenger_uri", "reload_interval_seconds"),
}
COMPOSE_SERVICES = {GATEWAY: "gateway", MODEL_SERVER: "model-server"}


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (only,) = pod_spec(find(objects, "Deployment", name))["containers"]
    return only


def rollout_config_map(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (config_map,) = config_maps_of(objects, container(objects, name))
    return config_map


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_rollout_settings_live_in_one_config_map_per_deployment_that_env_does_not_hide(
    overlay: str, components: tuple[str, ...]
) -> None:
    objects = rendered(overlay, components)
    for name, fields in ROLLOUT_SETTINGS.items():
        _, prefix = settings_classes()[name]
        config_map = rollout_config_map(objects, name)
        keys = set(config_map["data"])
        assert {prefix + field.upper() for field in fields} <= keys, name
        # `env` wins over envFrom: a key listed there too would make an edit of the
        # ConfigMap change nothing, silently.
        hidden = keys & {e["name"] for e in container(objects, name)["env"]}
        assert not hidden, f"{name}: set under env, so the ConfigMap's value is ignored: {hidden}"
        # The hash suffix makes an edit a new pod template: the pods restart with the new
        # values (they are read at start), and only the Deployment whose settings changed.
        assert re.fullmatch(rf"{name}-rollout-[a-z0-9]{{10}}", config_map["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_state_the_code_defaults_no_rollout(overlay: str) -> None:
    """The values written out in base/kustomization.yaml are the settings' own defaults."""
    objects = rendered(overlay)
    for name, fields in ROLLOUT_SETTINGS.items():
        cls, prefix = settings_classes()[name]
        data = rollout_config_map(objects, name)["data"]
        settings = cls(**{field: data[prefix + field.upper()] for field in fields})
        for field in fields:
            assert getattr(settings, field) == cls.model_fields[field].default, (name, field)
    assert data["LUNGWATCH_MODEL_SERVER_CHALLENGER_URI"] == ""


@pytest.mark.parametrize("mode", ROLLOUTS)
def test_a_rollout_component_serves_the_challenger_and_sets_the_gateway_mode(mode: str) -> None:
    from contract.settings import CHALLENGER_ALIAS, REGISTERED_MODEL_NAME, SERVING_ALIAS

    objects = rendered("prod", ("registry", f"rollout/{mode}"))
    gateway, model = (
        assert_settings_fields_that_parse(mode, container_env(objects, container(objects, n)), n)
        for n in (GATEWAY, MODEL_SERVER)
    )
    assert gateway.rollout_mode == mode
    assert 0 < gateway.rollout_percent < 100
    assert gateway.challenger_url == "", "the challenger is asked of the same model servers"
    assert model.model_uri == f"models:/{REGISTERED_MODEL_NAME}@{SERVING_ALIAS}"
    assert model.challenger_uri == f"models:/{REGISTERED_MODEL_NAME}@{CHALLENGER_ALIAS}"
    assert model.reload_interval_seconds > 0, "aliases are followed"
    # Switching it on changes both pod templates (new ConfigMap names): both restart with it.
    before = rendered("prod")
    for name in (GATEWAY, MODEL_SERVER):
        new, old = (rollout_config_map(o, name)["metadata"]["name"] for o in (objects, before))
        assert new != old, name


def test_the_registry_component_points_every_replica_at_one_shared_registry() -> None:
    """A rollout on a cluster: every replica follows the same aliases, so none reads a private
    copy of the baked store; the copy's init container and volume are gone, /tmp (where a
    new version is downloaded) stays."""
    objects = rendered("prod", ("registry",))
    spec = pod_spec(find(objects, "Deployment", MODEL_SERVER))
    (server,) = spec["containers"]
    tracking_uri = container_env(objects, server)["MLFLOW_TRACKING_URI"]
    assert re.match(r"https?://[\w.-]+(:\d+)?/?$", tracking_uri), tracking_uri
    assert not spec.get("initContainers"), "the baked store is not copied"
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert "/app/mlruns" not in mounts and "/tmp" in mounts
    assert "mlruns" not in {v["name"] for v in spec["volumes"]}
    secrets = [s["secretRef"] for s in server["envFrom"] if "secretRef" in s]
    assert secrets == [{"name": "lungwatch-mlflow-credentials", "optional": True}]
    assert find(objects, "Deployment", GATEWAY) == find(rendered("prod"), "Deployment", GATEWAY)


def readme_operator_overlay() -> dict[str, Any]:
    """The example overlay deploy/README.md gives under "Rolling out a model"."""
    text = (DEPLOY_DIR / "README.md").read_text()
    found = re.search(r"An operator's overlay for a rollout.*?```yaml\n(.*?)```", text, re.S)
    assert found, "deploy/README.md has no example overlay for a rollout"
    example: dict[str, Any] = yaml.safe_load(found.group(1))
    return example


def test_the_readmes_operator_overlay_renders_and_its_patches_win_over_the_components() -> None:
    """The documented way to change a rollout value: a `patches:` entry on the ConfigMap,
    which kustomize applies after the components (a configMapGenerator merge in the overlay
    would run before them and lose), with the hash recomputed, so the pods restart."""
    example = readme_operator_overlay()
    prod = yaml.safe_load((DEPLOY_DIR / "overlays" / "prod" / "kustomization.yaml").read_text())
    added = tuple(
        c.removeprefix("../../components/")
        for c in example["components"]
        if c not in prod["components"]
    )
    assert added == ("registry", "rollout/canary")
    patches = yaml.safe_dump(example["patches"])
    objects = rendered("prod", added, patches)
    expected = {}
    for entry in example["patches"]:
        patch = yaml.safe_load(entry["patch"])
        assert patch["kind"] == "ConfigMap" and set(patch) == {
            "apiVersion",
            "kind",
            "metadata",
            "data",
        }
        expected[patch["metadata"]["name"]] = patch["data"]
    without = rendered("prod", added)
    for name in (GATEWAY, MODEL_SERVER):
        config_map = rollout_config_map(objects, name)
        wanted = expected[f"{name}-rollout"]
        assert {k: config_map["data"][k] for k in wanted} == wanted, name
        assert (
            config_map["metadata"]["name"] != rollout_config_map(without, name)["metadata"]["name"]
        )
        assert not policy_violations(find(objects, "Deployment", name))
    gateway = container_env(objects, container(objects, GATEWAY))
    assert gateway["LUNGWATCH_GATEWAY_ROLLOUT_MODE"] == "canary", "the component still applies"
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)


SAMPLE_SECRET = "compose-sample-secret-of-32-chars"


def compose_env(name: str) -> dict[str, str]:
    """A compose service's environment as compose passes it once every required variable is
    set: `${X:-default}` gives the default, `${X:?message}` a sample value."""
    environment = stack_files.compose()["services"][COMPOSE_SERVICES[name]]["environment"]
    out = {}
    for key, value in environment.items():
        # str(): an unquoted `off` or `10` in YAML is a bool or an int, which compose refuses.
        assert isinstance(value, str), f"{key}: {value!r} is not a string"
        value = re.sub(r"\$\{\w+:\?[^}]*\}", SAMPLE_SECRET, value)
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
        assert "$" not in value, f"{key}: unhandled interpolation in {value!r}"
        out[key] = value
    return out


@pytest.mark.parametrize("name", [GATEWAY, MODEL_SERVER])
def test_compose_environment_variables_are_settings_fields_and_parse(name: str) -> None:
    assert_settings_fields_that_parse(f"compose {name}", compose_env(name), name)


def test_compose_states_the_rollout_settings_deploy_states() -> None:
    """The same explicit values in both: `make run` (the code's defaults), compose and the
    overlays start the same way, with no challenger and the rollout off."""
    objects = rendered("prod")
    for name, fields in ROLLOUT_SETTINGS.items():
        _, prefix = settings_classes()[name]
        env, data = compose_env(name), rollout_config_map(objects, name)["data"]
        for key in (prefix + field.upper() for field in fields):
            assert key in env, f"compose.yaml does not state {key}"
            assert env[key] == data[key], key


def test_compose_keeps_the_model_registry_on_a_named_volume() -> None:
    """A challenger trained or an alias moved in the model-server container outlives it: the
    store the image's MLFLOW_TRACKING_URI names is on a named volume, which compose seeds from
    the image (a bind mount would hide the baked store instead)."""
    dockerfile = (REPO_ROOT / "docker" / "model.Dockerfile").read_text()
    (uri,) = re.findall(r"^ENV MLFLOW_TRACKING_URI=(\S+)", dockerfile, re.M)
    store_dir = str(Path(uri.removeprefix("sqlite:///")).parent)
    compose = stack_files.compose()
    service = compose["services"]["model-server"]
    assert "MLFLOW_TRACKING_URI" not in service["environment"]
    sources = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert sources.get(store_dir) in compose["volumes"], f"{store_dir} is not on a named volume"
