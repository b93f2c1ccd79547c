"""Every gateway setting, from LUNGWATCH_* environment variables (OTEL_* are the SDK's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Field `x` is read from `LUNGWATCH_X`."""

    model_config = SettingsConfigDict(env_prefix="LUNGWATCH_", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_server_url: str = "http://127.0.0.1:8080"
    # Deadlines towards the model server. Connect fails fast (a refused or unroutable
    # server should not hold a client for the full request timeout); the request timeout
    # bounds a slow inference, so no request waits forever.
    model_connect_timeout_seconds: float = Field(1.0, gt=0)
    model_timeout_seconds: float = Field(5.0, gt=0)
    # Pooled keep-alive connections to the model server.
    model_max_connections: int = Field(64, ge=1)
    # Rows accepted by /predict/batch in one call (413-free: larger batches get a 422).
    max_batch_rows: int = Field(100, ge=1, le=10_000)
    # Readiness probe cache, so a busy /ready does not hammer the model server.
    ready_cache_seconds: float = Field(1.0, ge=0)
    # Hostile or accidental input: bodies beyond this are refused with a 413 before parsing.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Prediction requests in flight at once; beyond it a quick 503 `overloaded` (0: no limit).
    max_in_flight: int = Field(64, ge=0)
    # Circuit breaker: after this many consecutive model-server failures, fail fast for
    # `circuit_reset_seconds`, then let one probe through (0 turns the breaker off).
    circuit_failure_threshold: int = Field(5, ge=0)
    circuit_reset_seconds: float = Field(5.0, gt=0)
    # Comma-separated API keys for the prediction endpoints; empty means no auth (the local
    # default). Compared in constant time; never logged.
    api_keys: str = Field("", repr=False)
    # Serve /metrics on this separate port instead of the API port (unset: on the API port).
    metrics_port: int | None = Field(None, ge=1, le=65535)
    # Micro-batching (api/batching.py): concurrent predictions share model-server calls of
    # up to `max_batch` rows. A request is sent at once while fewer than
    # `batch_max_concurrency` calls are in flight; otherwise it waits for a free slot, a
    # full batch, or `batch_wait_ms`, whichever comes first.
    batching: bool = True
    max_batch: int = Field(32, ge=1, le=1024)
    batch_wait_ms: float = Field(20.0, ge=0)
    batch_max_concurrency: int = Field(2, ge=1)
    # Model monitoring: drift over the last N input rows, recomputed every few seconds off
    # the request path; online accuracy over the last N predictions that got feedback.
    drift_window_rows: int = Field(1000, ge=10)
    drift_interval_seconds: float = Field(5.0, gt=0)
    feedback_window: int = Field(1000, ge=1)
    # Predictions awaiting feedback: at most this many, for at most this long (then 404).
    feedback_max_pending: int = Field(100_000, ge=1)
    feedback_ttl_seconds: float = Field(3600.0, gt=0)
    log_level: str = "info"
    graceful_shutdown_seconds: float = Field(10.0, ge=0)

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]
