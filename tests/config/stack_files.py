"""Readers for the observability stack's files (compose, Collector, Prometheus, Grafana).

Shared by the parse-and-cross-check tests in tests/config and the integration test that runs
every dashboard and rule query against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
COLLECTOR_FILE = REPO_ROOT / "otel-collector.yaml"
PROMETHEUS_FILE = REPO_ROOT / "prometheus.yml"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"
RULE_TESTS_DIR = REPO_ROOT / "prometheus" / "tests"
TEMPO_FILE = REPO_ROOT / "tempo" / "tempo.yaml"
ALERTMANAGER_DIR = REPO_ROOT / "alertmanager"
GRAFANA_DIR = REPO_ROOT / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"
DOCS_FILE = REPO_ROOT / "docs" / "observability.md"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


@dataclass(frozen=True)
class Rule:
    file: Path
    group: str
    body: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.body.get("alert") or self.body.get("record"))

    @property
    def is_alert(self) -> bool:
        return "alert" in self.body

    @property
    def expr(self) -> str:
        return str(self.body["expr"])


def rules() -> list[Rule]:
    found = []
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for body in group["rules"]:
                found.append(Rule(path, group["name"], body))
    return found


def dashboards() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, json.loads(p.read_text())) for p in sorted(DASHBOARDS_DIR.glob("*.json"))]


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    datasource_uid: str
    expr: str
    exemplar: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Each target of each panel; a target without a datasource inherits the panel's."""
    out = []
    for panel in iter_panels(dashboard):
        panel_ds = (panel.get("datasource") or {}).get("uid", "")
        for target in panel.get("targets", []):
            uid = (target.get("datasource") or {}).get("uid", panel_ds)
            expr = target.get("expr") or target.get("query") or ""
            out.append(
                PanelQuery(
                    dashboard=dashboard["title"],
                    panel=panel.get("title", "?"),
                    ref_id=target.get("refId", "?"),
                    datasource_uid=uid,
                    expr=expr,
                    exemplar=bool(target.get("exemplar")),
                )
            )
    return out


def datasource_uids_used(dashboard: dict[str, Any]) -> set[str]:
    """Every datasource uid a dashboard names: panels, targets and template variables."""
    uids = set()
    for panel in iter_panels(dashboard):
        uids.add((panel.get("datasource") or {}).get("uid"))
        for target in panel.get("targets", []):
            uids.add((target.get("datasource") or {}).get("uid"))
    for variable in dashboard.get("templating", {}).get("list", []):
        uids.add((variable.get("datasource") or {}).get("uid"))
    return {u for u in uids if u}


def substitute_grafana_variables(expr: str, rate_interval: str, interval: str) -> str:
    """What Grafana sends for the variables the dashboards use.

    $endpoint is a multi-value variable with allValue ".*", used only inside =~ matchers,
    so ".*" is exactly what "All" sends.
    """
    replacements = {
        "$__rate_interval": rate_interval,
        "$__interval": interval,
        "${endpoint}": ".*",
        "$endpoint": ".*",
    }
    for variable, value in replacements.items():
        expr = expr.replace(variable, value)
    leftover = re.search(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"unsupported Grafana variable {leftover.group(0)} in {expr!r}")
    return expr


_PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (good enough for the repo's queries).

    Strips strings, label matchers, grouping clauses and range/subquery brackets, then keeps
    identifiers that are not function calls, keywords or numbers.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        token = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("("):
            continue  # a function or aggregation
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        # A unit suffix of a number literal such as the "m" in 5m never survives here
        # (brackets are gone), but exponent forms like 1e3 would: skip anything after a digit.
        start = match.start()
        if start > 0 and text[start - 1].isdigit():
            continue
        names.add(token)
    return names


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def collector() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COLLECTOR_FILE)
    return data


def host_port(address: str) -> tuple[str, int]:
    """("host", port) from "host:port", "http://host:port/path" or "0.0.0.0:port"."""
    address = re.sub(r"^[a-z]+://", "", address).split("/", 1)[0]
    host, _, port = address.rpartition(":")
    return host, int(port)
