#!/bin/sh
# The image's entry point: `<service>` or a built `path/to/main.js`, then its arguments.
# SERVICE_TOKEN_FILE: read the bootstrap service credential from a file (minted at start-up by
# a one-shot container or an init container) unless SERVICE_TOKEN is already set.
set -eu
cd /app
if [ -z "${SERVICE_TOKEN:-}" ] && [ -n "${SERVICE_TOKEN_FILE:-}" ]; then
  if [ ! -s "$SERVICE_TOKEN_FILE" ]; then
    echo "entrypoint: SERVICE_TOKEN_FILE=$SERVICE_TOKEN_FILE is missing or empty" >&2
    exit 1
  fi
  SERVICE_TOKEN="$(cat "$SERVICE_TOKEN_FILE")"
  export SERVICE_TOKEN
fi

if [ "$#" -eq 0 ]; then set -- gateway; fi
name="$1"
shift
case "$name" in
  auth | registry | model-proxy | categorizer | workflow-engine | vector-search)
    main="services/$name/dist/src/main.js" ;;
  workflow) main="services/workflow-engine/dist/src/main.js" ;;
  gateway) main="gateway/dist/src/main.js" ;;
  llm-sim) main="packages/llm-sim/dist/cli.js" ;;
  mint-service-token) main="services/auth/dist/src/mint-service-token.js" ;;
  ensemble | cli) main="packages/cli/dist/src/main.js" ;;
  healthcheck) main="deploy/docker/healthcheck.mjs" ;;
  *.js | *.mjs) main="$name" ;;
  *)
    # Anything else runs as is (e.g. `sh`), for debugging.
    exec "$name" "$@" ;;
esac
exec node --enable-source-maps "$main" "$@"
