// Short-lived messages in the page's live region (#toasts): read out, then gone.

import { h } from "./dom";

export function toast(text: string, kind: "info" | "error" | "fill" = "info", ms = 6000): void {
  const region = document.getElementById("toasts");
  if (!region) return;
  const close = h("button", { type: "button", class: "close", "aria-label": "Dismiss" }, "×");
  const item = h("div", { class: `toast ${kind}` }, h("span", {}, text), close);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  region.append(item);
  setTimeout(remove, ms);
}
