// My orders: open, filled, and cancelled (with rejected and expired), kept live by the
// ORDER_UPDATE stream; an open order can be modified (PATCH: price, total quantity,
// trigger, disclosed quantity) or cancelled (DELETE).

import { api } from "../api";
import { field, h, head, labelled, message, rupees, time } from "../dom";
import { keyedSubmit, problem } from "../forms";
import { live } from "../live";
import type { Screen } from "../screen";
import { toast } from "../toast";
import type { Order, OrderUpdate } from "../types";

const COLUMNS = ["Order", "Time", "Symbol", "Side", "Type", "Qty", "Filled", "Price", "Trigger", "Avg", "Status", "Actions"];
const OPEN = new Set(["AMO_PENDING", "PENDING", "TRIGGER_PENDING", "OPEN", "PARTIALLY_FILLED"]);
const TABS: [string, string, (o: Order) => boolean][] = [
  ["open", "Open", (o) => OPEN.has(o.status)],
  ["filled", "Filled", (o) => o.status === "FILLED"],
  ["closed", "Cancelled and rejected", (o) => !OPEN.has(o.status) && o.status !== "FILLED"],
];

function fromUpdate(update: OrderUpdate, known: Order | undefined): Order {
  return {
    ...(known ?? { timeInForce: "", createdAt: update.updatedAt }),
    orderId: update.orderId,
    symbol: update.symbol,
    side: update.side,
    type: update.orderType,
    price: update.price,
    quantity: update.quantity,
    filledQty: update.filledQty,
    avgPrice: update.avgPrice,
    status: update.status,
    rejectReason: update.rejectReason,
    updatedAt: update.updatedAt,
    triggerPrice: update.triggerPrice,
    disclosedQuantity: update.disclosedQuantity,
  };
}

function modifyForm(order: Order, done: () => void): HTMLElement {
  const price = h("input", { name: "price", type: "number", step: "any", min: 0, inputmode: "decimal" });
  const quantity = h("input", { name: "quantity", type: "number", step: 1, min: order.filledQty + 1, inputmode: "numeric" });
  const trigger = h("input", { name: "triggerPrice", type: "number", step: "any", min: 0, inputmode: "decimal" });
  price.value = order.price ?? "";
  quantity.value = String(order.quantity);
  trigger.value = order.triggerPrice ?? "";
  const error = message();
  const form = h("form", { class: "modify", "aria-label": `Modify order ${order.orderId}` },
    order.price !== null ? field("New price (₹)", price) : null,
    field("New total quantity", quantity),
    order.status === "TRIGGER_PENDING" ? field("New trigger (₹)", trigger) : null,
    error,
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save"), h("button", { type: "button", class: "secondary", onclick: done }, "Close")));
  keyedSubmit(form, "web-modify", error, async (key) => {
    const body: Record<string, unknown> = { idempotencyKey: key };
    if (order.price !== null && price.value !== order.price) body.price = price.value;
    if (Number(quantity.value) !== order.quantity) body.quantity = Number(quantity.value);
    if (order.status === "TRIGGER_PENDING" && trigger.value !== order.triggerPrice) body.triggerPrice = trigger.value;
    await api("PATCH", `/api/v1/orders/${order.orderId}`, body);
    toast(`Order ${order.orderId}: modify sent`);
    done();
  });
  return form;
}

export const orders: Screen = {
  path: "/orders",
  title: "My orders",
  nav: "Orders",
  access: "user",
  render(root) {
    const known = new Map<number, Order>();
    let tab = "open";
    let editing: number | null = null;
    const body = h("tbody", {});
    const error = message();
    const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Which orders" });
    root.append(h("h1", {}, "My orders"), tabs, error,
      h("table", { class: "grid cards", id: "orders" },
        h("caption", { class: "visually-hidden" }, "Orders"),
        head(COLUMNS, ["Qty", "Filled", "Price", "Trigger", "Avg"]),
        body));

    const cancel = async (order: Order) => {
      error.textContent = "";
      try {
        await api("DELETE", `/api/v1/orders/${order.orderId}`);
        toast(`Order ${order.orderId}: cancel sent`);
      } catch (e) {
        error.textContent = problem(e);
      }
    };
    const draw = () => {
      tabs.replaceChildren(...TABS.map(([key, label, keep]) => {
        const count = [...known.values()].filter(keep).length;
        return h("button", { type: "button", "aria-pressed": String(key === tab), onclick: () => ((tab = key), draw()) }, `${label} (${count})`);
      }));
      const keep = TABS.find(([key]) => key === tab)![2];
      const shown = [...known.values()].filter(keep).sort((a, b) => b.orderId - a.orderId);
      const rows: HTMLElement[] = [];
      for (const order of shown) {
        const open = OPEN.has(order.status);
        rows.push(labelled(h("tr", { "data-order": order.orderId, "data-status": order.status },
          h("td", {}, order.orderId),
          h("td", {}, time(order.createdAt)),
          h("td", {}, h("a", { href: `/symbol/${order.symbol}`, "data-link": true }, order.symbol)),
          h("td", { class: order.side === "BUY" ? "gain" : "loss" }, order.side),
          h("td", {}, order.type),
          h("td", { class: "num" }, order.quantity),
          h("td", { class: "num" }, order.filledQty),
          h("td", { class: "num" }, rupees(order.price)),
          h("td", { class: "num" }, rupees(order.triggerPrice)),
          h("td", { class: "num" }, rupees(order.avgPrice)),
          h("td", { class: "status" }, order.status.replace(/_/g, " "), order.rejectReason ? ` (${order.rejectReason})` : ""),
          h("td", {}, open ? h("span", { class: "row-actions" },
            order.type === "LIMIT" || order.type === "STOP_LIMIT"
              ? h("button", { type: "button", class: "link", "aria-label": `Modify order ${order.orderId}`, onclick: () => ((editing = order.orderId), draw()) }, "Modify")
              : null,
            h("button", { type: "button", class: "link danger", "aria-label": `Cancel order ${order.orderId}`, onclick: () => void cancel(order) }, "Cancel")) : null)), COLUMNS));
        if (editing === order.orderId && open) {
          const form = modifyForm(order, () => ((editing = null), draw()));
          rows.push(h("tr", { class: "editing" }, h("td", { colspan: 12 }, form)));
          queueMicrotask(() => form.querySelector("input")?.focus());
        }
      }
      if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 12 }, "No orders here.")));
      // a keyboard user's focus on a row's button survives the redraw (when the row does)
      const focused = body.contains(document.activeElement) ? document.activeElement?.getAttribute("aria-label") : null;
      body.replaceChildren(...rows);
      if (focused) body.querySelector<HTMLElement>(`[aria-label="${focused}"]`)?.focus();
    };
    const load = async () => {
      try {
        const page = await api<{ orders: Order[] }>("GET", "/api/v1/orders?pageSize=200");
        for (const order of page.orders) known.set(order.orderId, order);
        draw();
      } catch (e) {
        error.textContent = problem(e);
      }
    };
    const off = [
      live.on("order", (update) => {
        known.set(update.orderId, fromUpdate(update, known.get(update.orderId)));
        if (editing === update.orderId) return; // keep the open form; the row shows the change when it closes
        draw();
      }),
      live.on("resync", () => void load()),
    ];
    draw();
    void load();
    return () => off.forEach((f) => f());
  },
};
