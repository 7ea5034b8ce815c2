// The web app's build: every *.html page of web/ (index.html, the app; any other page is
// an entry of its own) and what it imports, into dist/ (served by the edge at /).
// `npm run dev` serves it with hot reload and sends /api/ and /ws/ to the edge of
// `make up` (BROKERCORE_EDGE_URL, default http://127.0.0.1:8080).
import { readdirSync } from "node:fs";
import { resolve } from "node:path";
import { defineConfig } from "vite";

const edge = process.env.BROKERCORE_EDGE_URL ?? "http://127.0.0.1:8080";
const pages = readdirSync(import.meta.dirname).filter((name) => name.endsWith(".html"));

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: true,
    rollupOptions: { input: Object.fromEntries(pages.map((name) => [name.slice(0, -5), resolve(import.meta.dirname, name)])) },
  },
  server: {
    proxy: {
      "/api": edge,
      "/ws": { target: edge.replace(/^http/, "ws"), ws: true },
    },
  },
});
