// The console is a static bundle served by the gateway at `/` (gateway/src/console.ts). Assets
// get content-hashed names under /assets/, which the gateway caches for a year; index.html is
// never cached. `npm run dev -w gateway/console` proxies
// API calls to the gateway `npm start` runs on :8080.
import { defineConfig } from "vite";

const gateway = "http://127.0.0.1:8080";

export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1500 },
  server: {
    proxy: { "/ensemble.": gateway, "/health": gateway },
  },
});
