// Bracket orders (docs/brackets.md): create one (a LIMIT entry with a target and a
// stop-loss, a stop-limit optional), list them (GET /api/v1/brackets, newest first, by
// status, a page at a time), exit one (DELETE). The list is read again when an order of
// one of its brackets, or of a symbol a live one watches, changes.

import { api } from "../api";
import { field, h, message, rupees, scrolling, select } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import { toast } from "../toast";
import { coalesced, keyedSubmit, shown } from "../forms";

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

const PAGE = 50; // brackets a page; a reload reads as many as are shown, up to the API's 200
const STATUSES = ["ACTIVE", "STOPPING", "STOPPED", "EXITING", "CANCELLED", "DONE", "EXPIRED", "FAILED"];
const ENDED = new Set(["DONE", "STOPPED", "CANCELLED", "FAILED", "EXPIRED"]);

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
    let listed: Bracket[] = []; // newest first
    let cursor: string | null = null;
    const error = message();
    const body = h("tbody", {});
    const filter = select("status", [["", "All"], ...STATUSES.map((s): [string, string] => [s, s])], "");
    const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older brackets");

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
      toast(`Bracket ${made.bracketId}: entry order ${made.entryOrderId} placed`);
      reload();
    });

    const exit = (b: Bracket) => shown(error, async () => {
      await api<Bracket>("DELETE", `/api/v1/brackets/${b.bracketId}`);
      toast(`Bracket ${b.bracketId}: exiting`);
      reload();
    });
    const order = (id: number | undefined) => (id ? h("a", { href: "/orders", "data-link": true }, id) : "—");
    function draw(): void {
      more.hidden = cursor === null;
      body.replaceChildren(...(listed.length ? listed.map((b) => h("tr", { "data-bracket": b.bracketId, "data-status": b.status },
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
          : null)))
        : [h("tr", {}, h("td", { colspan: 12 }, filter.value ? `No ${filter.value} brackets.` : "No brackets yet: place one above."))]));
    }
    // The first page (as many as are shown, so a reload keeps the older pages read), or
    // the next one when "Older brackets" asked: one read at a time, through `reload`.
    let older = false;
    const load = () => shown(error, async () => {
      const after = older ? cursor : null;
      older = false;
      const limit = after ? PAGE : Math.min(200, Math.max(PAGE, listed.length));
      const query = new URLSearchParams({ limit: String(limit), ...(filter.value ? { status: filter.value } : {}), ...(after ? { cursor: after } : {}) });
      const answer = await api<{ brackets: Bracket[]; nextCursor: string | null }>("GET", `/api/v1/brackets?${query}`);
      listed = after ? [...listed, ...answer.brackets] : answer.brackets;
      cursor = answer.nextCursor;
      draw();
    });
    const reload = coalesced(load);
    filter.addEventListener("change", () => ((listed = []), reload()));
    more.addEventListener("click", () => ((older = true), reload()));

    root.append(h("h1", {}, "Bracket orders"),
      h("p", {}, "An entry order with a target and a stop-loss: as the entry fills, a target order follows for what filled; when a trade meets the stop-loss, the rest is sold (a short: bought back)."),
      form,
      h("section", { "aria-labelledby": "bracket-list", style: "margin-top: 16px" },
        h("h2", { id: "bracket-list" }, "Your brackets"),
        h("div", { style: "max-width: 16rem" }, field("Show", filter)), error,
        scrolling(h("table", { class: "grid", id: "brackets" },
          h("caption", { class: "visually-hidden" }, "Brackets"),
          h("thead", {}, h("tr", {}, ...["Bracket", "Symbol", "Side", "Qty", "Entry (₹)", "Target (₹)", "Stop-loss (₹)", "Entry order", "Target legs", "Stop-loss order", "Status", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
          body)), more));
    const ours = (orderId: number) => listed.some((b) => b.entryOrderId === orderId || b.stopOrderId === orderId || b.targets.some((t) => t.orderId === orderId));
    const watching = (symbol: string) => listed.some((b) => b.symbol === symbol && !ENDED.has(b.status));
    const off = live.on("order", (update) => {
      // A new leg is an order of a live bracket's symbol: a change on that symbol may be one.
      if (ours(update.orderId) || watching(update.symbol)) reload();
    });
    reload();
    return off;
  },
};
