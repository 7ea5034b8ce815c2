// The operator's page (GET /api/v1/operator/overview, operators only): each shard's
// engine daemons, offsets and lag (with orders/s from the change between two readings),
// every consumer's lag, and the reconciler's latest runs with their findings. Read again
// every few seconds while open.

import { api } from "../api";
import { h, message, scrolling, time } from "../dom";
import type { Screen } from "../screen";
import { shown } from "../forms";

const EVERY_MS = 5000;

interface Shard {
  shard: number;
  partition: number;
  symbols: string[];
  hot: string[];
  alive: boolean;
  active: string[];
  standby: string[];
  ordersEnd: number;
  engineOffset: number | null;
  lag: number;
  eventsEnd: number;
}

interface Consumer {
  consumer: string;
  lag: number;
  partitions: { topic: string; partition: number; position: number | null; end: number; lag: number }[];
}

interface Run {
  runId: number;
  ranAt: string;
  scope: string;
  findings: number;
  items: { kind: string; accountId: number | null; orderId: number | null; detail: string }[];
}

interface Overview {
  measuredAt: string;
  shards: Shard[];
  consumers: Consumer[];
  reconciler: Run[];
  problems: string[];
}

const count = (n: number | null) => (n === null ? "—" : n.toLocaleString("en-IN"));

function table(id: string, caption: string, heads: string[], rows: HTMLElement[], empty: string): HTMLElement {
  return scrolling(h("table", { class: "grid", id },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...heads.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...(rows.length ? rows : [h("tr", {}, h("td", { colspan: heads.length }, empty))]))));
}

export const operator: Screen = {
  path: "/operator",
  title: "Operations",
  nav: "Operator",
  access: "operator",
  render(root) {
    const error = message();
    const problems = h("ul", { class: "message error", role: "alert" });
    const content = h("div", { style: "display: grid; grid-template-columns: minmax(0, 1fr); gap: 16px" });
    const stamp = h("p", { role: "status", "aria-live": "polite" });
    let before: Overview | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let open = true;

    const rate = (shard: Shard, now: Overview): string => {
      const was = before?.shards.find((s) => s.shard === shard.shard);
      if (!before || !was) return "—";
      const seconds = (Date.parse(now.measuredAt) - Date.parse(before.measuredAt)) / 1000;
      return seconds > 0 ? ((shard.ordersEnd - was.ordersEnd) / seconds).toFixed(1) : "—";
    };
    const draw = (now: Overview) => {
      stamp.textContent = `Measured at ${time(now.measuredAt)}; read again every ${EVERY_MS / 1000} s.`;
      problems.replaceChildren(...now.problems.map((p) => h("li", {}, `Not measured: ${p}`)));
      const shards = now.shards.map((s) => h("tr", { "data-shard": s.shard, "data-alive": String(s.alive) },
        h("th", { scope: "row" }, `Shard ${s.shard}`),
        h("td", {}, s.symbols.map((x) => (s.hot.includes(x) ? `${x} (hot)` : x)).join(", ") || "—"),
        h("td", { class: s.alive ? "gain" : "loss" }, s.alive ? "alive" : "NO ACTIVE DAEMON"),
        h("td", {}, s.active.join(", ") || "—"),
        h("td", {}, s.standby.join(", ") || "none"),
        h("td", { class: "num" }, s.partition),
        h("td", { class: "num" }, count(s.ordersEnd)),
        h("td", { class: "num" }, count(s.engineOffset)),
        h("td", { class: "num" }, count(s.lag)),
        h("td", { class: "num" }, count(s.eventsEnd)),
        h("td", { class: "num" }, rate(s, now))));
      const consumers = now.consumers.map((c) => {
        const worst = c.partitions.reduce((a, b) => (b.lag > a.lag ? b : a), c.partitions[0]);
        return h("tr", { "data-consumer": c.consumer },
          h("th", { scope: "row" }, c.consumer),
          h("td", { class: "num" }, count(c.lag)),
          h("td", {}, worst ? `${count(worst.lag)} on ${worst.topic} partition ${worst.partition}` : "—"),
          h("td", {}, c.partitions.map((p) => `${p.partition}: ${count(p.position)} / ${count(p.end)}`).join("; ")));
      });
      const runs = now.reconciler.map((run) => h("section", { class: "card", "data-scope": run.scope, "aria-label": `Reconciler run ${run.runId}` },
        h("h3", { style: "margin: 0 0 8px" }, run.scope === "FULL" ? "Full report (events against Postgres, and the ledger)" : "The ledger's invariants",
          ` — ${new Date(run.ranAt).toLocaleDateString("en-IN")} ${time(run.ranAt)}: `,
          h("span", { class: run.findings ? "loss" : "gain" }, run.findings ? `${count(run.findings)} finding(s)` : "no findings")),
        run.items.length
          ? table(`findings-${run.scope.toLowerCase()}`, run.items.length < run.findings ? `The first ${run.items.length}` : "Findings",
            ["Kind", "Account", "Order", "Detail"],
            run.items.map((f) => h("tr", { "data-kind": f.kind },
              h("td", {}, f.kind), h("td", { class: "num" }, f.accountId ?? "—"), h("td", { class: "num" }, f.orderId ?? "—"), h("td", {}, f.detail))), "")
          : null));
      content.replaceChildren(
        h("section", { "aria-labelledby": "op-shards" }, h("h2", { id: "op-shards" }, "Shards"),
          table("shards", "Engine daemons, one shard each", ["Shard", "Symbols", "State", "Active daemon", "Standby", "Partition", "Orders end", "Engine offset", "Lag", "Events end", "Orders/s"], shards, "Kafka not measured.")),
        h("section", { "aria-labelledby": "op-lag" }, h("h2", { id: "op-lag" }, "Consumer lag"),
          table("consumers", "Messages behind on events", ["Consumer", "Lag", "Worst partition", "Position / end by partition"], consumers, "Kafka not measured.")),
        h("section", { "aria-labelledby": "op-recon" }, h("h2", { id: "op-recon" }, "Reconciler"),
          ...(runs.length ? runs : [h("p", {}, "The reconciler has stored no run yet.")])));
    };
    const load = async () => {
      await shown(error, async () => {
        const now = await api<Overview>("GET", "/api/v1/operator/overview");
        draw(now);
        before = now;
      });
      if (open) timer = setTimeout(() => void load(), EVERY_MS);
    };
    root.append(h("h1", {}, "Operations"), stamp, error, problems, content);
    void load();
    return () => {
      open = false;
      clearTimeout(timer);
    };
  },
};
