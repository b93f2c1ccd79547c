"""Run the gateway under uvicorn: `python -m api` (settings from LUNGWATCH_GATEWAY_* variables)."""

from __future__ import annotations

import sys

from api.app import create_app
from contract.server import run_uvicorn
from contract.settings import GatewaySettings, load_settings
from telemetry.logs import configure_logging


def main() -> int:
    settings = load_settings(GatewaySettings, "lungwatch gateway")
    configure_logging(settings.log_level)
    # The app's lifespan closes the model client and flushes telemetry on SIGTERM/Ctrl-C.
    run_uvicorn(create_app(settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
