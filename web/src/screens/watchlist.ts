// The watchlist: the user's first list (made with every instrument when they have none),
// its prices live from the trade stream, symbols added and removed (PUT the list).

import { api } from "../api";
import { field, h, head, message, rupees, select, signed } from "../dom";
import { live } from "../live";
import { problem } from "../forms";
import type { Screen } from "../screen";
import type { Instrument, TradeTick, WatchSymbol, Watchlist } from "../types";

/** The price cells of a symbol: last, change and change in percent of the previous close. */
function prices(item: WatchSymbol): HTMLTableCellElement[] {
  const change = item.lastPrice && item.previousClose ? String(Number(item.lastPrice) - Number(item.previousClose)) : item.change;
  const percent = change && item.previousClose ? ((Number(change) / Number(item.previousClose)) * 100).toFixed(2) : item.changePercent;
  return [
    h("td", { class: "num last" }, rupees(item.lastPrice)),
    h("td", { class: "num" }, signed(change)),
    h("td", { class: "num" }, percent === null || percent === undefined ? "—" : `${percent}%`),
  ];
}

function row(item: WatchSymbol, remove: () => void): HTMLTableRowElement {
  return h("tr", { "data-symbol": item.symbol },
    h("th", { scope: "row" }, h("a", { href: `/symbol/${item.symbol}`, "data-link": true }, item.symbol)),
    ...prices(item),
    h("td", {}, h("button", { type: "button", class: "link", "aria-label": `Remove ${item.symbol}`, onclick: remove }, "Remove")));
}

export const watchlist: Screen = {
  path: "/watchlist",
  title: "Watchlist",
  nav: "Watchlist",
  access: "user",
  render(root) {
    const body = h("tbody", {});
    const error = message();
    const adder = h("form", { class: "inline" });
    root.append(h("h1", {}, "Watchlist"), adder,
      h("table", { class: "grid", id: "watchlist" },
        h("caption", { class: "visually-hidden" }, "Watched symbols with live prices"),
        head(["Symbol", "Last", "Change", "%", ""], ["Last", "Change", "%"]),
        body),
      error);
    let list: Watchlist | null = null;
    let all: string[] = [];
    const unsubscribe = new Map<string, () => void>();

    const draw = () => {
      if (!list) return;
      body.replaceChildren(...list.symbols.map((item) => row(item, () => void save(list!.symbols.filter((s) => s.symbol !== item.symbol).map((s) => s.symbol)))));
      const held = new Set(list.symbols.map((s) => s.symbol));
      for (const [name, off] of unsubscribe) if (!held.has(name)) (off(), unsubscribe.delete(name));
      for (const name of held) if (!unsubscribe.has(name)) unsubscribe.set(name, live.subscribe("trades", name));
      const choices = all.filter((s) => !held.has(s));
      const choice = select("symbol", choices.map((s) => [s, s]));
      adder.hidden = !choices.length; // every instrument is watched already
      adder.replaceChildren(field("Add a symbol", choice), h("button", { type: "submit" }, "Add"));
      adder.onsubmit = (event) => {
        event.preventDefault();
        void save([...list!.symbols.map((s) => s.symbol), choice.value]);
      };
    };
    const save = async (symbols: string[]) => {
      error.textContent = "";
      try {
        list = await api<Watchlist>("PUT", `/api/v1/watchlists/${list!.id}`, { name: list!.name, symbols });
        draw();
      } catch (e) {
        error.textContent = problem(e);
      }
    };
    const onTrade = (trade: TradeTick) => {
      const item = list?.symbols.find((s) => s.symbol === trade.symbol);
      if (!item) return;
      item.lastPrice = trade.price;
      const shown = body.querySelector(`tr[data-symbol="${trade.symbol}"]`);
      if (!shown) return;
      // the cells, not the row: a keyboard user's focus on its link or button stays
      const fresh = prices(item);
      shown.querySelectorAll("td.num").forEach((cell, i) => cell.replaceWith(fresh[i]));
      shown.classList.add("tick");
    };
    const offTrade = live.on("trade", onTrade);

    (async () => {
      all = (await api<{ instruments: Instrument[] }>("GET", "/api/v1/instruments")).instruments.map((i) => i.symbol);
      const lists = await api<{ watchlists: Watchlist[] }>("GET", "/api/v1/watchlists");
      list = lists.watchlists[0] ?? (await api<Watchlist>("POST", "/api/v1/watchlists", { name: "My watchlist", symbols: all.slice(0, 20) }));
      draw();
    })().catch((e) => (error.textContent = problem(e)));

    return () => {
      offTrade();
      for (const off of unsubscribe.values()) off();
    };
  },
};
