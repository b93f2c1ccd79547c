#!/usr/bin/env bash
# Brings the full Lungwatch stack (compose.yaml) up or down.
#   scripts/stack.sh up     build, start, wait until every service is healthy, print the URLs
#   scripts/stack.sh down   stop and remove the containers (volumes are kept; add -v to drop)
# The seed's deploy.sh equivalent; `make stack` / `make stack-down` call it.
set -euo pipefail

cd "$(dirname "$0")/.."

compose() { docker compose "$@"; }

need_env() {
  # compose itself fails on a missing ${VAR:?}, but only after building; fail fast and say how.
  if [[ ! -f .env ]]; then
    for var in GRAFANA_ADMIN_PASSWORD ALERTMANAGER_WEBHOOK_URL; do
      if [[ -z "${!var:-}" ]]; then
        echo "error: $var is not set. Copy .env.example to .env and fill it in." >&2
        exit 1
      fi
    done
  fi
}

print_urls() {
  cat <<'URLS'

Lungwatch is up:
  Gateway (API docs)   http://localhost:8000/docs
  Grafana              http://localhost:3000   (GRAFANA_ADMIN_USER / GRAFANA_ADMIN_PASSWORD)
  Prometheus           http://localhost:9090   (alerts: /alerts, targets: /targets)
  Alertmanager         http://localhost:9093
  Tempo API            http://localhost:3200
  OTLP ingest          localhost:4317 (gRPC), localhost:4318 (HTTP)

Traffic for the dashboards:  docker compose --profile loadgen up -d loadgen
Stop:                        scripts/stack.sh down
URLS
}

case "${1:-up}" in
  up)
    command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 1; }
    need_env
    # --wait returns once every service with a healthcheck reports healthy (or fails if one
    # does not within the timeout), which is what "up" should mean here.
    compose up -d --build --wait --wait-timeout "${STACK_WAIT_TIMEOUT:-300}"
    compose ps
    print_urls
    ;;
  down)
    shift || true
    compose --profile loadgen down "$@"
    ;;
  *)
    echo "usage: $0 up|down [docker compose down options]" >&2
    exit 2
    ;;
esac
