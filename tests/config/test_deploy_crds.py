"""deploy/'s custom resources (KEDA ScaledObject, PodMonitor, ServiceMonitor, PrometheusRule) are valid.

Two layers, because no package on PyPI or npm ships the upstream CRD files themselves:
- always (CI included): the validators of the npm packages @kubernetes-models/keda 2.0.0 and
  @kubernetes-models/prometheus-operator 6.0.0 (pinned with integrity hashes in
  deploy/schemas/package-lock.json; `npm ci --prefix deploy/schemas --ignore-scripts`),
  compiled upstream from KEDA's and the Prometheus Operator's Go API types, the same types
  controller-gen turns into the CRDs. They check types, enums, required fields and formats,
  but let unknown fields through;
- when DEPLOY_UPSTREAM_CRDS names a directory of upstream CRD files (for example the
  `crds/` of the kedacore/keda and kube-prometheus-stack charts deploy/platform/charts.yaml
  pins): each object against its CRD's openAPIV3Schema, with unknown fields refused as
  `kubectl apply --validate=strict` refuses them. CEL rules (x-kubernetes-validations) are
  not evaluated.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools import procs
from tests.config.test_deploy_manifests import CUSTOM_KINDS, GATEWAY, OVERLAYS, find, rendered

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "schemas"
INSTALL = "npm ci --prefix deploy/schemas --ignore-scripts --no-audit --no-fund"


def custom_resources(overlay: str) -> list[dict[str, Any]]:
    return [o for o in rendered(overlay) if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]


# --- layer 1: the npm validators ----------------------------------------------------------
def npm_validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = procs.require_binary("node", "nodejs")
    if not (SCHEMAS_DIR / "node_modules" / "@kubernetes-models").is_dir():
        message = f"the CRD validators are not installed: run `{INSTALL}` (make test does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [node, str(SCHEMAS_DIR / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SCHEMAS_DIR,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_pass_the_upstream_validators(overlay: str) -> None:
    objects = custom_resources(overlay)
    kinds = {o["kind"] for o in objects}
    expected = {"PodMonitor", "PrometheusRule"} | ({"ScaledObject"} if overlay == "prod" else set())
    assert kinds == expected
    results = npm_validate(objects)
    assert len(results) == len(objects)
    errors = [f"{r['kind']} {r['name']}: {r['error']}" for r in results if r["error"]]
    assert not errors, "\n".join(errors)


def test_the_upstream_validators_reject_a_wrong_type() -> None:
    scaled = find(rendered("prod"), "ScaledObject", GATEWAY)
    scaled["spec"]["fallback"]["replicas"] = "six"
    monitor = find(rendered("prod"), "PodMonitor", GATEWAY)
    del monitor["spec"]["selector"]
    unknown = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob", "metadata": {"name": "x"}}
    results = npm_validate([scaled, monitor, unknown])
    assert all(r["error"] for r in results), results


# --- layer 2: the upstream CRDs' openAPIV3Schema, strict -----------------------------------
def strict_json_schema(node: Any) -> Any:
    """A CRD structural schema as a JSON Schema that refuses unknown fields."""
    if isinstance(node, list):
        return [strict_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    for key in ("properties", "patternProperties"):
        if key in node:
            out[key] = {k: strict_json_schema(v) for k, v in node[key].items()}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "properties" in node and not preserve:
        out.setdefault("additionalProperties", False)
    return out


def upstream_crds() -> dict[tuple[str, str], dict[str, Any]]:
    directory = os.environ.get("DEPLOY_UPSTREAM_CRDS", "")
    if not directory:
        pytest.skip(
            "DEPLOY_UPSTREAM_CRDS is unset: no registry reachable here ships the CRD files "
            "(see deploy/README.md, 'Validation')"
        )
    schemas = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = strict_json_schema(schema)
    return schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_the_upstream_crds_strictly(overlay: str) -> None:
    schemas = upstream_crds()
    errors = []
    for obj in custom_resources(overlay):
        key = (obj["apiVersion"], obj["kind"])
        assert key in schemas, f"no CRD for {key} in $DEPLOY_UPSTREAM_CRDS"
        validator = jsonschema.Draft4Validator(schemas[key])
        for error in validator.iter_errors(obj):
            path = ".".join(str(p) for p in error.absolute_path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {error.message}")
    assert not errors, "\n".join(errors)


def test_the_strict_crd_schemas_reject_an_unknown_field() -> None:
    schemas = upstream_crds()
    scaled = copy.deepcopy(find(rendered("prod"), "ScaledObject", GATEWAY))
    scaled["spec"]["fallbak"] = scaled["spec"].pop("fallback")
    validator = jsonschema.Draft4Validator(schemas[("keda.sh/v1alpha1", "ScaledObject")])
    assert any("fallbak" in e.message for e in validator.iter_errors(scaled))


def test_the_validators_are_pinned() -> None:
    package = json.loads((SCHEMAS_DIR / "package.json").read_text())
    for name, version in package["dependencies"].items():
        assert version[0].isdigit(), f"{name} is not pinned: {version}"
    lock = json.loads((SCHEMAS_DIR / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if path:
            assert entry.get("integrity", "").startswith("sha512-"), path
