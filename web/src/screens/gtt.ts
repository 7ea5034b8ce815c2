// GTT triggers (docs/gtt.md): create a SINGLE (one leg) or an OCO (a stop-loss leg "<="
// below a target leg ">="), list them by status, modify an ACTIVE one's legs and expiry
// (PATCH), delete it (DELETE). The list is read again when a GTT notification arrives
// (triggered, failed, expired).

import { api } from "../api";
import { field, h, message, rupees, scrolling, select, time } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import { toast } from "../toast";
import { coalesced, keyedSubmit, shown } from "../forms";

type Condition = ">=" | "<=";

interface Leg {
  condition: Condition;
  triggerPrice: string;
  order: { side: "BUY" | "SELL"; type: "LIMIT" | "MARKET"; quantity: number; price?: string };
  status?: string;
}

interface Gtt {
  gttId: number;
  symbol: string;
  kind: "SINGLE" | "OCO";
  status: string;
  legs: Leg[];
  expiresAt: string;
  triggeredAt?: string;
  triggeredPrice?: string;
  orderId?: number;
  failure?: { code: string; message: string };
}

const STATUSES = ["ACTIVE", "TRIGGERED", "CANCELLED", "EXPIRED", "FAILED"];

/** One leg's controls; ``fixed``: the condition an OCO's leg must have. */
function legEditor(title: string, leg: Leg | undefined, fixed?: Condition): { element: HTMLElement; value: () => Leg } {
  const condition = select("condition", [[">=", "at or above (>=)"], ["<=", "at or below (<=)"]], fixed ?? leg?.condition ?? ">=");
  condition.disabled = fixed !== undefined;
  const trigger = h("input", { name: "triggerPrice", type: "text", inputmode: "decimal", required: true, value: leg?.triggerPrice ?? "" });
  const side = select("side", [["BUY", "Buy"], ["SELL", "Sell"]], leg?.order.side ?? (fixed ? "SELL" : "BUY"));
  const type = select("type", [["LIMIT", "Limit"], ["MARKET", "Market"]], leg?.order.type ?? "LIMIT");
  const quantity = h("input", { name: "quantity", type: "number", min: 1, step: 1, required: true, inputmode: "numeric", value: leg?.order.quantity ?? "" });
  const price = h("input", { name: "price", type: "text", inputmode: "decimal", value: leg?.order.price ?? "" });
  const priceField = field("Limit price (₹)", price);
  const priceShown = () => {
    priceField.hidden = type.value === "MARKET";
    price.required = type.value === "LIMIT";
  };
  type.addEventListener("change", priceShown);
  priceShown();
  const element = h("fieldset", { class: "modify", style: "border: 1px solid var(--line); border-radius: 6px; margin: 0 0 12px" },
    h("legend", {}, title),
    field("When the last price is", condition), field("Trigger (₹)", trigger),
    field("Side", side), field("Order type", type), field("Quantity", quantity), priceField);
  const value = (): Leg => ({
    condition: condition.value as Condition,
    triggerPrice: trigger.value.trim(),
    order: {
      side: side.value as "BUY" | "SELL",
      type: type.value as "LIMIT" | "MARKET",
      quantity: Number(quantity.value),
      ...(type.value === "LIMIT" ? { price: price.value.trim() } : {}),
    },
  });
  return { element, value };
}

/** The legs' editors of a kind (an OCO: the "<=" leg first, the ">=" one second). */
function legsEditor(kind: string, legs: Leg[] = []): { element: HTMLElement; value: () => Leg[] } {
  const editors = kind === "OCO"
    ? [legEditor("Stop-loss leg", legs[0], "<="), legEditor("Target leg", legs[1], ">=")]
    : [legEditor("Leg", legs[0])];
  return { element: h("div", {}, ...editors.map((e) => e.element)), value: () => editors.map((e) => e.value()) };
}

/** A datetime-local value as an instant with its zone (the API wants one), or undefined. */
function expiry(input: HTMLInputElement): string | undefined {
  return input.value ? new Date(input.value).toISOString() : undefined;
}

function describe(leg: Leg): string {
  const order = `${leg.order.side} ${leg.order.quantity} ${leg.order.type === "LIMIT" ? `at ₹${rupees(leg.order.price)}` : "at market"}`;
  return `${leg.condition} ₹${rupees(leg.triggerPrice)}: ${order}${leg.status && leg.status !== "ACTIVE" ? ` (${leg.status})` : ""}`;
}

export const gtt: Screen = {
  path: "/gtt",
  title: "GTT triggers",
  nav: "GTT",
  access: "user",
  render(root) {
    const error = message();
    const body = h("tbody", {});
    const filter = select("status", [["", "All"], ...STATUSES.map((s): [string, string] => [s, s])], "ACTIVE");
    let editing: number | null = null;
    let listed: Gtt[] = [];

    // The new GTT's form.
    const symbol = h("input", { name: "symbol", type: "text", required: true, autocomplete: "off", list: "gtt-symbols", style: "text-transform: uppercase" });
    const symbols = h("datalist", { id: "gtt-symbols" });
    const kind = select("kind", [["SINGLE", "Single"], ["OCO", "OCO (stop-loss and target)"]], "SINGLE");
    const expires = h("input", { name: "expiresAt", type: "datetime-local" });
    const createError = message();
    let legs = legsEditor("SINGLE");
    const legsSlot = h("div", {}, legs.element);
    kind.addEventListener("change", () => {
      legs = legsEditor(kind.value);
      legsSlot.replaceChildren(legs.element);
    });
    const form = h("form", { class: "card", "aria-labelledby": "gtt-new" },
      h("h2", { id: "gtt-new" }, "New GTT"),
      h("div", { class: "modify" }, field("Symbol", symbol), field("Kind", kind), field("Expires (optional)", expires, "Default: in a year")),
      symbols, legsSlot, createError,
      h("button", { type: "submit" }, "Create GTT"));
    keyedSubmit(form, "web-gtt", createError, async (key) => {
      const made = await api<Gtt>("POST", "/api/v1/gtt", { symbol: symbol.value.trim().toUpperCase(), kind: kind.value, legs: legs.value(), expiresAt: expiry(expires), idempotencyKey: key });
      toast(`GTT ${made.gttId} on ${made.symbol} created`);
      reload();
    });

    const remove = (g: Gtt) => shown(error, async () => {
      await api("DELETE", `/api/v1/gtt/${g.gttId}`);
      toast(`GTT ${g.gttId} deleted`);
      reload();
    });
    const modifyForm = (g: Gtt): HTMLElement => {
      const editor = legsEditor(g.kind, g.legs);
      const until = h("input", { name: "expiresAt", type: "datetime-local" });
      const problemText = message();
      const close = () => ((editing = null), draw());
      const edit = h("form", { "aria-label": `Modify GTT ${g.gttId}` }, editor.element,
        field("New expiry (optional)", until), problemText,
        h("div", { class: "actions" }, h("button", { type: "submit" }, "Save"), h("button", { type: "button", class: "secondary", onclick: close }, "Close")));
      edit.addEventListener("submit", (event) => {
        event.preventDefault();
        void shown(problemText, async () => {
          await api("PATCH", `/api/v1/gtt/${g.gttId}`, { legs: editor.value(), expiresAt: expiry(until) });
          toast(`GTT ${g.gttId} modified`);
          editing = null;
          reload();
        });
      });
      return edit;
    };
    function draw(): void {
      const rows: HTMLElement[] = [];
      for (const g of listed) {
        const active = g.status === "ACTIVE";
        rows.push(h("tr", { "data-gtt": g.gttId, "data-status": g.status },
          h("td", {}, g.gttId),
          h("td", {}, g.symbol),
          h("td", {}, g.kind),
          h("td", {}, ...g.legs.map((leg) => h("div", {}, describe(leg)))),
          h("td", { class: "status" }, g.status, g.failure ? ` (${g.failure.message})` : ""),
          h("td", {}, g.orderId ? h("a", { href: "/orders", "data-link": true }, g.orderId) : g.triggeredPrice ? `at ₹${rupees(g.triggeredPrice)}` : ""),
          h("td", {}, new Date(g.expiresAt).toLocaleDateString("en-IN"), " ", time(g.expiresAt)),
          h("td", {}, active ? h("span", { class: "row-actions" },
            h("button", { type: "button", class: "link", "aria-label": `Modify GTT ${g.gttId}`, onclick: () => ((editing = g.gttId), draw()) }, "Modify"),
            h("button", { type: "button", class: "link danger", "aria-label": `Delete GTT ${g.gttId}`, onclick: () => void remove(g) }, "Delete")) : null)));
        if (editing === g.gttId && active) {
          const edit = modifyForm(g);
          rows.push(h("tr", { class: "editing" }, h("td", { colspan: 8 }, edit)));
          queueMicrotask(() => edit.querySelector("input")?.focus());
        }
      }
      if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 8 }, "No GTTs here.")));
      body.replaceChildren(...rows);
    }
    const load = () => shown(error, async () => {
      listed = (await api<{ gtts: Gtt[] }>("GET", `/api/v1/gtt${filter.value ? `?status=${filter.value}` : ""}`)).gtts;
      draw();
    });
    const reload = coalesced(load);
    filter.addEventListener("change", reload);

    root.append(h("h1", {}, "GTT triggers"),
      h("p", {}, "A GTT waits, up to a year, for the last price to meet its trigger, then places its order. Nothing is held until it fires."),
      form,
      h("section", { "aria-labelledby": "gtt-list", style: "margin-top: 16px" },
        h("h2", { id: "gtt-list" }, "Your GTTs"),
        h("div", { style: "max-width: 16rem" }, field("Show", filter)), error,
        scrolling(h("table", { class: "grid", id: "gtts" },
          h("caption", { class: "visually-hidden" }, "GTTs"),
          h("thead", {}, h("tr", {}, ...["GTT", "Symbol", "Kind", "Legs", "Status", "Order", "Expires", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
          body))));
    void api<{ instruments: { symbol: string }[] }>("GET", "/api/v1/instruments").then(
      (list) => symbols.replaceChildren(...list.instruments.map((i) => h("option", { value: i.symbol }))),
      () => undefined); // a hint only: any symbol may be typed
    const off = live.on("notification", (note) => {
      if (note.kind.startsWith("GTT_")) reload();
    });
    reload();
    return off;
  },
};
