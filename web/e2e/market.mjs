// A living market, as a person opening `make demo`'s page sees it (issue 17), and the
// README's screenshot of it: while `brokercore simulate` trades SYMBOL (started by
// tests/integration/front_door/test_webapp.py), alice watches its page on a desktop-sized screen
// until the chart has several candles of 5 seconds, the depth ladder several levels on
// each side, and the trade tape trades that keep arriving; the last price must have
// moved meanwhile. Saves market.png and market-phone.png to $BROKERCORE_SCREENSHOTS.
//
//   BROKERCORE_EDGE=http://127.0.0.1:8080 BROKERCORE_LOGINS='{"alice": {"email", "password"}}' \
//   BROKERCORE_MARKET_SYMBOL=TCS BROKERCORE_SCREENSHOTS=/tmp/shots node web/e2e/market.mjs
//
// Every wait is on a condition, with a deadline (the candles' is MARKET_WAIT: they take
// half a minute to form); none is a fixed sleep.

import { LOGINS, audit, logIn, run, say, shot } from "./support.mjs";

const SYMBOL = process.env.BROKERCORE_MARKET_SYMBOL ?? "TCS";
const CANDLES = 6; // of 5 s: half a minute of trading
const LEVELS = 4; // on each side of the book
const TRADES = 10; // seen arriving on the tape while watching
const MARKET_WAIT = 50_000; // ms

/** Wait until `condition(arg)`, evaluated in the page, holds. */
function until(page, condition, arg, timeout = MARKET_WAIT) {
  return page.waitForFunction(condition, arg, { timeout, polling: 200 });
}

/** A screenshot taken as soon as the book has LEVELS levels on each side (takers sweep
 * a side now and then) and the page has painted (the chart draws on an animation frame). */
async function pictured(page, name) {
  say(`${name}: the book with ${LEVELS} levels or more on each side`);
  await until(page, (n) => ["bid", "ask"].every((side) => document.querySelectorAll(`#depth tr.${side}`).length >= n), LEVELS);
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done))));
  await audit(page, name);
  await shot(page, name);
}

await run(async (session) => {
  say(`alice watches ${SYMBOL}, which the simulator trades`);
  const page = await session.page({ viewport: { width: 1280, height: 900 } });
  await logIn(page, LOGINS.alice);
  await page.goto(`/symbol/${SYMBOL}`);
  await page.getByRole("heading", { name: new RegExp(`^${SYMBOL}`), level: 1 }).waitFor();
  await page.locator("#depth[data-live=true] table").waitFor();
  await page.evaluate(() => {
    // the tape keeps its latest 30 rows: count the rows it is given instead
    window.tradesSeen = 0;
    const tape = document.querySelector("table.tape tbody");
    new MutationObserver((changes) => changes.forEach((c) => (window.tradesSeen += c.addedNodes.length))).observe(tape, { childList: true });
  });
  await until(page, () => /\d/.test(document.getElementById("last-price").textContent));
  const firstPrice = await page.locator("#last-price").textContent();

  say("candles of 5 seconds");
  await page.getByLabel("Candle interval", { exact: true }).selectOption("5s");
  await until(page, (n) => Number(document.querySelector(".chart").dataset.candles ?? 0) >= n, CANDLES);

  say(`the tape: ${TRADES} trades arrived, and more arriving`);
  await until(page, (n) => window.tradesSeen >= n, TRADES);
  const seen = await page.evaluate(() => window.tradesSeen);
  await until(page, (n) => window.tradesSeen > n, seen);

  say(`the last price moved from ${firstPrice}`);
  await until(page, (first) => document.getElementById("last-price").textContent !== first, firstPrice);
  await page.evaluate(() => document.activeElement?.blur()); // the heading's focus ring: not in a picture
  await pictured(page, "market");

  say("the same on a phone-sized screen");
  await page.setViewportSize({ width: 390, height: 844 });
  await pictured(page, "market-phone");
});
