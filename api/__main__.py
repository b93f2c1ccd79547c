"""Run the gateway under uvicorn: `python -m api` (settings from LUNGWATCH_* variables)."""

from __future__ import annotations

import sys

import uvicorn

from api.app import create_app
from api.settings import Settings
from telemetry.logs import configure_logging


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    # The app's lifespan closes the model client and flushes telemetry on SIGTERM/Ctrl-C.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
