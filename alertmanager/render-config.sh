#!/bin/sh
# Renders alertmanager.yml.tmpl with the webhook URL from the environment, then (optionally)
# execs the command that follows: compose.yaml uses it as Alertmanager's entrypoint.
#   render-config.sh TEMPLATE OUTPUT [COMMAND ARGS...]
# Alertmanager (v0.28.1, pinned in compose.yaml) does not expand environment variables in its
# config, hence this step: the webhook URL, a secret, stays in the environment compose passes
# rather than in a file in the repository. POSIX sh: runs in the busybox-based image as well.
set -eu

: "${ALERTMANAGER_WEBHOOK_URL:?set ALERTMANAGER_WEBHOOK_URL to the URL that receives alert webhooks}"
template=${1:?usage: render-config.sh TEMPLATE OUTPUT [COMMAND ARGS...]}
output=${2:?usage: render-config.sh TEMPLATE OUTPUT [COMMAND ARGS...]}
shift 2

case "$ALERTMANAGER_WEBHOOK_URL" in
  http://*|https://*) ;;
  *) echo "ALERTMANAGER_WEBHOOK_URL must start with http:// or https://" >&2; exit 1 ;;
esac
# The URL lands in a single-quoted YAML string: a quote or whitespace would break it.
case "$ALERTMANAGER_WEBHOOK_URL" in
  *"'"*|*" "*|*"	"*) echo "ALERTMANAGER_WEBHOOK_URL must not contain quotes or spaces" >&2; exit 1 ;;
esac

# Escape what is special in a sed replacement (the | delimiter, &, backslash).
escaped=$(printf '%s\n' "$ALERTMANAGER_WEBHOOK_URL" | sed 's/[|&\\]/\\&/g')
sed 's|\${ALERTMANAGER_WEBHOOK_URL}|'"$escaped"'|g' "$template" > "$output"

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
