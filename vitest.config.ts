import { defineConfig } from "vitest/config";

// One runner for the whole repository. The global setup starts real NATS and a real
// MongoDB-wire server once per run (or takes NATS_URL / MONGODB_URL from the environment);
// each test gets its own database and stream names from the test kit.
export default defineConfig({
  test: {
    include: [
      "packages/*/src/**/*.test.ts",
      "packages/*/test/**/*.test.ts",
      "services/*/src/**/*.test.ts",
      "services/*/test/**/*.test.ts",
      "gateway/**/*.test.ts",
      "scripts/**/*.test.ts",
      "deploy/test/**/*.test.ts",
    ],
    exclude: ["**/node_modules/**", "**/dist/**"],
    globalSetup: ["./packages/testkit/dist/global-setup.js"],
    testTimeout: 30_000,
    hookTimeout: 240_000,
    pool: "forks",
  },
});
