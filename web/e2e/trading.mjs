// The web app end to end in headless Chromium (Debian's, driven by playwright-core): a new
// user signs up and sets up the second factor; alice (desktop) and bob (phone-sized) trade
// in two browser contexts: a limit order crossed live, the portfolio and statement
// changed, a stop-loss triggered, a modify and a cancel, an order update missed while
// offline delivered on the resume, and the phase banner through a halt and a pre-open
// (`brokercore halt` and `resume`: BROKERCORE_CLI). Screenshots of each screen go to
// $BROKERCORE_SCREENSHOTS.
//
//   BROKERCORE_EDGE=http://127.0.0.1:8080 BROKERCORE_LOGINS='{"alice": {"email", "password"}, "bob": ...}' \
//   BROKERCORE_CLI='[".venv/bin/brokercore"]' BROKERCORE_SCREENSHOTS=/tmp/shots node web/e2e/trading.mjs
//
// Exits non-zero (with the step that failed) on the first failed check (support.mjs's
// run()). Every wait is on a condition, with a deadline; none is a fixed sleep.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { EDGE, LOGINS, WAIT, audit, logIn, open, run, say, shot } from "./support.mjs";

const SYMBOL = "RELIANCE";
const QUIET = "ITC"; // halted, re-opened, closed: bob holds it, no other browser test trades it
// the operator's command line (`brokercore`), as a JSON array, with the stack's settings
const CLI = JSON.parse(process.env.BROKERCORE_CLI ?? '["brokercore"]');

/** RFC 6238 code of a base32 secret at `at` (ms). */
function totp(secret, at = Date.now()) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "").toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30_000)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/** `brokercore ARGS` (halt, resume, close) on the stack under test; ARGS' process, which
 * `operator.running` holds until it ends by itself or at the end of the run. */
function operator(...args) {
  const command = spawn(CLI[0], [...CLI.slice(1), ...args], { stdio: ["ignore", "inherit", "inherit"] });
  operator.running.add(command);
  return new Promise((resolve, reject) => {
    command.on("error", reject);
    command.on("spawn", () => resolve(command));
    command.on("exit", () => operator.running.delete(command));
  });
}
operator.running = new Set();

/** Wait for a command's exit, and check its status. */
function exited(command) {
  return new Promise((resolve, reject) => {
    const check = (code) => (code === 0 ? resolve() : reject(new Error(`${command.spawnargs.join(" ")} exited ${code}`)));
    if (command.exitCode !== null) check(command.exitCode);
    else command.on("exit", check);
  });
}

/** The app's own API call from a page (its token): for what no core screen shows. */
function apiFrom(page, path) {
  return page.evaluate(async (p) => {
    const token = JSON.parse(sessionStorage.getItem("brokercore.tokens")).accessToken;
    const answer = await fetch(p, { headers: { Authorization: `Bearer ${token}` } });
    return answer.json();
  }, path);
}

async function symbolPage(page) {
  await page.getByRole("link", { name: SYMBOL, exact: true }).first().click();
  await page.getByRole("heading", { name: new RegExp(`^${SYMBOL}`), level: 1 }).waitFor();
  await page.locator("#depth[data-live=true] table").waitFor(); // the book live
}

/** Fill the ticket, review the margin, check the preview, place; the new order's id. */
async function placeOrder(page, { side, type, quantity, price, trigger, validity }) {
  const ticket = page.locator("form.ticket");
  await ticket.locator(`label[for=side-${side.toLowerCase()}]`).click();
  await ticket.getByLabel("Order type").selectOption(type);
  await ticket.getByLabel("Quantity (shares)").fill(String(quantity));
  if (price !== undefined) await ticket.getByLabel("Limit price (₹)").fill(price);
  if (trigger !== undefined) await ticket.getByLabel("Trigger price (₹)").fill(trigger);
  if (validity) await ticket.getByLabel("Validity").selectOption(validity);
  const send = ticket.getByRole("button", { name: /^Place (buy|sell) order$/ });
  assert.equal(await send.isDisabled(), true, "the order cannot be sent before its margin is reviewed");
  await ticket.getByRole("button", { name: "Review" }).click();
  await ticket.locator("#margin-preview", { hasText: "Blocks" }).waitFor();
  const preview = await ticket.locator("#margin-preview").textContent();
  if (side === "BUY") assert.match(preview, /Blocks ₹[\d,]+\.\d\d of your cash/);
  else assert.match(preview, new RegExp(`Blocks ${quantity} [A-Z]+ shares`));
  await send.click();
  const sent = ticket.locator("#margin-preview", { hasText: /Order \d+ sent/ });
  await sent.waitFor();
  return Number((await sent.textContent()).match(/Order (\d+) sent/)[1]);
}

/** Wait until check() is true (polled every 100 ms), failing after the deadline. */
async function until(check, what) {
  const deadline = Date.now() + WAIT;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function row(page, orderId) {
  return page.locator(`#orders tr[data-order="${orderId}"]`);
}

async function status(page, orderId, want) {
  await page.locator(`#orders tr[data-order="${orderId}"][data-status="${want}"]`).waitFor();
}

async function tab(page, name) {
  await page.getByRole("group", { name: "Which orders" }).getByRole("button", { name: new RegExp(`^${name}`) }).click();
}

await run(async (session) => {
  session.onEnd(() => operator.running.forEach((command) => command.kill("SIGTERM")));
  // --- a new user: sign up, the second factor, a login that asks for it ---------------
  say("sign up a new user");
  const newcomer = await session.page({ viewport: { width: 1280, height: 800 } });
  const email = `web-${Date.now()}@example.com`;
  const password = "correct horse battery";
  await newcomer.goto(`${EDGE}/signup`);
  await newcomer.getByLabel("Email").fill(email);
  await newcomer.getByLabel("Password").fill(password);
  await audit(newcomer, "signup");
  await shot(newcomer, "signup");
  await newcomer.getByRole("button", { name: "Open account" }).click();
  await newcomer.getByRole("heading", { name: "Log in" }).waitFor();
  assert.equal(await newcomer.getByLabel("Email").inputValue(), email);
  await newcomer.getByLabel("Password").fill(password);
  await newcomer.getByRole("button", { name: "Log in" }).click();
  await newcomer.getByRole("heading", { name: "Watchlist" }).waitFor();

  say("set up TOTP");
  await open(newcomer, "Account", "Account and security");
  await newcomer.getByText("PENDING", { exact: true }).waitFor();
  await newcomer.getByRole("button", { name: "Set up two-factor" }).click();
  const secret = await newcomer.locator("#totp-secret").textContent();
  await newcomer.getByLabel("Code from the app").fill(totp(secret));
  await newcomer.getByRole("button", { name: "Turn on" }).click();
  await newcomer.locator("#recovery-codes li").first().waitFor();
  assert.equal(await newcomer.locator("#recovery-codes li").count(), 10);
  await audit(newcomer, "account");
  await shot(newcomer, "account-two-factor");

  say("log in again with the second factor, by keyboard alone");
  await newcomer.getByRole("button", { name: "Log out" }).click();
  await newcomer.getByRole("heading", { name: "Log in" }).waitFor(); // focus on the heading
  const focused = (name) => newcomer.waitForFunction((n) => document.activeElement?.getAttribute("name") === n, name);
  await newcomer.keyboard.press("Tab");
  await focused("email");
  await newcomer.keyboard.type(email);
  await newcomer.keyboard.press("Tab");
  await newcomer.keyboard.type(password);
  await newcomer.keyboard.press("Enter");
  await focused("code"); // the second factor asked, the cursor in its field
  await audit(newcomer, "login");
  await shot(newcomer, "login-second-factor");
  // the confirming code's step is spent: the next step's code (accepted one step early)
  await newcomer.keyboard.type(totp(secret, Date.now() + 30_000));
  await newcomer.keyboard.press("Enter");
  await newcomer.getByRole("heading", { name: "Watchlist" }).waitFor();

  // --- alice on a desktop, bob on a phone ----------------------------------------------
  say("alice and bob log in");
  const alice = await session.page({ viewport: { width: 1366, height: 900 } });
  // alice's WebSocket goes through the test, which can cut it like a lost network
  const aliceLink = { down: false, sockets: [], urls: [] };
  await alice.context().routeWebSocket(/\/ws\/v1\/orders/, (pageSide) => {
    aliceLink.urls.push(pageSide.url());
    if (aliceLink.down) return pageSide.close({ code: 4000, reason: "network lost" });
    aliceLink.sockets.push([pageSide, pageSide.connectToServer()]);
  });
  const bob = await session.page({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await shot(alice, "login");
  await Promise.all([logIn(alice, LOGINS.alice), logIn(bob, LOGINS.bob)]);
  await alice.locator(`#watchlist tr[data-symbol="${SYMBOL}"]`).waitFor();
  await audit(alice, "watchlist");
  await shot(alice, "watchlist");
  const before = await apiFrom(alice, "/api/v1/portfolio");
  const held = (p) => p.positions.find((x) => x.symbol === SYMBOL)?.quantity ?? 0;

  say("alice places a limit buy after its margin preview");
  await symbolPage(alice);
  await alice.locator("#phase[data-phase=open]").waitFor();
  const buy = await placeOrder(alice, { side: "BUY", type: "LIMIT", quantity: 10, price: "15000" });
  await alice.locator("#depth tr.bid", { hasText: "15,000.00" }).waitFor();
  await audit(alice, "symbol");
  await shot(alice, "symbol");

  say("alice watches her orders; bob crosses her order from his phone");
  await open(alice, "Orders", "My orders");
  await status(alice, buy, "OPEN");
  await symbolPage(bob);
  await bob.locator("#depth tr.bid", { hasText: "15,000.00" }).waitFor();
  const sell = await placeOrder(bob, { side: "SELL", type: "LIMIT", quantity: 10, price: "15000" });

  say("both see the fill live");
  await tab(alice, "Filled");
  await status(alice, buy, "FILLED");
  await alice.locator(".toast.fill").first().waitFor();
  await bob.locator(".tape tbody tr", { hasText: "15,000.00" }).waitFor();
  await bob.locator(".toast.fill").first().waitFor();
  await audit(bob, "symbol");
  await shot(bob, "symbol-phone");
  await open(bob, "Orders", "My orders");
  await tab(bob, "Filled");
  await status(bob, sell, "FILLED");
  await shot(alice, "orders");

  say("the portfolio and the statement changed (alice's access token refused first: refreshed)");
  const stale = await alice.evaluate(() => {
    const tokens = JSON.parse(sessionStorage.getItem("brokercore.tokens"));
    sessionStorage.setItem("brokercore.tokens", JSON.stringify({ ...tokens, accessToken: "not-a-token" }));
    return tokens.refreshToken;
  });
  await open(alice, "Positions", "Positions");
  await alice.locator(`#positions tr[data-symbol="${SYMBOL}"] td.qty`, { hasText: String(held(before) + 10) }).waitFor();
  await audit(alice, "positions");
  await shot(alice, "positions");
  const renewed = await alice.evaluate(() => JSON.parse(sessionStorage.getItem("brokercore.tokens")));
  assert.notEqual(renewed.refreshToken, stale, "the refused token was refreshed (the refresh token spent)");
  assert.notEqual(renewed.accessToken, "not-a-token");
  await open(alice, "Statement", "Statement");
  await alice.locator("#statement tr[data-type=BUY]", { hasText: SYMBOL }).filter({ hasText: "15,000.00" }).first().waitFor();
  await audit(alice, "statement");
  await shot(alice, "statement");

  say("bob's stop-loss waits for its trigger");
  await open(bob, "Watchlist", "Watchlist");
  await symbolPage(bob);
  const stop = await placeOrder(bob, { side: "SELL", type: "STOP_LIMIT", quantity: 5, price: "14850", trigger: "14900" });
  await open(bob, "Orders", "My orders");
  await status(bob, stop, "TRIGGER_PENDING");

  say("a trade at 14900 triggers it, seen live (and on the newcomer's watchlist)");
  await open(alice, "Watchlist", "Watchlist");
  await symbolPage(alice);
  await placeOrder(alice, { side: "BUY", type: "LIMIT", quantity: 1, price: "14900" });
  await alice.locator("#depth tr.bid", { hasText: "14,900.00" }).waitFor();
  const bobPage2 = await bob.context().newPage(); // bob's second tab places the crossing sell
  await logIn(bobPage2, LOGINS.bob);
  await symbolPage(bobPage2);
  await placeOrder(bobPage2, { side: "SELL", type: "LIMIT", quantity: 1, price: "14900" });
  await newcomer.locator(`#watchlist tr[data-symbol="${SYMBOL}"] td.last`, { hasText: "14,900.00" }).waitFor(); // live
  await status(bob, stop, "OPEN");
  assert.match(await row(bob, stop).locator("td.status").textContent(), /^OPEN/);
  await audit(bob, "orders");
  await shot(bob, "orders-stop-triggered-phone");
  await bobPage2.close();
  await row(bob, stop).getByRole("button", { name: `Cancel order ${stop}` }).click();
  await tab(bob, "Cancelled");
  await status(bob, stop, "CANCELLED");

  say("alice modifies a resting order, then cancels it");
  const resting = await placeOrder(alice, { side: "BUY", type: "LIMIT", quantity: 5, price: "14000", validity: "GTC" });
  await open(alice, "Orders", "My orders");
  await tab(alice, "Open");
  await status(alice, resting, "OPEN");
  await row(alice, resting).getByRole("button", { name: `Modify order ${resting}` }).click();
  const form = alice.getByRole("form", { name: `Modify order ${resting}` });
  await form.getByLabel("New price (₹)").fill("14100");
  await form.getByLabel("New total quantity").fill("7");
  await audit(alice, "orders, modifying");
  await shot(alice, "orders-modify");
  await form.getByRole("button", { name: "Save" }).click();
  await row(alice, resting).locator("td", { hasText: "14,100.00" }).waitFor();
  await alice.locator(`#orders tr[data-order="${resting}"] td.num`, { hasText: /^7$/ }).first().waitFor();
  await row(alice, resting).getByRole("button", { name: `Cancel order ${resting}` }).click();
  await tab(alice, "Cancelled");
  await status(alice, resting, "CANCELLED");

  say("an update missed while the socket is down arrives on the resume");
  const another = await (async () => {
    await open(alice, "Watchlist", "Watchlist");
    await symbolPage(alice);
    return placeOrder(alice, { side: "BUY", type: "LIMIT", quantity: 2, price: "14500", validity: "GTC" });
  })();
  await open(alice, "Orders", "My orders");
  await tab(alice, "Open");
  await status(alice, another, "OPEN");
  aliceLink.down = true; // the network is gone: the socket drops, reconnects are refused
  for (const [pageSide, serverSide] of aliceLink.sockets.splice(0)) {
    await serverSide.close();
    await pageSide.close({ code: 4000, reason: "network lost" });
  }
  await alice.locator("#connection[data-state=reconnecting]").waitFor();
  const tokens = JSON.parse(await alice.evaluate(() => sessionStorage.getItem("brokercore.tokens")));
  const cancel = await fetch(`${EDGE}/api/v1/orders/${another}`, { // from alice's other device
    method: "DELETE",
    headers: { Authorization: `Bearer ${tokens.accessToken}` },
  });
  assert.equal(cancel.status, 202, await cancel.text());
  await until(async () => {
    const order = await fetch(`${EDGE}/api/v1/orders/${another}`, { headers: { Authorization: `Bearer ${tokens.accessToken}` } });
    return (await order.json()).status === "CANCELLED";
  }, `order ${another} CANCELLED in the read model`);
  assert.equal(await row(alice, another).getAttribute("data-status"), "OPEN", "the page has not heard of the cancel yet");
  aliceLink.down = false;
  await alice.locator("#connection[data-state=live]").waitFor();
  await tab(alice, "Cancelled");
  await status(alice, another, "CANCELLED");
  const resumed = aliceLink.urls.at(-1);
  assert.match(resumed, /[?&]since=\d+/, `the reconnect resumes from the last seq: ${resumed}`);

  say("the phase banner: halted, then the pre-open with its indicative price");
  await alice.goto(`${EDGE}/symbol/${QUIET}`);
  await alice.locator("#depth[data-live=true]").waitFor();
  await alice.locator("#phase[data-phase=open]", { hasText: QUIET }).waitFor();
  await exited(await operator("halt", QUIET));
  await alice.locator("#phase[data-phase=halted]", { hasText: QUIET }).waitFor();
  await shot(alice, "phase-halted");
  await operator("resume", QUIET, "--uncross-after", "600"); // stopped before its uncross, at the end
  await alice.locator("#phase[data-phase=pre-open]", { hasText: "no indicative price yet" }).waitFor();
  await placeOrder(alice, { side: "BUY", type: "LIMIT", quantity: 2, price: "2200" });
  await bob.goto(`${EDGE}/symbol/${QUIET}`);
  await placeOrder(bob, { side: "SELL", type: "LIMIT", quantity: 2, price: "2200" });
  await alice.locator("#phase[data-phase=pre-open]", { hasText: "indicative opening ₹2,200.00 (2 shares)" }).waitFor();
  await shot(alice, "phase-pre-open");

  say("the phase banner: closed (an operator's early close; the pre-open's orders expire)");
  await exited(await operator("close", QUIET));
  await alice.locator("#phase[data-phase=closed]", { hasText: `${QUIET}: closed` }).waitFor();
  await shot(alice, "phase-closed");

});
