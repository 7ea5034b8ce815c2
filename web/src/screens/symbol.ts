// A symbol: its last price, the candle chart (GET .../candles of the interval picked, 5 s
// to a day, then live from the trade stream), the depth ladder (BOOK frames), the trade tape (TRADE frames) and the order
// ticket.

import { CandlestickSeries, createChart, type CandlestickData, type UTCTimestamp } from "lightweight-charts";
import { api } from "../api";
import { field, h, head, rupees, select, time } from "../dom";
import { live } from "../live";
import { focusPhase, notePhase } from "../phase";
import type { Screen } from "../screen";
import { orderTicket } from "../ticket";
import type { Book, Candle, Instrument, TradeTick } from "../types";

const TAPE_ROWS = 30;
const DEPTH = 10;
/** The candle intervals offered (GET .../candles?interval=): the API's name, its length in
 * seconds, its words. */
const INTERVALS: [string, number, string][] = [
  ["5s", 5, "5 seconds"],
  ["1m", 60, "1 minute"],
  ["5m", 300, "5 minutes"],
  ["15m", 900, "15 minutes"],
  ["1h", 3600, "1 hour"],
  ["1d", 86_400, "1 day"],
];
const CANDLES = 1000; // intervals a chart asks for (the API answers at most 1440)
const FEW = 100; // candles or fewer: spread over the chart (at most MAX_SPACING px apart), not packed at its right
const MAX_SPACING = 60;

function bar(candle: Candle): CandlestickData<UTCTimestamp> {
  return {
    time: (Date.parse(candle.time) / 1000) as UTCTimestamp,
    open: Number(candle.open),
    high: Number(candle.high),
    low: Number(candle.low),
    close: Number(candle.close),
  };
}

function ladder(book: Book): HTMLElement {
  const rows = [];
  const asks = book.asks.slice(0, DEPTH).reverse();
  for (const level of asks) rows.push(h("tr", { class: "ask" }, h("td", {}), h("td", {}, rupees(level.price)), h("td", {}, level.quantity)));
  for (const level of book.bids.slice(0, DEPTH)) rows.push(h("tr", { class: "bid" }, h("td", {}, level.quantity), h("td", {}, rupees(level.price)), h("td", {})));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 3 }, "The book is empty")));
  return h("table", { class: "ladder" },
    h("caption", {}, "Order book (depth)"),
    head(["Bid qty", "Price", "Ask qty"], ["Bid qty", "Price", "Ask qty"]),
    h("tbody", {}, ...rows));
}

export const symbol: Screen = {
  path: "/symbol/:symbol",
  title: "Symbol",
  access: "user",
  render(root, params) {
    const name = params.symbol.toUpperCase();
    document.title = `${name} · brokercore`;
    const last = h("span", { class: "last", id: "last-price" }, "—"); // not a live region: it moves with every trade
    const note = h("p", { class: "chart-note", hidden: true }, "No trades yet: the chart starts with the first one.");
    const chartBox = h("div", { class: "chart", role: "img" });
    const picker = select("interval", INTERVALS.map(([key, , words]) => [key, words]), "1m");
    const depth = h("div", { id: "depth" });
    const tape = h("tbody", {});
    const instrument = api<Instrument>("GET", `/api/v1/instruments/${encodeURIComponent(name)}`).catch(() => null);
    root.append(
      h("h1", {}, name, " ", last),
      h("div", { class: "symbol-grid" },
        h("section", { class: "card chart-card", "aria-label": "Chart" }, field("Candle interval", picker), note, chartBox,
          // the library's licence asks for this link; its own logo would be a link inside the image
          h("p", { class: "credit" }, h("a", { href: "https://www.tradingview.com/", rel: "noopener" }, "Charting by TradingView"))),
        h("section", { class: "card", "aria-label": "Depth" }, depth),
        h("section", { class: "card", "aria-label": "Trades" },
          h("table", { class: "tape" }, h("caption", {}, "Trades"),
            head(["Time", "Price", "Qty"], ["Time", "Price", "Qty"]),
            tape)),
        orderTicket(name, instrument),
      ),
    );
    focusPhase(name);

    const chart = createChart(chartBox, { autoSize: true, layout: { textColor: "#1a1a1a", attributionLogo: false }, timeScale: { timeVisible: true, maxBarSpacing: MAX_SPACING } });
    const series = chart.addSeries(CandlestickSeries, { upColor: "#0a7d32", downColor: "#b3261e", wickUpColor: "#0a7d32", wickDownColor: "#b3261e", borderVisible: false });
    let lastBar: CandlestickData<UTCTimestamp> | null = null;
    const spread = () => {
      if (series.data().length <= FEW) chart.timeScale().fitContent();
    };
    let step = 60; // the interval's seconds
    let loading = 0; // the latest load: an older answer arriving late is dropped
    const loadCandles = () => {
      const [key, seconds, words] = INTERVALS.find(([k]) => k === picker.value) ?? INTERVALS[1];
      const load = ++loading;
      step = seconds;
      lastBar = null;
      series.setData([]);
      chartBox.setAttribute("aria-label", `${name} price chart, one candle per ${words}`);
      chart.applyOptions({ timeScale: { secondsVisible: seconds < 60 } });
      const from = new Date(Date.now() - CANDLES * seconds * 1000).toISOString();
      const query = new URLSearchParams({ interval: key, from });
      api<{ candles: Candle[] }>("GET", `/api/v1/marketdata/${encodeURIComponent(name)}/candles?${query}`).then((answer) => {
        if (load !== loading) return;
        const bars = answer.candles.map(bar);
        const tail = bars.at(-1);
        if (lastBar && tail?.time === lastBar.time) { // live trades since the answer was made: both in its bar
          bars[bars.length - 1] = { ...tail, high: Math.max(tail.high, lastBar.high), low: Math.min(tail.low, lastBar.low), close: lastBar.close };
        } else if (lastBar && (!tail || lastBar.time > tail.time)) bars.push(lastBar);
        series.setData(bars);
        spread();
        lastBar = bars.at(-1) ?? null;
        note.hidden = lastBar !== null;
        chartBox.dataset.candles = String(series.data().length);
      }, () => undefined);
    };
    picker.addEventListener("change", loadCandles);
    loadCandles();

    const showBook = (book: Book) => {
      if (book.symbol !== name) return;
      depth.replaceChildren(ladder(book));
      if (book.lastPrice) last.textContent = `₹${rupees(book.lastPrice)}`;
      notePhase(name, book);
    };
    const loadBook = () => api<Book>("GET", `/api/v1/marketdata/${encodeURIComponent(name)}`).then(showBook, () => undefined);
    void loadBook();

    const onTrade = (trade: TradeTick) => {
      if (trade.symbol !== name) return;
      last.textContent = `₹${rupees(trade.price)}`;
      tape.prepend(h("tr", {}, h("td", {}, time(trade.time)), h("td", {}, rupees(trade.price)), h("td", {}, trade.quantity)));
      while (tape.rows.length > TAPE_ROWS) tape.deleteRow(-1);
      const price = Number(trade.price);
      const start = (Math.floor(Date.parse(trade.time) / 1000 / step) * step) as UTCTimestamp;
      if (lastBar && start < lastBar.time) return; // the chart takes no bar older than its last
      const added = lastBar?.time !== start;
      lastBar = lastBar && !added
        ? { ...lastBar, high: Math.max(lastBar.high, price), low: Math.min(lastBar.low, price), close: price }
        : { time: start, open: price, high: price, low: price, close: price };
      series.update(lastBar);
      if (added) spread();
      note.hidden = true;
      chartBox.dataset.candles = String(series.data().length);
    };
    const off = [
      live.on("book", showBook),
      // live from here on: read the book again, as it may have changed before
      live.on("subscribed", ({ channel, symbol }) => {
        if (channel !== "book" || symbol !== name) return;
        depth.dataset.live = "true";
        void loadBook();
      }),
      live.on("trade", onTrade),
      live.subscribe("book", name),
      live.subscribe("trades", name),
    ];
    return () => {
      off.forEach((f) => f());
      chart.remove();
      focusPhase(null);
    };
  },
};
