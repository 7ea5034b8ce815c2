// Bracket orders (docs/brackets.md): create one (a LIMIT entry with a target and a
// stop-loss, a stop-limit optional), view it (its entry, target legs, stop-loss order),
// exit it (DELETE). The API lists no brackets, so the screen keeps the ids of the user's
// brackets made or looked up in this browser; each is read again when one of its orders
// changes.

import { ApiError, api, claims } from "../api";
import { field, h, message, rupees, select } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import { toast } from "../toast";
import { coalesced, keyedSubmit, problem, shown } from "../forms";

interface Bracket {
  bracketId: number;
  symbol: string;
  side: "BUY" | "SELL";
  quantity: number;
  price: string;
  target: string;
  stopLoss: string;
  stopLimit?: string;
  status: string;
  entryOrderId: number;
  targets: { quantity: number; orderId?: number; failure?: { code: string; message: string } }[];
  stopTriggeredPrice?: string;
  stopOrderId?: number;
  stopQuantity?: number;
  failure?: { code: string; message: string };
}

const KEPT = 50; // bracket ids remembered per user
const ENDED = new Set(["DONE", "STOPPED", "CANCELLED", "FAILED", "EXPIRED"]);

function store(): string {
  return `brokercore.brackets.${claims()?.sub ?? ""}`;
}

function remembered(): number[] {
  return JSON.parse(localStorage.getItem(store()) ?? "[]") as number[];
}

function remember(id: number): void {
  localStorage.setItem(store(), JSON.stringify([id, ...remembered().filter((x) => x !== id)].slice(0, KEPT)));
}

function forget(id: number): void {
  localStorage.setItem(store(), JSON.stringify(remembered().filter((x) => x !== id)));
}

function money(label: string, name: string, required = true): [HTMLElement, HTMLInputElement] {
  const input = h("input", { name, type: "text", inputmode: "decimal", required, autocomplete: "off" });
  return [field(label, input), input];
}

export const brackets: Screen = {
  path: "/brackets",
  title: "Bracket orders",
  nav: "Brackets",
  access: "user",
  render(root) {
    const known = new Map<number, Bracket>();
    const error = message();
    const body = h("tbody", {});

    // The new bracket's form.
    const symbol = h("input", { name: "symbol", type: "text", required: true, autocomplete: "off", style: "text-transform: uppercase" });
    const side = select("side", [["BUY", "Buy (target above, stop-loss below)"], ["SELL", "Sell short (target below, stop-loss above)"]], "BUY");
    const quantity = h("input", { name: "quantity", type: "number", min: 1, step: 1, required: true, inputmode: "numeric" });
    const [priceField, price] = money("Entry limit price (₹)", "price");
    const [targetField, target] = money("Target (₹)", "target");
    const [stopField, stop] = money("Stop-loss trigger (₹)", "stopLoss");
    const [stopLimitField, stopLimit] = money("Stop-loss limit (₹, optional: else at market)", "stopLimit", false);
    const createError = message();
    const form = h("form", { class: "card", "aria-labelledby": "bracket-new" },
      h("h2", { id: "bracket-new" }, "New bracket order"),
      h("div", { class: "modify" }, field("Symbol", symbol), field("Side", side), field("Quantity", quantity), priceField, targetField, stopField, stopLimitField),
      createError, h("button", { type: "submit" }, "Place bracket"));
    keyedSubmit(form, "web-bracket", createError, async (key) => {
      const made = await api<Bracket>("POST", "/api/v1/brackets", {
        symbol: symbol.value.trim().toUpperCase(), side: side.value, quantity: Number(quantity.value),
        price: price.value.trim(), target: target.value.trim(), stopLoss: stop.value.trim(),
        ...(stopLimit.value.trim() ? { stopLimit: stopLimit.value.trim() } : {}),
        idempotencyKey: key,
      });
      remember(made.bracketId);
      known.set(made.bracketId, made);
      draw();
      toast(`Bracket ${made.bracketId}: entry order ${made.entryOrderId} placed`);
    });

    // Look one up by id (one made elsewhere: another browser, the API).
    const lookupId = h("input", { name: "bracketId", type: "number", min: 1, step: 1, required: true, inputmode: "numeric" });
    const lookup = h("form", { class: "inline", "aria-label": "Find a bracket" }, field("Bracket id", lookupId), h("button", { type: "submit", class: "secondary" }, "Find"));
    lookup.addEventListener("submit", (event) => {
      event.preventDefault();
      void shown(error, async () => {
        const found = await api<Bracket>("GET", `/api/v1/brackets/${Number(lookupId.value)}`);
        remember(found.bracketId);
        known.set(found.bracketId, found);
        lookupId.value = "";
        draw();
      });
    });

    const exit = (b: Bracket) => shown(error, async () => {
      known.set(b.bracketId, await api<Bracket>("DELETE", `/api/v1/brackets/${b.bracketId}`));
      toast(`Bracket ${b.bracketId}: exiting`);
      draw();
    });
    const order = (id: number | undefined) => (id ? h("a", { href: "/orders", "data-link": true }, id) : "—");
    function draw(): void {
      const sorted = [...known.values()].sort((a, b) => b.bracketId - a.bracketId);
      body.replaceChildren(...(sorted.length ? sorted.map((b) => h("tr", { "data-bracket": b.bracketId, "data-status": b.status },
        h("td", {}, b.bracketId),
        h("td", {}, b.symbol),
        h("td", { class: b.side === "BUY" ? "gain" : "loss" }, b.side),
        h("td", { class: "num" }, b.quantity),
        h("td", { class: "num" }, rupees(b.price)),
        h("td", { class: "num" }, rupees(b.target)),
        h("td", { class: "num" }, rupees(b.stopLoss), b.stopLimit ? ` (limit ${rupees(b.stopLimit)})` : ""),
        h("td", {}, order(b.entryOrderId)),
        h("td", {}, ...(b.targets.length ? b.targets.map((t) => h("div", {}, `${t.quantity} → `, t.failure ? t.failure.message : order(t.orderId))) : ["—"])),
        h("td", {}, ...(b.stopOrderId ? [`${b.stopQuantity} → `, order(b.stopOrderId)] : [b.stopTriggeredPrice ? `met at ₹${rupees(b.stopTriggeredPrice)}` : b.status === "ACTIVE" ? "watching" : "—"])),
        h("td", { class: "status" }, b.status, b.failure ? ` (${b.failure.message})` : ""),
        h("td", {}, b.status === "ACTIVE"
          ? h("button", { type: "button", class: "link danger", "aria-label": `Exit bracket ${b.bracketId}`, onclick: () => void exit(b) }, "Exit")
          : h("button", { type: "button", class: "link", "aria-label": `Remove bracket ${b.bracketId} from this list`, onclick: () => (forget(b.bracketId), known.delete(b.bracketId), draw()) }, "Hide"))))
        : [h("tr", {}, h("td", { colspan: 12 }, "No brackets here yet: place one above, or find one by its id."))]));
    }
    const load = async () => {
      const ids = remembered();
      const answers = await Promise.allSettled(ids.map((id) => api<Bracket>("GET", `/api/v1/brackets/${id}`)));
      let failed: unknown = null;
      answers.forEach((answer, i) => {
        if (answer.status === "fulfilled") known.set(answer.value.bracketId, answer.value);
        else if (answer.reason instanceof ApiError && answer.reason.code === "BRACKET_NOT_FOUND") forget(ids[i]); // not this user's
        else failed = answer.reason;
      });
      error.textContent = failed ? problem(failed) : "";
      draw();
    };
    const reload = coalesced(load);

    root.append(h("h1", {}, "Bracket orders"),
      h("p", {}, "An entry order with a target and a stop-loss: as the entry fills, a target order follows for what filled; when a trade meets the stop-loss, the rest is sold (a short: bought back)."),
      form,
      h("section", { "aria-labelledby": "bracket-list", style: "margin-top: 16px" },
        h("h2", { id: "bracket-list" }, "Your brackets"), lookup, error,
        h("div", { class: "grid-wrap" },
          h("table", { class: "grid", id: "brackets" },
            h("caption", { class: "visually-hidden" }, "Brackets"),
            h("thead", {}, h("tr", {}, ...["Bracket", "Symbol", "Side", "Qty", "Entry (₹)", "Target (₹)", "Stop-loss (₹)", "Entry order", "Target legs", "Stop-loss order", "Status", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
            body))));
    const ours = (orderId: number) => [...known.values()].some((b) => b.entryOrderId === orderId || b.stopOrderId === orderId || b.targets.some((t) => t.orderId === orderId));
    const watching = (symbol: string) => [...known.values()].some((b) => b.symbol === symbol && !ENDED.has(b.status));
    const off = live.on("order", (update) => {
      // A new leg is an order of a live bracket's symbol: a change on that symbol may be one.
      if (ours(update.orderId) || watching(update.symbol)) reload();
    });
    reload();
    return off;
  },
};
