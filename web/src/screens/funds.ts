// Funds: the balance (GET /api/v1/funds: cash, blocked, unsettled, withdrawable), a
// deposit and a withdrawal (POST .../deposits, .../withdrawals, each with an
// Idempotency-Key kept until it is answered, so a retry after a network failure is the
// same request, never a second one), and the withdrawals so far (docs/funds.md).

import { api } from "../api";
import { field, h, message, rupees, scrolling, time } from "../dom";
import { live } from "../live";
import type { Screen } from "../screen";
import { toast } from "../toast";
import { coalesced, keyedSubmit, shown } from "../forms";

interface Balance {
  cash: string;
  blocked: string;
  unsettled: string;
  withdrawable: string;
}

interface Withdrawal {
  withdrawalId: number;
  amount: string;
  status: string;
  requestedAt: string;
  finishedAt: string | null;
  failureReason: string | null;
}

/** A form of one amount, sent with its Idempotency-Key (``keyedSubmit``). */
function amountForm(label: string, button: string, send: (amount: string, key: string) => Promise<void>): HTMLFormElement {
  const amount = h("input", { name: "amount", type: "text", inputmode: "decimal", required: true, pattern: "[0-9]{1,10}([.][0-9]{1,2})?", autocomplete: "off" });
  const error = message();
  const form = h("form", { class: "inline", "aria-label": label },
    field(`${label} (₹)`, amount, "Rupees, at most two decimals"),
    h("button", { type: "submit" }, button),
    error);
  keyedSubmit(form, "web-funds", error, async (key) => {
    await send(amount.value.trim(), key);
    amount.value = "";
  });
  return form;
}

export const funds: Screen = {
  path: "/funds",
  title: "Funds",
  nav: "Funds",
  access: "user",
  render(root) {
    const balance = h("dl", { class: "facts", id: "balance" });
    const error = message();
    const list = h("tbody", {});
    const load = () => shown(error, async () => {
      const [now, past] = await Promise.all([
        api<Balance>("GET", "/api/v1/funds"),
        api<{ withdrawals: Withdrawal[] }>("GET", "/api/v1/funds/withdrawals"),
      ]);
      balance.replaceChildren(
        h("dt", {}, "Cash"), h("dd", { "data-field": "cash" }, `₹${rupees(now.cash)}`),
        h("dt", {}, "Blocked"), h("dd", {}, `₹${rupees(now.blocked)}`),
        h("dt", {}, "Unsettled (T+1)"), h("dd", {}, `₹${rupees(now.unsettled)}`),
        h("dt", {}, "Withdrawable"), h("dd", { "data-field": "withdrawable" }, `₹${rupees(now.withdrawable)}`));
      list.replaceChildren(...(past.withdrawals.length
        ? past.withdrawals.map((w) => h("tr", { "data-withdrawal": w.withdrawalId },
          h("td", {}, w.withdrawalId),
          h("td", {}, `${new Date(w.requestedAt).toLocaleDateString("en-IN")} ${time(w.requestedAt)}`),
          h("td", { class: "num" }, rupees(w.amount)),
          h("td", {}, w.status, w.failureReason ? ` (${w.failureReason})` : "")))
        : [h("tr", {}, h("td", { colspan: 4 }, "No withdrawals yet."))]));
    });
    const reload = coalesced(load);
    const deposit = amountForm("Deposit", "Add money", async (amount, key) => {
      const done = await api<{ amount: string }>("POST", "/api/v1/funds/deposits", { amount }, { "Idempotency-Key": key });
      toast(`Deposit of ₹${rupees(done.amount)} received`);
      reload();
    });
    const withdraw = amountForm("Withdraw", "Withdraw", async (amount, key) => {
      const done = await api<Withdrawal>("POST", "/api/v1/funds/withdrawals", { amount }, { "Idempotency-Key": key });
      toast(`Withdrawal of ₹${rupees(done.amount)}: ${done.status.toLowerCase()}`);
      reload();
    });
    root.append(h("h1", {}, "Funds"), error, balance,
      h("p", {}, h("small", {}, "Blocked: held by open buy orders and pending withdrawals. A sale's proceeds can buy at once and be withdrawn from the next day (T+1).")),
      h("div", { style: "display: grid; grid-template-columns: minmax(0, 1fr); gap: 16px" },
        h("section", { class: "card", "aria-labelledby": "deposit-h" }, h("h2", { id: "deposit-h" }, "Add money"), deposit),
        h("section", { class: "card", "aria-labelledby": "withdraw-h" }, h("h2", { id: "withdraw-h" }, "Withdraw to your bank"), withdraw,
          scrolling(h("table", { class: "grid", id: "withdrawals" },
            h("caption", {}, "Withdrawals"),
            h("thead", {}, h("tr", {}, ...["Id", "Requested", "Amount (₹)", "Status"].map((t) => h("th", { scope: "col" }, t)))),
            list))),
        h("p", {}, h("a", { href: "/statement", "data-link": true }, "See the statement"))));
    const off = live.on("order", reload); // an order's hold and fills move the cash
    reload();
    return off;
  },
};
