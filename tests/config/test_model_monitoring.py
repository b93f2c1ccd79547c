"""The Model and Rollout dashboards and the model-quality and rollout alerts agree with the
code they watch (issues 6 and 23).

Every model-monitoring instrument is on the Model dashboard, every rollout instrument and
per-version metric on the Rollout dashboard; the thresholds drawn on them are the alerts'
thresholds; the drift threshold is the one the gateway counts drifted features with
(model.drift.DRIFT_THRESHOLD); each alert's minimum window fits in the gateway's default
window, or the alert could never fire; every rollout recording rule is read by something.
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
ROLLOUT_DASHBOARD = next(d for _, d in stack_files.dashboards() if d["uid"] == "lungwatch-rollout")
ALERTS = {rule.name: rule for rule in stack_files.rules() if rule.is_alert}
SETTINGS_DEFAULTS = {name: field.default for name, field in GatewaySettings.model_fields.items()}


def _dashboard_metric_names(dashboard: dict[str, Any] = MODEL_DASHBOARD) -> set[str]:
    names: set[str] = set()
    for query in stack_files.panel_queries(dashboard):
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


# What the Rollout dashboard is for: every rollout instrument, and each per-version or per-role
# metric the rollout compares versions by.
ROLLOUT_SPECS = [
    *ins.ROLLOUT_INSTRUMENTS, ins.MODEL_INFO, ins.MODEL_RELOADS, ins.MODEL_ROWS,
    ins.MODEL_INFERENCE, ins.RESPONSE_LATENCY, ins.PREDICTIONS_BY_CLASS, ins.CONFIDENCE,
    ins.FEEDBACK_OUTCOMES, ins.DRIFT_SCORE,
]  # fmt: skip


@pytest.mark.parametrize("spec", ROLLOUT_SPECS, ids=lambda s: s.name)
def test_rollout_dashboard_shows_every_rollout_metric(spec: ins.InstrumentSpec) -> None:
    names = _dashboard_metric_names(ROLLOUT_DASHBOARD)
    recorded_from = {
        name
        for rule in stack_files.rules()
        if not rule.is_alert and rule.name in names
        for name in stack_files.metric_names(rule.expr)
    }
    assert _exported_names(spec) & (names | recorded_from), f"{spec.name} is on no panel"


def test_every_rollout_recording_rule_is_read() -> None:
    """A recording rule nothing reads costs Prometheus work and misleads the reader."""
    rollout = [r for r in stack_files.rules() if r.file.name == "rollout.yml"]
    read = _dashboard_metric_names(ROLLOUT_DASHBOARD)
    for rule in rollout:
        read |= stack_files.metric_names(rule.expr)
        read |= set(re.findall(r"lungwatch:[\w:]+", str(rule.body.get("annotations", {}))))
    unread = [r.name for r in rollout if not r.is_alert and r.name not in read]
    assert not unread, f"recording rules nothing reads: {unread}"


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


def _panels_querying(
    metric: str, dashboard: dict[str, Any] = MODEL_DASHBOARD
) -> list[dict[str, Any]]:
    return [
        panel
        for panel in stack_files.iter_panels(dashboard)
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


def _draws_threshold_for(panel: dict[str, Any], metric: str) -> bool:
    """The threshold line is on for the series of `metric`: by default, or by an override of
    the query that reads it (a panel with a second axis draws only that axis's threshold)."""
    default = panel["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {})
    refs = {t["refId"] for t in panel["targets"] if metric in t.get("expr", "")}
    for override in panel["fieldConfig"].get("overrides", []):
        matcher = override["matcher"]
        if matcher["id"] == "byFrameRefID" and matcher["options"] in refs:
            for prop in override["properties"]:
                if prop["id"] == "custom.thresholdsStyle":
                    return bool(prop["value"]["mode"] != "off")
    return bool(default.get("mode", "off") != "off")


@pytest.mark.parametrize(
    ("alert", "metric", "operator"),
    [
        ("ChallengerDisagrees", "lungwatch:model_shadow_agreement:ratio30m", "<"),
        ("ChallengerSlower",
         "lungwatch:model_inference_per_row_challenger_over_champion:ratio15m", ">"),
        ("ShadowDropping", "lungwatch:gateway_shadow_unscored:ratio_rate10m", ">"),
        ("ModelInputDrift", "model_drift_score", ">"),
    ],
)  # fmt: skip
def test_rollout_dashboard_draws_the_alert_threshold(
    alert: str, metric: str, operator: str
) -> None:
    threshold = _threshold(alert, metric, operator)
    panels = _panels_querying(metric, ROLLOUT_DASHBOARD)
    assert panels, f"no panel of the Rollout dashboard shows {metric}"
    for panel in panels:
        assert threshold in _threshold_steps(panel), f"{panel['title']}: no step at {threshold}"
    lines = [p for p in panels if p["type"] == "timeseries"]
    assert lines, f"no time series of {metric}"
    for panel in lines:
        assert _draws_threshold_for(panel, metric), f"{panel['title']} does not draw {threshold}"


def test_rollout_accuracy_panel_draws_the_fleet_alert_threshold() -> None:
    threshold = _threshold("ModelOnlineAccuracyLow", "lungwatch:model_online_accuracy:ratio1h", "<")
    metric = "lungwatch:model_online_accuracy_by_version:ratio1h"
    (panel,) = _panels_querying(metric, ROLLOUT_DASHBOARD)
    assert threshold in _threshold_steps(panel)
    assert _draws_threshold_for(panel, metric)


def test_compared_rows_panel_marks_the_alerts_minimum() -> None:
    rows = _threshold("ChallengerDisagrees", "lungwatch:model_shadow_comparisons:increase30m", ">=")
    stats = [
        p
        for p in _panels_querying(
            "lungwatch:model_shadow_comparisons:increase30m", ROLLOUT_DASHBOARD
        )
        if p["type"] == "stat"
    ]
    assert stats and all(rows in _threshold_steps(p) for p in stats)


def test_rollout_alerts_name_the_versions_they_judge() -> None:
    """ChallengerDisagrees is per version pair: both versions are labels of the alert, so
    two challengers in one window are two alerts, and the notification says which."""
    expr = ALERTS["ChallengerDisagrees"].expr
    for label in ("champion_version", "challenger_version"):
        assert label in expr, expr
    summary = ALERTS["ChallengerDisagrees"].body["annotations"]["summary"]
    assert "$labels.champion_version" in summary and "$labels.challenger_version" in summary
