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
    log_level: str = "info"
    graceful_shutdown_seconds: float = Field(10.0, ge=0)
