"""Every setting of every Lungwatch server, in one place: one class per process, one default each.

A field `x` of `GatewaySettings` is read from `LUNGWATCH_GATEWAY_<FIELD>`, one of
`ModelServerSettings` from `LUNGWATCH_MODEL_SERVER_<FIELD>`. Telemetry is configured by the standard
`OTEL_*` variables, which the OpenTelemetry SDK reads itself. The README's configuration
tables are generated from these classes (`python -m contract.settings --write-readme`) and a
test keeps them in sync, so a field's description below is the one users read.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.wire import CANARY_STICKY_HEADER

# The MLflow registry entry the model server loads unless told otherwise (`make run`, compose).
REGISTERED_MODEL_NAME = "lungwatch-risk"
SERVING_ALIAS = "champion"
DEFAULT_MODEL_URI = f"models:/{REGISTERED_MODEL_NAME}@{SERVING_ALIAS}"
# The alias a candidate is registered under to run beside the champion (shadow or canary),
# and the one promote records the replaced champion under, for rollback (model.aliases).
CHALLENGER_ALIAS = "challenger"
PREVIOUS_ALIAS = "previous-champion"

# `models:/<name>@<alias>` (followed on every registry check) or `models:/<name>/<version>`
# (fixed). MLflow's own alias rule: letters, digits, `_` and `-`.
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def check_model_uri(uri: str, setting: str) -> str:
    """A clear start-up error for a registry URI that is not one of the two shapes; other
    URIs (runs:/, a local path) are served as they are and never reloaded."""
    if uri.startswith("models:/") and not MODEL_URI.match(uri):
        raise ValueError(
            f"{setting}: {uri!r} is not models:/<name>@<alias> (letters, digits, _ and -) or "
            "models:/<name>/<version>"
        )
    return uri


class GatewaySettings(BaseSettings):
    """The gateway (`python -m api`)."""

    model_config = SettingsConfigDict(env_prefix="LUNGWATCH_GATEWAY_", protected_namespaces=())

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the API (and of /metrics).")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this separate port instead (unset: on the API port).",
    )
    log_level: str = Field("info", description="Log level of the JSON log lines.")
    graceful_shutdown_seconds: float = Field(
        10.0, ge=0, description="After SIGTERM, how long in-flight requests may take to finish."
    )
    model_server_url: str = Field(
        "http://127.0.0.1:8080", description="Base URL of the model server."
    )
    # Connect fails fast (a refused or unroutable server should not hold a client for the
    # whole request timeout); the request timeout bounds a slow inference.
    model_server_connect_timeout_seconds: float = Field(
        1.0, gt=0, description="Deadline to open a connection to the model server."
    )
    model_server_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of one whole model-server call (then 504)."
    )
    model_server_max_connections: int = Field(
        64, ge=1, description="Pooled keep-alive connections to the model server."
    )
    predict_batch_max_rows: int = Field(
        100,
        ge=1,
        # Rows are validated on the event loop: 1,000 invalid ones take ~0.2 s, 10,000 took
        # 3-5 s during which the gateway answered nothing else.
        le=1_000,
        description="Rows accepted by one /predict/batch request (else 422).",
    )
    ready_cache_seconds: float = Field(
        1.0, ge=0, description="How long /ready reuses its last model-server check."
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Larger request bodies are refused with 413 unread."
    )
    max_in_flight: int = Field(
        64, ge=0, description="Prediction requests in flight at once; beyond: 503 (0: no limit)."
    )
    circuit_failure_threshold: int = Field(
        5,
        ge=0,
        description="Consecutive model-server failures that open the circuit (0: no breaker).",
    )
    circuit_reset_seconds: float = Field(
        5.0, gt=0, description="How long an open circuit fails fast before one probe call."
    )
    api_keys: str = Field(
        "",
        repr=False,
        description="Comma-separated API keys for /predict*, /feedback (empty: no auth).",
    )
    batching: bool = Field(True, description="Let concurrent predictions share model calls.")
    # Encoding spans to OTLP cost the gateway ~130 µs of its ~1 ms per request at 64
    # connections, in a thread holding the GIL the event loop needs (issue 11).
    span_export_process: bool = Field(
        True,
        description=(
            "Encode and send OTLP spans from a child process (the other core) instead of "
            "the gateway's own export thread."
        ),
    )
    # Issue 23: a challenger beside the champion.
    rollout_mode: Literal["off", "shadow", "canary"] = Field(
        "off",
        description="`shadow`: a share of requests is also scored by the challenger, after the "
        "champion answered; `canary`: a share is answered by the challenger; `off`: neither.",
    )
    rollout_percent: float = Field(
        10.0,
        ge=0,
        le=100,
        description="Share of prediction requests, in percent, shadowed or sent to the canary.",
    )
    canary_sticky_header: str = Field(
        CANARY_STICKY_HEADER,
        pattern=r"^[a-z0-9][a-z0-9-]{0,63}$",
        description="Requests with the same value of this header go to the same version "
        "(absent: the request's rows decide, so one patient row always gets one version).",
    )
    challenger_url: str = Field(
        "",
        description="Base URL of the model server asked for the challenger (empty: the "
        "champion's model server, which serves both).",
    )
    shadow_queue_rows: int = Field(
        2048, ge=1, le=1_000_000,
        description="Rows waiting for the challenger at most; more are dropped and counted.",
    )  # fmt: skip
    shadow_max_rows: int = Field(
        64, ge=1, le=1024, description="Rows in one shadow call to the challenger."
    )
    shadow_max_wait_ms: float = Field(
        50.0, ge=0, description="Longest a shadowed row waits for others to share its call."
    )
    batch_max_rows: int = Field(
        32, ge=1, le=1024, description="Rows in one model-server call under batching."
    )
    batch_max_wait_ms: float = Field(
        20.0, ge=0, description="Longest a request waits for others to share its call."
    )
    batch_max_calls_in_flight: int = Field(
        2, ge=1, description="Model calls in flight before requests start to wait and merge."
    )
    drift_window_rows: int = Field(
        1000, ge=10, description="Drift is measured over the last this many input rows."
    )
    drift_interval_seconds: float = Field(
        5.0, gt=0, description="How often drift is recomputed (off the request path)."
    )
    quality_monitoring: bool = Field(
        True,
        description="Per answered row, the label-free estimate (CBPE) and the data-quality "
        "counters; false skips both (their cost: docs/performance.md).",
    )
    feedback_window: int = Field(
        1000, ge=1, description="Online accuracy over the last this many feedbacks."
    )
    feedback_max_pending: int = Field(
        100_000,
        ge=1,
        description="Answered prediction ids each replica remembers to refuse duplicates "
        "(oldest forgotten first).",
    )
    feedback_ttl_seconds: float = Field(
        3600.0, gt=0, description="How long a prediction accepts feedback (then 410)."
    )
    # Two keys so a rotation refuses no id: sign with the new key while the old one still
    # verifies, and drop the old one once feedback_ttl_seconds have passed.
    prediction_id_key: str = Field(
        "",
        repr=False,
        description="Secret (16+ characters) that signs prediction ids, the same on every "
        "replica (empty: a random key per process; ids verify only where issued).",
    )
    prediction_id_previous_key: str = Field(
        "",
        repr=False,
        description="The key before the last rotation: ids it signed still verify.",
    )
    feedback_redis_url: str = Field(
        "",
        repr=False,
        description="Redis shared by the replicas to refuse duplicate feedback "
        "(e.g. redis://redis:6379/0; empty: duplicates are caught per replica only).",
    )
    # Issue 16, finding 3: feedback is bound to the API key that made the prediction.
    feedback_api_keys: str = Field(
        "",
        repr=False,
        description="Comma-separated keys, each also in LUNGWATCH_GATEWAY_API_KEYS, that may "
        "send feedback for any prediction (a labelling pipeline); any other key only for the "
        "predictions it made itself.",
    )
    feedback_own_predictions: bool = Field(
        True,
        description="Whether any API key may send feedback for its own predictions (false: "
        "only the LUNGWATCH_GATEWAY_FEEDBACK_API_KEYS may send feedback).",
    )
    # Per replica on purpose: a bucket per key in the process needs no shared store.
    feedback_rate_per_second: float = Field(
        20.0,
        ge=0,
        description="Feedback calls per second each API key may make to one replica, then 429 "
        "(N replicas allow N times this; 0: no limit; no limit with API keys off).",
    )
    feedback_burst: int = Field(
        100, ge=1, description="Feedback calls a key may make at once before the rate applies."
    )
    # Issue 16, findings 5 and 7 (HTTP framing, forwarded headers): read by contract/server.py.
    http_header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="A connection that has not sent a request's complete headers this long "
        "after it opened or after the request's first byte is closed (408 if it began one).",
    )
    http_max_connections: int = Field(
        1000,
        ge=0,
        description="Connections the gateway serves at once; a request on one more is answered "
        "503 and its connection closed (0: no cap).",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated addresses or networks of proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed (empty: none, the peer is the client; `*`: any).",
    )
    # Issue 16, finding 6: the gateway proves itself to the model server.
    model_server_secret: str = Field(
        "",
        repr=False,
        description="Secret sent to the model server as `Authorization: Bearer` on every "
        "call: the value of LUNGWATCH_MODEL_SERVER_SHARED_SECRET (empty: none sent).",
    )

    @model_validator(mode="after")
    def _feedback_keys_are_api_keys(self) -> GatewaySettings:
        # The guard authenticates against API_KEYS alone: a key only listed here would get
        # 401 everywhere, so say so at start-up instead.
        unknown = set(self.feedback_api_key_list) - set(self.api_key_list)
        if unknown:
            raise ValueError(
                f"{env_name(GatewaySettings, 'feedback_api_keys')}: {len(unknown)} key(s) not "
                f"in {env_name(GatewaySettings, 'api_keys')}; list every feedback key there too"
            )
        return self

    @property
    def feedback_api_key_list(self) -> list[str]:
        return [key.strip() for key in self.feedback_api_keys.split(",") if key.strip()]

    @model_validator(mode="after")
    def _shared_key_for_shared_store(self) -> GatewaySettings:
        for name in ("prediction_id_key", "prediction_id_previous_key"):
            if 0 < len(getattr(self, name)) < 16:
                raise ValueError(f"{env_name(GatewaySettings, name)}: at least 16 characters")
        # A shared store means several replicas: with per-process keys each would refuse the
        # others' ids, so feedback would fail (N-1)/N of the time. Refuse to start instead.
        if self.feedback_redis_url and not self.prediction_id_key:
            raise ValueError(
                "LUNGWATCH_GATEWAY_FEEDBACK_REDIS_URL is set (several replicas) but "
                "LUNGWATCH_GATEWAY_PREDICTION_ID_KEY is not: set the same key on every replica"
            )
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]


class ModelServerSettings(BaseSettings):
    """The model server (`python -m model.serve`)."""

    model_config = SettingsConfigDict(env_prefix="LUNGWATCH_MODEL_SERVER_", protected_namespaces=())

    model_uri: str = Field(
        DEFAULT_MODEL_URI,
        description="MLflow URI of the champion, the model that answers (an alias is "
        "followed: see RELOAD_INTERVAL_SECONDS).",
    )
    challenger_uri: str = Field(
        "",
        description="MLflow URI of a challenger served beside the champion, e.g. "
        "models:/lungwatch-risk@challenger (empty: none).",
    )
    reload_interval_seconds: float = Field(
        10.0,
        ge=0,
        description="How often the registry is asked which versions the aliases point at; a "
        "moved alias is loaded, checked and swapped in (0: only on SIGHUP or POST "
        "/admin/reload).",
    )
    runtime: Literal["onnx", "sklearn"] = Field(
        "onnx",
        description="What computes predictions: the compiled ONNX graph or the scikit-learn "
        "pipeline (both are artifacts of every registered version).",
    )
    host: str = Field("127.0.0.1", description="Address the model server listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port of the model server.")
    log_level: str = Field("info", description="Log level of the JSON log lines.")
    graceful_shutdown_seconds: float = Field(
        10.0, ge=0, description="After SIGTERM, how long in-flight requests may take to finish."
    )
    workers: int = Field(
        1, ge=1, le=64, description="Worker processes sharing the port (the model loaded once)."
    )
    metrics_port: int = Field(
        9180,
        ge=1,
        le=65535,
        description="With several workers, worker i serves its own /metrics on this port + i.",
    )
    # Issue 16, findings 5 and 7 (HTTP framing, forwarded headers): read by contract/server.py.
    http_header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="A connection that has not sent a request's complete headers this long "
        "after it opened or after the request's first byte is closed (408 if it began one).",
    )
    http_max_connections: int = Field(
        1000,
        ge=0,
        description="Connections each worker serves at once; a request on one more is answered "
        "503 and its connection closed (0: no cap).",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="Comma-separated addresses or networks of proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed (empty: none, the peer is the client; `*`: any).",
    )
    # Issue 16, finding 6: only the gateway may call the model server.
    shared_secret: str = Field(
        "",
        repr=False,
        description="Secret (16+ characters) every request must bear as `Authorization: "
        "Bearer`, except /ping, /health and /metrics (empty: no check; refused: 401).",
    )

    @model_validator(mode="after")
    def _model_uris(self) -> ModelServerSettings:
        check_model_uri(self.model_uri, env_name(ModelServerSettings, "model_uri"))
        if self.challenger_uri:
            check_model_uri(self.challenger_uri, env_name(ModelServerSettings, "challenger_uri"))
            if self.challenger_uri == self.model_uri:
                raise ValueError(
                    f"{env_name(ModelServerSettings, 'challenger_uri')}: the champion's URI; "
                    "a challenger is another alias or version"
                )
        return self


# The defaults alone, without reading the environment: the one source of a default for the
# classes that take a setting as a constructor argument (batcher, feedback store, ...).
GATEWAY_DEFAULTS = GatewaySettings.model_construct()

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (GatewaySettings, ModelServerSettings)


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_class: type[S], process: str) -> S:
    """The settings, or a clear exit (status 2) naming each bad variable and why, without
    pydantic's own text, which quotes the input (API keys, secrets) in its message."""
    try:
        return settings_class()
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            # A whole-class check (loc empty) names its variables in its own message.
            where = f"{env_name(settings_class, str(error['loc'][0]))}: " if error["loc"] else ""
            print(f"{process}: {where}{error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def env_name(settings_class: type[BaseSettings], field: str) -> str:
    return f"{settings_class.model_config.get('env_prefix', '')}{field}".upper()


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return "empty"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table(settings_class: type[BaseSettings]) -> str:
    """The README's table of one class: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings_class.model_fields.items():
        lines.append(
            f"| `{env_name(settings_class, name)}` | `{_default(field.default)}` "
            f"| {field.description} |"
        )
    return "\n".join(lines)


def write_readme_tables(path: Path) -> None:
    """Replace each class's table in the README, found after its `<!-- settings: Name -->`."""
    text = path.read_text()
    for cls in SETTINGS_CLASSES:
        marker = f"<!-- settings: {cls.__name__} -->\n"
        start = text.index(marker) + len(marker)
        end = text.find("\n\n", start)
        text = text[:start] + markdown_table(cls) + text[end if end != -1 else len(text) :]
    path.write_text(text)


if __name__ == "__main__":
    # `python -m contract.settings` prints the tables; `--write-readme` updates README.md.
    if sys.argv[1:] == ["--write-readme"]:
        write_readme_tables(Path(__file__).resolve().parent.parent / "README.md")
    else:
        for cls in SETTINGS_CLASSES:
            print(f"{(cls.__doc__ or cls.__name__).strip()}\n\n{markdown_table(cls)}\n")
    sys.exit(0)
