// The order ticket: buy/sell, limit/market/stop/stop-limit, quantity, price, trigger,
// disclosed quantity, validity and AMO. "Review" asks the margin preview
// (POST /api/v1/margins/orders) what the order would block, or why it would be refused;
// only then can it be sent (POST /api/v1/orders). Any change asks for a new review.

import { api, idempotencyKey } from "./api";
import { field, h, message, rupees, select } from "./dom";
import { problem } from "./forms";
import { toast } from "./toast";
import type { Instrument } from "./types";

interface MarginAnswer {
  orders: { accepted: boolean; blocks?: { cash?: string; shares?: number; symbol?: string }; error?: { code: string; message: string } }[];
}

export function orderTicket(symbol: string, instrument: Promise<Instrument | null>): HTMLElement {
  const buy = h("input", { type: "radio", name: "side", value: "BUY", id: "side-buy", checked: true });
  const sell = h("input", { type: "radio", name: "side", value: "SELL", id: "side-sell" });
  const sides = h("fieldset", { class: "sides" }, h("legend", {}, "Side"),
    buy, h("label", { for: "side-buy", class: "buy" }, "Buy"), sell, h("label", { for: "side-sell", class: "sell" }, "Sell"));
  const type = select("type", [["LIMIT", "Limit"], ["MARKET", "Market"], ["STOP", "Stop (stop-loss market)"], ["STOP_LIMIT", "Stop-limit"]], "LIMIT");
  const quantity = h("input", { name: "quantity", type: "number", min: 1, step: 1, required: true, inputmode: "numeric" });
  const price = h("input", { name: "price", type: "number", min: 0, step: "any", inputmode: "decimal" });
  const trigger = h("input", { name: "triggerPrice", type: "number", min: 0, step: "any", inputmode: "decimal" });
  const disclosed = h("input", { name: "disclosedQuantity", type: "number", min: 1, step: 1, inputmode: "numeric" });
  const validity = select("timeInForce", [["DAY", "Day"], ["GTC", "Good till cancelled"], ["IOC", "Immediate or cancel"], ["FOK", "Fill or kill"]], "DAY");
  const amo = h("input", { type: "checkbox", name: "amo", id: "ticket-amo" });
  const priceField = field("Limit price (₹)", price);
  const triggerField = field("Trigger price (₹)", trigger);
  const disclosedField = field("Disclosed quantity (optional)", disclosed, "Show only this many at a time (iceberg)");
  const preview = h("p", { class: "preview", role: "status", "aria-live": "polite", id: "margin-preview" });
  const error = message();
  const review = h("button", { type: "button", class: "secondary" }, "Review");
  const send = h("button", { type: "submit", disabled: true }, "Place order");
  const form = h("form", { class: "card ticket", "aria-labelledby": "ticket-title" },
    h("h2", { id: "ticket-title" }, `Order ${symbol}`),
    sides,
    field("Order type", type),
    field("Quantity (shares)", quantity),
    priceField,
    triggerField,
    disclosedField,
    field("Validity", validity),
    h("div", { class: "check" }, amo, h("label", { for: "ticket-amo" }, "After-market order (sent at the next pre-open)")),
    preview,
    error,
    h("div", { class: "actions" }, review, send),
  );

  void instrument.then((found) => {
    if (!found) return;
    price.step = trigger.step = found.tickSize;
    quantity.step = quantity.min = String(found.lotSize);
    quantity.value ||= String(found.lotSize);
  });

  const side = () => (sell.checked ? "SELL" : "BUY");
  const layout = () => {
    const kind = type.value;
    priceField.hidden = !(kind === "LIMIT" || kind === "STOP_LIMIT");
    triggerField.hidden = !(kind === "STOP" || kind === "STOP_LIMIT");
    disclosedField.hidden = priceField.hidden;
    send.textContent = `Place ${side() === "BUY" ? "buy" : "sell"} order`;
    send.className = side() === "BUY" ? "buy" : "sell";
  };
  const body = () => {
    const order: Record<string, unknown> = { symbol, side: side(), type: type.value, quantity: Number(quantity.value), timeInForce: validity.value };
    if (!priceField.hidden) order.price = price.value;
    if (!triggerField.hidden) order.triggerPrice = trigger.value;
    if (!disclosedField.hidden && disclosed.value) order.disclosedQuantity = Number(disclosed.value);
    if (amo.checked) order.amo = true;
    return order;
  };
  let key: string | null = null; // the order's idempotency key: kept until an answer comes
  const stale = () => {
    key = null;
    send.disabled = true;
    preview.textContent = "";
    error.textContent = "";
    layout();
  };
  form.addEventListener("input", stale);
  form.addEventListener("change", stale);
  layout();

  review.addEventListener("click", async () => {
    if (!form.reportValidity()) return;
    error.textContent = "";
    try {
      const answer = await api<MarginAnswer>("POST", "/api/v1/margins/orders", body());
      const margin = answer.orders[0];
      if (!margin.accepted) {
        preview.textContent = "";
        error.textContent = `Would be refused: ${margin.error?.message ?? "unknown reason"}`;
        return;
      }
      const blocks = margin.blocks ?? {};
      preview.textContent = blocks.cash !== undefined ? `Blocks ₹${rupees(blocks.cash)} of your cash` : `Blocks ${blocks.shares} ${blocks.symbol} shares`;
      send.disabled = false;
      send.focus();
    } catch (e) {
      error.textContent = problem(e);
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    send.disabled = true;
    try {
      key ??= idempotencyKey("web"); // a retry after a lost answer is the same order, never a second
      const placed = await api<{ orderId: number; status: string }>("POST", "/api/v1/orders", { ...body(), idempotencyKey: key });
      key = null;
      toast(`Order ${placed.orderId} sent: ${side()} ${quantity.value} ${symbol} (${placed.status})`);
      preview.textContent = `Order ${placed.orderId} sent (${placed.status})`;
    } catch (e) {
      error.textContent = problem(e);
    }
  });
  return form;
}
