# syntax=docker/dockerfile:1
# One image for the whole mesh: built once, any service started by name.
#   docker build -t ensemble .
#   docker run --rm ensemble auth            (or registry, model-proxy, categorizer, workflow,
#                                             vector-search, gateway, llm-sim, mint-service-token, ensemble)
#   docker run --rm ensemble services/auth/dist/src/main.js   (any built entry point)
# Stages: deps (every dependency, for the build) -> build (tsc) -> prod-deps (production
# dependencies only) -> dist (compiled output only) -> runtime (node slim, non-root).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# Manifests first so the dependency layer is reused until one changes. Every workspace's
# package.json must be listed (deploy/test checks it): npm ci refuses a lockfile whose
# workspaces are missing.
COPY package.json package-lock.json ./
COPY packages/proto/package.json packages/proto/
COPY packages/kit/package.json packages/kit/
COPY packages/workflow/package.json packages/workflow/
COPY packages/testkit/package.json packages/testkit/
COPY packages/llm-sim/package.json packages/llm-sim/
COPY packages/cli/package.json packages/cli/
COPY services/auth/package.json services/auth/
COPY services/registry/package.json services/registry/
COPY services/model-proxy/package.json services/model-proxy/
COPY services/categorizer/package.json services/categorizer/
COPY services/workflow-engine/package.json services/workflow-engine/
COPY services/vector-search/package.json services/vector-search/
COPY gateway/package.json gateway/
COPY gateway/console/package.json gateway/console/
COPY bench/package.json bench/
# No install scripts, as on developer machines (npm 11 allowScripts): every native dependency
# (argon2, usearch) ships prebuilt binaries.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --ignore-scripts --no-audit --no-fund

FROM deps AS build
COPY tsconfig.base.json tsconfig.json ./
COPY packages packages
COPY services services
COPY gateway gateway
COPY deploy/config deploy/config
RUN npx tsc -b packages/llm-sim packages/cli services/auth services/registry \
      services/model-proxy services/categorizer services/workflow-engine \
      services/vector-search gateway \
    && npm run build -w @ensemble/console

FROM deps AS prod-deps
RUN --mount=type=cache,target=/root/.npm \
    npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# Only what runs: each workspace's package.json (workspace links resolve through it), its
# compiled dist/ (tests compiled alongside are dropped) and any nested node_modules; plus the
# console's static build, which the gateway serves from gateway/console/dist.
FROM build AS dist
COPY --from=prod-deps /app /prod
RUN set -eu; mkdir -p /out; \
    for ws in packages/* services/* gateway; do \
      [ -d "$ws/dist" ] || continue; \
      mkdir -p "/out/$ws"; cp "$ws/package.json" "/out/$ws/"; \
      if [ -d "$ws/dist/src" ]; then mkdir -p "/out/$ws/dist"; cp -r "$ws/dist/src" "/out/$ws/dist/"; \
      else cp -r "$ws/dist" "/out/$ws/"; fi; \
      [ -d "/prod/$ws/node_modules" ] && cp -r "/prod/$ws/node_modules" "/out/$ws/" || true; \
    done; \
    if [ -d gateway/console/dist ]; then mkdir -p /out/gateway/console; cp -r gateway/console/dist /out/gateway/console/; fi; \
    find /out -name '*.tsbuildinfo' -delete

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=prod-deps /app/node_modules node_modules
COPY --from=prod-deps /app/package.json package.json
COPY --from=dist /out/ ./
COPY deploy/config deploy/config
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.mjs deploy/docker/
# Service tokens minted at start-up are shared through this directory (docker compose volume,
# Kubernetes emptyDir); owned by the runtime user so a fresh volume is writable.
RUN mkdir -p /var/run/ensemble && chown node:node /var/run/ensemble \
    && chmod 0755 deploy/docker/entrypoint.sh
USER node
ENTRYPOINT ["/app/deploy/docker/entrypoint.sh"]
CMD ["gateway"]
