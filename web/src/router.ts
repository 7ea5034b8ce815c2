// A tiny history router: the paths of src/routes.ts, links marked data-link, access rules,
// and focus moved to the new screen's heading for keyboard and screen-reader users.

import { claims, signedIn } from "./api";
import { h } from "./dom";
import { routes } from "./routes";
import type { Params, Screen } from "./screen";

let leave: (() => void) | void;

function match(screen: Screen, path: string): Params | null {
  const want = screen.path.split("/");
  const got = path.split("/");
  if (want.length !== got.length) return null;
  const params: Params = {};
  for (let i = 0; i < want.length; i++) {
    if (want[i].startsWith(":")) params[want[i].slice(1)] = decodeURIComponent(got[i]);
    else if (want[i] !== got[i]) return null;
  }
  return params;
}

export function allowed(screen: Screen): boolean {
  if (screen.access === "public") return true;
  if (!signedIn()) return false;
  return screen.access === "user" || (claims()?.roles ?? []).includes("operator");
}

export function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  show();
}

/** Render the screen of the current path (sign-in first where it needs a user). */
export function show(): void {
  if (location.pathname === "/") {
    navigate(signedIn() ? "/watchlist" : "/login", true);
    return;
  }
  const path = location.pathname;
  for (const screen of routes) {
    const params = match(screen, path);
    if (!params) continue;
    if (!allowed(screen)) {
      if (!signedIn()) {
        navigate(`/login?next=${encodeURIComponent(location.pathname)}`, true);
        return;
      }
      break;
    }
    open(screen, params);
    return;
  }
  open({ path, title: "Not found", access: "public", render: (root) => root.append(h("h1", {}, "Not found"), h("p", {}, "There is no such page here.")) }, {});
}

function open(screen: Screen, params: Params): void {
  if (typeof leave === "function") leave();
  const main = document.getElementById("main")!;
  main.replaceChildren();
  document.title = `${screen.title} · brokercore`;
  leave = screen.render(main, params);
  for (const link of document.querySelectorAll<HTMLAnchorElement>("#nav a")) {
    if (link.pathname === location.pathname) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

/** Route clicks on a[data-link] and the back/forward buttons. */
export function startRouter(): void {
  document.addEventListener("click", (event) => {
    const link = (event.target as Element).closest?.("a[data-link]") as HTMLAnchorElement | null;
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || link.origin !== location.origin) return;
    event.preventDefault();
    navigate(link.pathname + link.search);
  });
  addEventListener("popstate", show);
  show();
}
