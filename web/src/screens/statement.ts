// The statement: every movement of the user's cash between two days (deposits,
// withdrawals, buys, sells, fees) with a running balance (GET /api/v1/statement; the
// exchange's days), shown as a table or downloaded as CSV. A fill reads it again.

import { api } from "../api";
import { field, h, message, rupees, scrolling, signed } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import { coalesced, shown } from "../forms";

interface Row {
  time: string;
  type: string;
  symbol: string | null;
  quantity: number | null;
  price: string | null;
  amount: string;
  balance: string;
  reference: string | null;
}

interface Statement {
  from: string;
  to: string;
  timeZone: string;
  openingBalance: string;
  closingBalance: string;
  rows: Row[];
}

export const statement: Screen = {
  path: "/statement",
  title: "Statement",
  nav: "Statement",
  access: "user",
  render(root) {
    // Empty at first: the API's default, the 30 days up to today on the exchange's clock.
    const from = h("input", { name: "from", type: "date" });
    const to = h("input", { name: "to", type: "date" });
    const error = message();
    const facts = h("dl", { class: "facts" });
    const body = h("tbody", {});
    const url = (format?: string) => {
      const query = new URLSearchParams();
      if (from.value) query.set("from", from.value);
      if (to.value) query.set("to", to.value);
      if (format) query.set("format", format);
      return `/api/v1/statement?${query}`;
    };
    const load = () => shown(error, async () => {
      const s = await api<Statement>("GET", url());
      from.value = s.from;
      to.value = s.to;
      facts.replaceChildren(
        h("dt", {}, "Days"), h("dd", {}, `${s.from} to ${s.to} (${s.timeZone})`),
        h("dt", {}, "Opening balance"), h("dd", {}, `₹${rupees(s.openingBalance)}`),
        h("dt", {}, "Closing balance"), h("dd", { "data-field": "closing" }, `₹${rupees(s.closingBalance)}`));
      body.replaceChildren(...(s.rows.length
        ? [...s.rows].reverse().map((r) => h("tr", { "data-type": r.type },
          h("td", {}, new Date(r.time).toLocaleString("en-IN", { hour12: false })),
          h("td", {}, r.type),
          h("td", {}, r.symbol ?? ""),
          h("td", { class: "num" }, r.quantity ?? ""),
          h("td", { class: "num" }, r.price === null ? "" : rupees(r.price)),
          h("td", { class: "num" }, signed(r.amount)),
          h("td", { class: "num" }, rupees(r.balance)),
          h("td", {}, r.reference ?? "")))
        : [h("tr", {}, h("td", { colspan: 8 }, "No movements in these days."))]));
    });
    const reload = coalesced(load);
    const download = () => shown(error, async () => {
      const csv = await api<string>("GET", url("csv"));
      const link = h("a", { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })), download: `statement-${from.value || "recent"}-${to.value || "today"}.csv` });
      link.click();
      URL.revokeObjectURL(link.href);
    });
    const form = h("form", { class: "inline", "aria-label": "Statement days" },
      field("From", from), field("To", to),
      h("button", { type: "submit" }, "Show"),
      h("button", { type: "button", class: "secondary", onclick: () => void download() }, "Download CSV"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      reload();
    });
    root.append(h("h1", {}, "Statement"), form, error, facts,
      scrolling(h("table", { class: "grid", id: "statement" },
        h("caption", {}, "Movements, newest first"),
        h("thead", {}, h("tr", {}, ...["Time", "Type", "Symbol", "Qty", "Price (₹)", "Amount (₹)", "Balance (₹)", "Reference"].map((t) => h("th", { scope: "col" }, t)))),
        body)));
    const off = live.on("order", (update) => {
      if (update.filledQty > 0) reload();
    });
    reload();
    return off;
  },
};
