"""Every instrument Lungwatch exports: its own (name, kind, unit, buckets, description), and the
instrumentations' and the SDK's, renamed by Views to their Prometheus names or dropped.

Instrument names are the exact Prometheus names, suffixes included, so both paths print
them unchanged: the direct /metrics (the SDK's Prometheus reader) appends a unit or `_total`
suffix only when the name does not already end with it, and the Collector's exporter
(otel-collector.yaml, UnderscoreEscapingWithoutSuffixes) adds none, writing a counter whose
name lacks `_total` as type `unknown`. So a counter's name ends in `_total` and a
histogram's in its unit. CPU/RAM gauges use an empty unit on purpose: "%" would add
`_percent`. tests/config/test_collector_names.py derives both paths' names from the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opentelemetry.metrics import Meter

from telemetry.tallies import CounterTally, GaugeTally

# Seconds, from a lone cached request (~5 ms) to the gateway's longest deadline (10 s).
# The SDK's default boundaries are millisecond-sized (0, 5, 10, ... 10000) even for unit "s".
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


# Probabilities of the winning class: never below 1/3 with three classes.
CONFIDENCE_BUCKETS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


# Rows per model-server call under micro-batching, and the time a request waits to join one.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class Kind(StrEnum):
    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"  # exported as a gauge on both paths
    HISTOGRAM = "histogram"
    GAUGE = "gauge"
    OBSERVABLE_GAUGE = "observable_gauge"


@dataclass(frozen=True)
class InstrumentSpec:
    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] | None = None
    contract: bool = False  # one of the ten names the seed's users query
    attributes: tuple[str, ...] = field(default_factory=tuple)  # label keys it may carry


# --- the gateway -----------------------------------------------------------------------
PREDICTION_RESULT = InstrumentSpec(
    "api_prediction_result", Kind.GAUGE, "",
    "Class of the latest prediction (0 Low, 1 Medium, 2 High)", contract=True,
)  # fmt: skip
PREDICTION_CONFIDENCE = InstrumentSpec(
    "api_prediction_confidence", Kind.GAUGE, "",
    "Confidence (highest class probability) of the latest prediction", contract=True,
)  # fmt: skip
TOTAL_REQUESTS = InstrumentSpec(
    "api_total_requests_total", Kind.COUNTER, "",
    "Prediction requests received (one per HTTP request to /predict or /predict/batch)",
    contract=True, attributes=("endpoint",),
)  # fmt: skip
SUCCESSFUL_REQUESTS = InstrumentSpec(
    "api_successful_requests_total", Kind.COUNTER, "",
    "Prediction requests answered with a prediction (HTTP 200)",
    contract=True, attributes=("endpoint",),
)  # fmt: skip
FAILED_REQUESTS = InstrumentSpec(
    "api_failed_requests_total", Kind.COUNTER, "",
    "Prediction requests that failed, by reason (invalid_request is the client's fault)",
    contract=True, attributes=("endpoint", "reason"),
)  # fmt: skip
REFUSED_REQUESTS = InstrumentSpec(
    "api_refused_requests_total", Kind.COUNTER, "",
    "Requests to a guarded route refused before they count as traffic (401, 403, 413, 415, "
    "429), by route and reason",
    attributes=("endpoint", "reason"),
)  # fmt: skip
RESPONSE_LATENCY = InstrumentSpec(
    "api_response_latency_seconds", Kind.HISTOGRAM, "s",
    "Model-server round trip as seen by the gateway (callers' calls; shadow calls apart), "
    "by outcome and the model version that answered (unknown when none did)",
    buckets=LATENCY_BUCKETS_SECONDS, contract=True, attributes=("outcome", "model_version"),
)  # fmt: skip
ENDPOINT_REQUEST_TIME = InstrumentSpec(
    "endpoint_request_time_seconds", Kind.HISTOGRAM, "s",
    "Gateway response time per endpoint, method and status code",
    buckets=LATENCY_BUCKETS_SECONDS, contract=True,
    attributes=("endpoint", "method", "status_code"),
)  # fmt: skip
MEMORY_PER_REQUEST = InstrumentSpec(
    "memory_per_request_bytes", Kind.GAUGE, "By",
    "Growth of the gateway's resident memory (RSS) across the latest prediction request",
    contract=True,
)  # fmt: skip
SYSTEM_CPU = InstrumentSpec(
    "system_cpu_usage", Kind.OBSERVABLE_GAUGE, "",
    "Machine CPU usage in percent since the previous collection", contract=True,
)  # fmt: skip
SYSTEM_RAM = InstrumentSpec(
    "system_ram_usage", Kind.OBSERVABLE_GAUGE, "",
    "Machine RAM usage in percent", contract=True,
)  # fmt: skip

# --- micro-batching (gateway) ------------------------------------------------------------
BATCH_SIZE = InstrumentSpec(
    "gateway_batch_size_rows", Kind.HISTOGRAM, "",
    "Rows in each model-server call the batcher released",
    buckets=BATCH_SIZE_BUCKETS,
)  # fmt: skip
BATCH_QUEUE_WAIT = InstrumentSpec(
    "gateway_batch_queue_wait_seconds", Kind.HISTOGRAM, "s",
    "Time a request waited in the batcher before its model-server call was sent",
    buckets=QUEUE_WAIT_BUCKETS,
)  # fmt: skip
BATCH_RELEASES = InstrumentSpec(
    "gateway_batch_releases_total", Kind.COUNTER, "",
    "Model-server calls released by the batcher, by reason (idle, full, wait_expired)",
    attributes=("reason",),
)  # fmt: skip
BATCH_QUEUE_DEPTH = InstrumentSpec(
    "gateway_batch_queue_depth", Kind.OBSERVABLE_GAUGE, "",
    "Requests waiting in the batcher for a model-server call",
)  # fmt: skip
BATCH_IN_FLIGHT = InstrumentSpec(
    "gateway_batch_calls_in_flight", Kind.OBSERVABLE_GAUGE, "",
    "Model-server calls the batcher has in flight",
)  # fmt: skip

# --- model monitoring (gateway) ----------------------------------------------------------
PREDICTIONS_BY_CLASS = InstrumentSpec(
    "model_predictions_total", Kind.COUNTER, "",
    "Rows predicted for callers, by predicted class (Low, Medium, High) and the model version "
    "that answered: exact class and traffic shares over any window",
    attributes=("class", "model_version"),
)  # fmt: skip
CONFIDENCE = InstrumentSpec(
    "model_prediction_confidence", Kind.HISTOGRAM, "",
    "Confidence (highest class probability) of each predicted row, by predicted class and "
    "model version",
    buckets=CONFIDENCE_BUCKETS, attributes=("class", "model_version"),
)  # fmt: skip
FEATURE_DRIFT = InstrumentSpec(
    "model_feature_drift_psi", Kind.OBSERVABLE_GAUGE, "",
    "Population stability index of each feature: recent inputs vs the training rows of each "
    "served model version",
    attributes=("feature", "model_version"),
)  # fmt: skip
DRIFT_SCORE = InstrumentSpec(
    "model_drift_score", Kind.OBSERVABLE_GAUGE, "",
    "Overall drift: the largest per-feature PSI (over 0.25 is a significant shift), per "
    "served model version's training reference",
    attributes=("model_version",),
)  # fmt: skip
DRIFTED_FEATURES = InstrumentSpec(
    "model_drifted_features", Kind.OBSERVABLE_GAUGE, "",
    "Features whose PSI is over the drift threshold, per served model version's reference",
    attributes=("model_version",),
)  # fmt: skip
DRIFT_WINDOW = InstrumentSpec(
    "model_drift_window_rows", Kind.OBSERVABLE_GAUGE, "",
    "Recent input rows the drift scores are computed from",
)  # fmt: skip
# Counters add up across replicas, so the fleet's accuracy and recall are PromQL over this,
# not a gauge: sum(increase(model_feedback_outcomes_total{correct="true"}[1h]))
#   / sum(increase(model_feedback_outcomes_total[1h])), by model_version for one version.
# `correct` repeats predicted == actual because PromQL cannot compare two labels' values.
FEEDBACK_OUTCOMES = InstrumentSpec(
    "model_feedback_outcomes_total", Kind.COUNTER, "",
    "Accepted feedback by predicted and true class (correct: whether they match) and the "
    "model version that made the prediction; sums across replicas to the fleet's online "
    "accuracy and recall",
    attributes=("predicted", "actual", "correct", "model_version"),
)  # fmt: skip
FEEDBACK = InstrumentSpec(
    "model_feedback_total", Kind.COUNTER, "",
    "Ground-truth feedback received, by result (accepted, unknown_prediction, duplicate)",
    attributes=("result",),
)  # fmt: skip
ONLINE_ACCURACY = InstrumentSpec(
    "model_online_accuracy", Kind.OBSERVABLE_GAUGE, "",
    "Accuracy over the sliding window of predictions that received feedback",
)  # fmt: skip
ONLINE_RECALL = InstrumentSpec(
    "model_online_recall", Kind.OBSERVABLE_GAUGE, "",
    "Recall per true class over the feedback window",
    attributes=("class",),
)  # fmt: skip
FEEDBACK_WINDOW = InstrumentSpec(
    "model_feedback_window_rows", Kind.OBSERVABLE_GAUGE, "",
    "Predictions with feedback in the online-accuracy window",
)  # fmt: skip

# --- the model server ------------------------------------------------------------------
MODEL_INFERENCE = InstrumentSpec(
    "model_inference_seconds", Kind.HISTOGRAM, "s",
    "Time inside the model's predict call in the model server, per call, by outcome, model "
    "version and role (champion, challenger)",
    buckets=LATENCY_BUCKETS_SECONDS, attributes=("outcome", "model_version", "role"),
)  # fmt: skip
MODEL_ROWS = InstrumentSpec(
    "model_predicted_rows_total",
    Kind.COUNTER,
    "",
    "Rows scored by the model server, by model version and role (champion, challenger)",
    attributes=("model_version", "role"),
)
MODEL_RELOADS = InstrumentSpec(
    "model_reloads_total", Kind.COUNTER, "",
    "Registry alias changes the model server acted on, by role and result: swapped, removed "
    "(alias deleted), refused_load, refused_gate (ONNX disagrees with its pipeline), "
    "registry_error (the old version kept serving in every case but swapped and removed)",
    attributes=("role", "result"),
)  # fmt: skip

GATEWAY_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    PREDICTION_RESULT, PREDICTION_CONFIDENCE, TOTAL_REQUESTS, SUCCESSFUL_REQUESTS,
    FAILED_REQUESTS, RESPONSE_LATENCY, ENDPOINT_REQUEST_TIME, MEMORY_PER_REQUEST,
    SYSTEM_CPU, SYSTEM_RAM, REFUSED_REQUESTS,
)  # fmt: skip
MODEL_INFO = InstrumentSpec(
    "model_info", Kind.OBSERVABLE_GAUGE, "",
    "1 for each model this server serves; its name, version, MLflow run id, runtime and role "
    "(champion, challenger) as labels",
    attributes=("model_name", "model_version", "run_id", "runtime", "role"),
)  # fmt: skip

BATCHING_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    BATCH_SIZE, BATCH_QUEUE_WAIT, BATCH_RELEASES, BATCH_QUEUE_DEPTH, BATCH_IN_FLIGHT,
)  # fmt: skip
MONITORING_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    PREDICTIONS_BY_CLASS, CONFIDENCE, FEATURE_DRIFT, DRIFT_SCORE, DRIFTED_FEATURES,
    DRIFT_WINDOW, FEEDBACK, FEEDBACK_OUTCOMES, ONLINE_ACCURACY, ONLINE_RECALL, FEEDBACK_WINDOW,
)  # fmt: skip
MODEL_SERVER_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    MODEL_INFERENCE, MODEL_ROWS, MODEL_INFO, MODEL_RELOADS,
)  # fmt: skip

# --- rollout: the challenger beside the champion (gateway) --------------------------------
SHADOW_ROWS = InstrumentSpec(
    "gateway_shadow_rows_total", Kind.COUNTER, "",
    "Rows picked for shadow scoring by outcome: scored, dropped (queue full), failed "
    "(challenger call failed), no_challenger (the model server serves none)",
    attributes=("outcome",),
)  # fmt: skip
SHADOW_LATENCY = InstrumentSpec(
    "gateway_shadow_latency_seconds", Kind.HISTOGRAM, "s",
    "Round trip of each shadow call to the challenger (up to LUNGWATCH_GATEWAY_SHADOW_MAX_ROWS "
    "rows), by the version that answered",
    buckets=LATENCY_BUCKETS_SECONDS, attributes=("model_version",),
)  # fmt: skip
SHADOW_QUEUE = InstrumentSpec(
    "gateway_shadow_queue_rows", Kind.OBSERVABLE_GAUGE, "",
    "Rows waiting to be scored by the challenger",
)  # fmt: skip
SHADOW_COMPARISONS = InstrumentSpec(
    "model_shadow_comparisons_total", Kind.COUNTER, "",
    "Shadowed rows by champion and challenger version and class (agree: whether the classes "
    "match): agreement rate and confusion table of champion x challenger",
    attributes=(
        "champion_version", "challenger_version", "champion_class", "challenger_class", "agree",
    ),
)  # fmt: skip
CANARY_FALLBACKS = InstrumentSpec(
    "gateway_canary_fallbacks_total", Kind.COUNTER, "",
    "Canary requests the challenger failed, answered by the champion instead, by the "
    "challenger call's failure reason",
    attributes=("reason",),
)  # fmt: skip
ROLLOUT_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    SHADOW_ROWS, SHADOW_LATENCY, SHADOW_QUEUE, SHADOW_COMPARISONS, CANARY_FALLBACKS,
)  # fmt: skip

# --- model quality before the labels arrive (gateway, issue 24) -----------------------------
# These estimates are meaningful only while the served probabilities are calibrated: watch
# ModelCalibrationDrift (the feedback's ECE) before trusting them.
EXPECTED_OUTCOMES = InstrumentSpec(
    "model_expected_outcomes_total", Kind.COUNTER, "",
    "Expected confusion matrix from the calibrated probabilities (CBPE): for each row "
    "answered, P(actual) added under its predicted class; correct: predicted == actual. "
    "Valid only while calibration holds",
    attributes=("predicted", "actual", "correct", "model_version"),
)  # fmt: skip
ESTIMATED_ACCURACY = InstrumentSpec(
    "model_estimated_accuracy", Kind.OBSERVABLE_GAUGE, "",
    "Accuracy expected from the calibrated probabilities of this replica's recent "
    "predictions, before any label (valid only while calibration holds)",
    attributes=("model_version",),
)  # fmt: skip
ESTIMATED_RECALL = InstrumentSpec(
    "model_estimated_recall", Kind.OBSERVABLE_GAUGE, "",
    "Recall per true class expected from the calibrated probabilities (recent predictions)",
    attributes=("class", "model_version"),
)  # fmt: skip
ESTIMATED_PRECISION = InstrumentSpec(
    "model_estimated_precision", Kind.OBSERVABLE_GAUGE, "",
    "Precision per predicted class expected from the calibrated probabilities",
    attributes=("class", "model_version"),
)  # fmt: skip
FEEDBACK_BRIER = InstrumentSpec(
    "model_feedback_brier_total", Kind.COUNTER, "",
    "Sum of the multiclass Brier scores (0..2) of accepted feedback on ids that carry the "
    "answered probabilities",
    attributes=("model_version",),
)  # fmt: skip
FEEDBACK_SCORED = InstrumentSpec(
    "model_feedback_scored_total", Kind.COUNTER, "",
    "Accepted feedback on ids that carry the answered probabilities (Brier and ECE rows)",
    attributes=("model_version",),
)  # fmt: skip
FEEDBACK_CALIBRATION = InstrumentSpec(
    "model_feedback_calibration_total", Kind.COUNTER, "",
    "Feedback rows with probabilities by confidence decile (bin: its lower edge) and "
    "whether the prediction was right: the realized accuracy of each bin",
    attributes=("bin", "correct", "model_version"),
)  # fmt: skip
FEEDBACK_CONFIDENCE = InstrumentSpec(
    "model_feedback_confidence_total", Kind.COUNTER, "",
    "Sum of the answered confidences of the feedback rows in each confidence decile: with "
    "model_feedback_calibration_total, the expected calibration error",
    attributes=("bin", "model_version"),
)  # fmt: skip
DRIFT_PVALUE = InstrumentSpec(
    "model_feature_drift_pvalue", Kind.OBSERVABLE_GAUGE, "",
    "Chi-squared goodness-of-fit p-value of each feature's recent levels against the "
    "training reference of each served version",
    attributes=("feature", "model_version"),
)  # fmt: skip
FEATURE_DRIFTED = InstrumentSpec(
    "model_feature_drifted", Kind.OBSERVABLE_GAUGE, "",
    "1 when the feature's chi-squared test rejects the training distribution (p < 0.01/23, "
    "Bonferroni over the 23 features) on a window of at least 200 rows, else 0",
    attributes=("feature", "model_version"),
)  # fmt: skip
INPUT_QUALITY = InstrumentSpec(
    "model_input_quality_total", Kind.COUNTER, "",
    "Valid input values worth a look, by feature and kind: outside_training_range (beyond "
    "the training rows' lowest or highest value), at_range_edge (that, and the accepted "
    "range's own end); feature row: repeated_row (same as the previous row of the same key), "
    "unseen_profile (no training row is this profile)",
    attributes=("feature", "kind"),
)  # fmt: skip
STUCK_FEATURES = InstrumentSpec(
    "model_input_stuck_features", Kind.OBSERVABLE_GAUGE, "",
    "1 when the feature took a single value over the whole recent window (100+ rows)",
    attributes=("feature",),
)  # fmt: skip
QUALITY_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    EXPECTED_OUTCOMES, ESTIMATED_ACCURACY, ESTIMATED_RECALL, ESTIMATED_PRECISION,
    FEEDBACK_BRIER, FEEDBACK_SCORED, FEEDBACK_CALIBRATION, FEEDBACK_CONFIDENCE,
    DRIFT_PVALUE, FEATURE_DRIFTED, INPUT_QUALITY, STUCK_FEATURES,
)  # fmt: skip

ALL_INSTRUMENTS = (
    GATEWAY_INSTRUMENTS
    + BATCHING_INSTRUMENTS
    + MONITORING_INSTRUMENTS
    + MODEL_SERVER_INSTRUMENTS
    + ROLLOUT_INSTRUMENTS
    + QUALITY_INSTRUMENTS
)
CONTRACT: tuple[InstrumentSpec, ...] = tuple(s for s in ALL_INSTRUMENTS if s.contract)


def create(meter: Meter, spec: InstrumentSpec, callbacks: Any = None) -> Any:
    """Create the instrument a spec describes on the given meter.

    Counters and gauges are tallies (telemetry.tallies): plain numbers the SDK reads at
    collection, with the SDK instruments' `add`/`set`; histograms are the SDK's own."""
    if spec.kind is Kind.COUNTER:
        return CounterTally(meter, spec.name, spec.unit, spec.description)
    if spec.kind is Kind.GAUGE:
        return GaugeTally(meter, spec.name, spec.unit, spec.description)
    if spec.kind is Kind.HISTOGRAM:
        return meter.create_histogram(
            spec.name,
            unit=spec.unit,
            description=spec.description,
            explicit_bucket_boundaries_advisory=list(spec.buckets or ()),
        )
    if spec.kind is Kind.UP_DOWN_COUNTER:
        return meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
    return meter.create_observable_gauge(
        spec.name, callbacks=callbacks or [], unit=spec.unit, description=spec.description
    )


# --- instruments others create: the HTTP instrumentations and the SDK itself --------------
@dataclass(frozen=True)
class RenamedInstrument:
    """An instrument a library creates under an OpenTelemetry name, exported under `name`.

    The View that renames it keeps the library's unit, kind and buckets; `name` carries the
    suffixes both Prometheus paths need (see the module docstring)."""

    source: str  # the instrument name the library creates
    name: str  # the Prometheus name, also the OTLP name after the View
    kind: Kind
    unit: str
    used_by: str = ""  # who reads it


RENAMED_INSTRUMENTS: tuple[RenamedInstrument, ...] = (
    RenamedInstrument(
        "http.server.request.duration", "http_server_request_duration_seconds",
        Kind.HISTOGRAM, "s", used_by="README Metrics (gateway and model server)",
    ),
    # The batch span processor's health: `error_type="queue_full"` counts dropped spans.
    RenamedInstrument(
        "otel.sdk.processor.span.processed", "otel_sdk_processor_span_processed_total",
        Kind.COUNTER, "{span}",
        used_by="README Metrics and Failure behaviour (spans dropped)",
    ),
    RenamedInstrument(
        "otel.sdk.processor.span.queue.size", "otel_sdk_processor_span_queue_size",
        Kind.UP_DOWN_COUNTER, "{span}", used_by="README Metrics",
    ),
    RenamedInstrument(
        "otel.sdk.processor.span.queue.capacity", "otel_sdk_processor_span_queue_capacity",
        Kind.UP_DOWN_COUNTER, "{span}", used_by="README Metrics (otel_sdk_processor_span_*)",
    ),
    RenamedInstrument(
        "otel.sdk.exporter.span.exported", "otel_sdk_exporter_span_exported_total",
        Kind.COUNTER, "{span}", used_by="README Metrics (otel_sdk_exporter_span_*)",
    ),
    RenamedInstrument(
        "otel.sdk.exporter.span.inflight", "otel_sdk_exporter_span_inflight",
        Kind.UP_DOWN_COUNTER, "{span}", used_by="README Metrics (otel_sdk_exporter_span_*)",
    ),
    RenamedInstrument(
        "otel.sdk.exporter.operation.duration", "otel_sdk_exporter_operation_duration_seconds",
        Kind.HISTOGRAM, "s", used_by="README Metrics (export failures by error_type)",
    ),
)  # fmt: skip

# Instruments the FastAPI/ASGI instrumentation (and one of the SDK) create that no
# dashboard, rule or documented query reads: dropped by a View, so a request pays nothing to
# aggregate them and neither path exports them. The old-convention names only exist with
# OTEL_SEMCONV_STABILITY_OPT_IN=http/dup; they are dropped too so that mode adds nothing.
DROPPED_INSTRUMENTS: tuple[str, ...] = (
    "http.server.active_requests",
    "http.server.request.body.size",
    "http.server.response.body.size",
    "http.server.duration",
    "http.server.request.size",
    "http.server.response.size",
    # Recorded by every metric reader per collection; its default boundaries are sized for
    # milliseconds although its unit is seconds, and nothing reads it.
    "otel.sdk.metric_reader.collection.duration",
)


# Histograms whose values are not a time: an exemplar there would link a trace nobody opens
# from it, and offering one costs every record a reservoir update per metric reader (the
# confidence histogram is recorded for every predicted row). Every time histogram keeps its
# exemplars.
WITHOUT_EXEMPLARS: tuple[str, ...] = (CONFIDENCE.name, BATCH_SIZE.name)


def views() -> list[Any]:
    """The SDK Views that give other libraries' instruments their Prometheus names, drop
    the ones nothing reads and keep no exemplars where none is read."""
    from opentelemetry.sdk.metrics.view import DropAggregation, View

    renamed = [View(instrument_name=r.source, name=r.name) for r in RENAMED_INSTRUMENTS]
    dropped = [
        View(instrument_name=name, aggregation=DropAggregation()) for name in DROPPED_INSTRUMENTS
    ]
    plain = [
        View(instrument_name=name, exemplar_reservoir_factory=_no_exemplars)
        for name in WITHOUT_EXEMPLARS
    ]
    return renamed + dropped + plain


def _no_exemplars(aggregation_type: type) -> Any:
    from opentelemetry.sdk.metrics import ExemplarReservoir

    class NoExemplars(ExemplarReservoir):
        """Keeps nothing: the SDK still asks the exemplar filter, then offers to this."""

        def __init__(self, **_aggregation_parameters: Any) -> None:
            pass

        def offer(self, *_measurement: Any) -> None:
            pass

        def collect(self, point_attributes: Any) -> list[Any]:
            return []

    return NoExemplars
