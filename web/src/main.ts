// The app's shell: the navigation, the connection state, toasts for the user's
// notifications, the WebSocket while signed in, and the router.

import "./styles.css";
import { api, onAuthChange, setTokens, signedIn, tokens } from "./api";
import { h } from "./dom";
import { live, type LiveState } from "./live";
import { notePhase } from "./phase";
import { allowed, navigate, startRouter } from "./router";
import { routes } from "./routes";
import { toast } from "./toast";
import type { Instrument } from "./types";

const STATES: Record<LiveState, string> = {
  offline: "",
  connecting: "Connecting…",
  live: "● Live",
  reconnecting: "Reconnecting…",
};

function renderNav(): void {
  const nav = document.getElementById("nav")!;
  const links = routes.filter((screen) => screen.nav && allowed(screen) && !(signedIn() && screen.access === "public"));
  const list = h("ul", {}, ...links.map((screen) => h("li", {}, h("a", { href: screen.path, "data-link": true }, screen.nav!))));
  if (signedIn()) list.append(h("li", {}, h("button", { type: "button", class: "link", onclick: logout }, "Log out")));
  nav.replaceChildren(list);
}

async function logout(): Promise<void> {
  try {
    if (tokens()) await api("POST", "/api/v1/auth/logout");
  } finally {
    setTokens(null);
  }
}

/** Once signed in: the socket, and every instrument's phase for the banner. */
async function signedInNow(): Promise<void> {
  live.start();
  try {
    const list = await api<{ instruments: Instrument[] }>("GET", "/api/v1/instruments");
    for (const instrument of list.instruments) notePhase(instrument.symbol, { phase: instrument.phase });
  } catch {
    // the banner waits for the first BOOK frame instead
  }
}

live.on("state", (state) => {
  const element = document.getElementById("connection")!;
  element.textContent = STATES[state];
  element.dataset.state = state;
});
live.on("book", (book) => notePhase(book.symbol, book));
live.on("notification", (note) => toast(`${note.title}: ${note.body}`, note.kind === "FILL" ? "fill" : "info"));

onAuthChange((now) => {
  renderNav();
  if (now) void signedInNow();
  else {
    live.stop();
    navigate("/login", true);
  }
});

/** Below 720px the navigation folds behind the Menu button; following a link folds it. */
function foldableNav(): void {
  const button = document.getElementById("menu")!;
  const nav = document.getElementById("nav")!;
  const fold = (open: boolean) => {
    nav.classList.toggle("open", open);
    button.setAttribute("aria-expanded", String(open));
  };
  button.addEventListener("click", () => fold(!nav.classList.contains("open")));
  nav.addEventListener("click", (event) => {
    if ((event.target as Element).closest("a, button")) fold(false);
  });
}

foldableNav();
renderNav();
if (signedIn()) void signedInNow();
startRouter();
