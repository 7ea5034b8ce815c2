// The API reference at /api/docs: Redoc (from npm, its self-contained bundle served by the
// edge like the app's own files: nothing is loaded from another origin) rendering the
// OpenAPI document the query service generates (/api/v1/openapi.json).

import redoc from "redoc/bundles/redoc.standalone.js?url";

interface RedocGlobal {
  init(specUrl: string, options: Record<string, unknown>, element: HTMLElement, callback?: (error?: unknown) => void): void;
}

const element = document.getElementById("reference")!;
const script = document.createElement("script");
script.src = redoc;
script.onload = () => {
  const { Redoc } = window as unknown as { Redoc: RedocGlobal };
  Redoc.init("/api/v1/openapi.json", { hideDownloadButton: false, expandResponses: "200,201,202", sortPropsAlphabetically: false }, element, (error) => {
    if (error) element.textContent = `The API reference could not be shown: ${String(error)}`;
  });
};
script.onerror = () => (element.textContent = "The API reference's script could not be loaded.");
document.head.append(script);
