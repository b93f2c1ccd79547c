"""The Model dashboard and the model-quality alerts agree with the code they watch (issue 6).

Every model-monitoring instrument is on the Model dashboard; the drift and accuracy
thresholds drawn on it are the alerts' thresholds; the drift threshold is the one the gateway
counts drifted features with (model.drift.DRIFT_THRESHOLD); each alert's minimum window fits
in the gateway's default window, or the alert could never fire.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from contract.drift import DRIFT_THRESHOLD
from contract.settings import GatewaySettings
from telemetry import instruments as ins
from tests.config import stack_files

MODEL_DASHBOARD = next(d for _, d in stack_files.dashboards() if d["uid"] == "lungwatch-model")
ALERTS = {rule.name: rule for rule in stack_files.rules() if rule.is_alert}
SETTINGS_DEFAULTS = {name: field.default for name, field in GatewaySettings.model_fields.items()}


def _dashboard_metric_names() -> set[str]:
    names: set[str] = set()
    for query in stack_files.panel_queries(MODEL_DASHBOARD):
        names |= stack_files.metric_names(query.expr)
    return names


def _exported_names(spec: ins.InstrumentSpec) -> set[str]:
    if spec.kind is ins.Kind.HISTOGRAM:
        return {f"{spec.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {spec.name}


@pytest.mark.parametrize(
    "spec",
    [*ins.MONITORING_INSTRUMENTS, *ins.MODEL_SERVER_INSTRUMENTS, ins.PREDICTION_RESULT,
     ins.PREDICTION_CONFIDENCE],
    ids=lambda s: s.name,
)  # fmt: skip
def test_model_dashboard_shows_every_model_monitoring_metric(spec: ins.InstrumentSpec) -> None:
    assert _exported_names(spec) & _dashboard_metric_names(), f"{spec.name} is on no panel"


def _threshold(alert: str, metric: str, operator: str) -> float:
    expr = ALERTS[alert].expr
    # `(metric) > 0.25` inside an aggregation, or a recording rule's name standing alone.
    found = rf"(?<![\w:]){re.escape(metric)}\)?\s*{re.escape(operator)}\s*([0-9.]+)"
    match = re.search(found, expr)
    assert match, f"{alert}: no `{metric} {operator} <number>` in {expr}"
    return float(match.group(1))


def test_drift_alert_uses_the_gateways_drift_threshold() -> None:
    assert _threshold("ModelInputDrift", "model_drift_score", ">") == DRIFT_THRESHOLD


def test_alert_windows_fit_in_the_gateways_default_windows() -> None:
    drift_rows = _threshold("ModelInputDrift", "model_drift_window_rows", ">=")
    feedback_rows = _threshold(
        "ModelOnlineAccuracyLow", "lungwatch:model_feedback_outcomes:increase1h", ">="
    )
    assert 0 < drift_rows <= SETTINGS_DEFAULTS["drift_window_rows"]
    # Feedback rows of the whole fleet over an hour (counters): no replica's window bounds it.
    assert feedback_rows > 0


def _panels_querying(metric: str) -> list[dict[str, Any]]:
    return [
        panel
        for panel in stack_files.iter_panels(MODEL_DASHBOARD)
        if any(metric in (t.get("expr") or "") for t in panel.get("targets", []))
    ]


def _threshold_steps(panel: dict[str, Any]) -> set[float]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return {s["value"] for s in steps if s["value"] is not None}


@pytest.mark.parametrize(
    ("metric", "alert", "alert_metric", "operator"),
    [
        ("model_drift_score", "ModelInputDrift", "model_drift_score", ">"),
        (
            "model_online_accuracy",
            "ModelOnlineAccuracyLow",
            "lungwatch:model_online_accuracy:ratio1h",
            "<",
        ),
    ],
)
def test_dashboard_draws_the_alert_threshold(
    metric: str, alert: str, alert_metric: str, operator: str
) -> None:
    threshold = _threshold(alert, alert_metric, operator)
    panels = _panels_querying(metric)
    assert panels, f"no panel shows {metric}"
    for panel in panels:
        assert threshold in _threshold_steps(panel), f"{panel['title']}: no step at {threshold}"
    lines = [p for p in panels if p["type"] == "timeseries"]
    assert lines, f"no time series of {metric}"
    for panel in lines:
        style = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
        assert style != "off", f"{panel['title']} does not draw its threshold"


def test_confidence_distribution_overall_and_by_class() -> None:
    quantiles = [
        q.expr
        for q in stack_files.panel_queries(MODEL_DASHBOARD)
        if "histogram_quantile" in q.expr and "model_prediction_confidence_bucket" in q.expr
    ]
    assert any("sum by (le)" in expr for expr in quantiles), "no overall confidence quantile"
    assert any("sum by (le, class)" in expr for expr in quantiles), "no quantile by class"
