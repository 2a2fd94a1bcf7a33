import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// Built into the Python package, which serves it under /ui (`isthmus api serve`).
export default defineConfig({
  plugins: [react()],
  base: "/ui/",
  build: { outDir: "../src/isthmus/api/console", emptyOutDir: true, chunkSizeWarningLimit: 2000 },
});
