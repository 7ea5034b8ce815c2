// Positions with P&L: GET /api/v1/portfolio, loaded again when one of the user's orders
// fills; the last price (and so the unrealised P&L) moves live with the trade stream.

import { api } from "../api";
import { h, head, labelled, message, rupees, signed } from "../dom";
import { live } from "../live";
import { problem } from "../forms";
import type { Screen } from "../screen";
import type { Portfolio, Position } from "../types";

const COLUMNS = ["Symbol", "Qty", "Avg cost", "Last", "Unrealised P&L", "Day P&L", "Realised P&L"];

function cells(p: Position): HTMLTableCellElement[] {
  return [
    h("td", { class: "num qty" }, p.quantity),
    h("td", { class: "num" }, rupees(p.avgPrice)),
    h("td", { class: "num" }, rupees(p.currentPrice)),
    h("td", { class: "num pnl" }, signed(p.pnl)),
    h("td", { class: "num" }, signed(p.dayPnl)),
    h("td", { class: "num" }, signed(p.realisedPnl)),
  ];
}

function row(p: Position): HTMLTableRowElement {
  return labelled(h("tr", { "data-symbol": p.symbol },
    h("th", { scope: "row" }, h("a", { href: `/symbol/${p.symbol}`, "data-link": true }, p.symbol)),
    ...cells(p)), COLUMNS);
}

export const positions: Screen = {
  path: "/positions",
  title: "Positions",
  nav: "Positions",
  access: "user",
  render(root) {
    const summary = h("dl", { class: "facts", id: "funds-summary" });
    const body = h("tbody", {});
    const error = message();
    root.append(h("h1", {}, "Positions"), summary, error,
      h("table", { class: "grid cards", id: "positions" },
        h("caption", { class: "visually-hidden" }, "Positions with profit and loss"),
        head(COLUMNS, COLUMNS.slice(1)),
        body));
    let portfolio: Portfolio | null = null;
    const subscribed = new Map<string, () => void>();

    const draw = () => {
      if (!portfolio) return;
      summary.replaceChildren(
        h("dt", {}, "Cash"), h("dd", {}, `₹${rupees(portfolio.cash)}`),
        h("dt", {}, "Blocked for orders"), h("dd", {}, `₹${rupees(portfolio.blockedCash)}`),
        h("dt", {}, "Day P&L"), h("dd", {}, signed(portfolio.dayPnl)),
        h("dt", {}, "Realised P&L"), h("dd", {}, signed(portfolio.realisedPnl)));
      const open = portfolio.positions.filter((p) => p.quantity !== 0);
      body.replaceChildren(...(open.length ? open.map(row) : [h("tr", {}, h("td", { colspan: 7 }, "No positions."))]));
      for (const p of open) if (!subscribed.has(p.symbol)) subscribed.set(p.symbol, live.subscribe("trades", p.symbol));
    };
    let loading: Promise<void> | null = null;
    const load = () => {
      loading ??= api<Portfolio>("GET", "/api/v1/portfolio")
        .then((answer) => ((portfolio = answer), draw()), (e) => void (error.textContent = problem(e)))
        .finally(() => (loading = null));
    };
    const off = [
      live.on("order", (update) => {
        if (update.filledQty > 0) load();
      }),
      live.on("resync", load),
      live.on("trade", (trade) => {
        const p = portfolio?.positions.find((x) => x.symbol === trade.symbol);
        if (!p) return;
        p.currentPrice = trade.price;
        p.pnl = ((Number(trade.price) - Number(p.avgPrice)) * p.quantity).toFixed(2);
        // the cells, not the row: a keyboard user's focus on its link stays
        const shown = body.querySelector<HTMLTableRowElement>(`tr[data-symbol="${p.symbol}"]`);
        if (!shown) return;
        const fresh = row(p);
        shown.querySelectorAll("td").forEach((cell, i) => cell.replaceWith(fresh.cells[i + 1]));
      }),
    ];
    load();
    return () => {
      off.forEach((f) => f());
      for (const unsubscribe of subscribed.values()) unsubscribe();
    };
  },
};
