// The web app's secondary screens end to end in headless Chromium (Debian's, driven by
// playwright-core): alice deposits and sees it in her statement, gets a fill in her inbox
// live (bob crosses her order through the API), creates a GTT and sees it listed, places
// a bracket, sees it listed and exits it; ops, an operator, sees the shards on the
// operator's page, which alice cannot open; the API reference at /api/docs renders the
// OpenAPI document with nothing fetched from another origin. Screenshots go to
// $BROKERCORE_SCREENSHOTS.
//
//   BROKERCORE_EDGE=http://127.0.0.1:8080 BROKERCORE_LOGINS='{"alice": {"email", "password"}, "bob": ..., "ops": ...}' \
//   BROKERCORE_SCREENSHOTS=/tmp/shots node web/e2e/secondary.mjs
//
// Exits non-zero (naming the step) on the first failed check (support.mjs's run()); every
// wait is on a condition with a deadline, none a fixed sleep.

import assert from "node:assert/strict";
import { EDGE, LOGINS, WAIT, audit, logIn, open, run, say, shot } from "./support.mjs";

/** A REST call with `token` (null: none), as a client other than the browser makes it. */
async function rest(token, method, path, body) {
  const answer = await fetch(`${EDGE}${path}`, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await answer.text();
  assert.ok(answer.ok, `${method} ${path}: ${answer.status} ${text}`);
  return JSON.parse(text);
}

await run(async (session) => {
  const desktop = { viewport: { width: 1280, height: 900 } };
  const alice = await session.page(desktop);
  const ops = await session.page(desktop);

  say("alice logs in; the operator's page is not hers");
  await logIn(alice, LOGINS.alice);
  assert.equal(await alice.locator('#nav a[href="/operator"]').count(), 0, "alice's navigation has no operator page");

  say("funds: alice deposits ₹1,234.56");
  await open(alice, "Funds", "Funds");
  await alice.locator('#balance dd[data-field="cash"]').waitFor();
  const cashBefore = await alice.locator('#balance dd[data-field="cash"]').textContent();
  await alice.getByLabel("Deposit (₹)").fill("1234.56");
  await alice.getByRole("button", { name: "Add money" }).click();
  await alice.locator("#toasts", { hasText: "Deposit of ₹1,234.56 received" }).waitFor();
  await alice.waitForFunction((before) => document.querySelector('#balance dd[data-field="cash"]')?.textContent !== before, cashBefore, { timeout: WAIT });
  await audit(alice, "funds");
  await shot(alice, "funds");

  say("statement: the deposit is a row");
  await open(alice, "Statement", "Statement");
  await alice.locator("#statement tr[data-type=DEPOSIT]", { hasText: "+1,234.56" }).first().waitFor();
  await audit(alice, "statement");
  await shot(alice, "statement");

  say("inbox: bob crosses alice's INFY buy; her fill arrives live");
  await open(alice, "Inbox", "Inbox");
  await alice.locator("#unread").waitFor();
  const fillsBefore = await alice.locator("#inbox li[data-kind=FILL]").count();
  const token = async (name) => (await rest(null, "POST", "/api/v1/auth/login", { email: LOGINS[name].email, password: LOGINS[name].password })).accessToken;
  const [aliceToken, bobToken] = [await token("alice"), await token("bob")];
  const key = `e2e-${Date.now()}`;
  const order = { symbol: "INFY", type: "LIMIT", quantity: 1, price: "7450.00" };
  await rest(aliceToken, "POST", "/api/v1/orders", { ...order, side: "BUY", idempotencyKey: `${key}-buy` });
  await rest(bobToken, "POST", "/api/v1/orders", { ...order, side: "SELL", idempotencyKey: `${key}-sell` });
  await alice.waitForFunction((n) => document.querySelectorAll("#inbox li[data-kind=FILL]").length > n, fillsBefore, { timeout: WAIT });
  await alice.locator('#inbox li[data-kind=FILL][data-read="false"]', { hasText: "INFY" }).first().waitFor();
  await audit(alice, "inbox");
  await shot(alice, "inbox");
  await alice.getByRole("button", { name: "Mark all read" }).click();
  await alice.locator("#unread", { hasText: "All read." }).waitFor();

  say("GTT: alice creates a single GTT and sees it listed, then deletes it");
  await open(alice, "GTT", "GTT triggers");
  await alice.getByLabel("Symbol").fill("RELIANCE");
  await alice.getByLabel("Trigger (₹)").fill("16000.00");
  await alice.getByLabel("Quantity").fill("1");
  await alice.getByLabel("Limit price (₹)").fill("16000.00");
  await alice.getByRole("button", { name: "Create GTT" }).click();
  const made = alice.locator("#toasts", { hasText: /GTT \d+ on RELIANCE created/ }).last();
  await made.waitFor();
  const gttId = Number((await made.textContent()).match(/GTT (\d+)/)[1]);
  const listed = alice.locator(`#gtts tr[data-gtt="${gttId}"][data-status=ACTIVE]`);
  await listed.waitFor();
  assert.match(await listed.textContent(), />= ₹16,000.00: BUY 1 at ₹16,000.00/);
  await audit(alice, "gtt");
  await shot(alice, "gtt");
  await alice.getByRole("button", { name: `Delete GTT ${gttId}` }).click();
  await alice.getByLabel("Show").selectOption("");
  await alice.locator(`#gtts tr[data-gtt="${gttId}"][data-status=CANCELLED]`).waitFor();

  say("brackets: alice places a bracket (its entry rests), finds it listed, and exits it");
  await open(alice, "Brackets", "Bracket orders");
  await alice.getByLabel("Symbol").fill("RELIANCE");
  await alice.getByLabel("Quantity").fill("1");
  await alice.getByLabel("Entry limit price (₹)").fill("14000.00");
  await alice.getByLabel("Target (₹)").fill("14500.00");
  await alice.getByLabel("Stop-loss trigger (₹)").fill("13800.00");
  await alice.getByRole("button", { name: "Place bracket" }).click();
  const placed = alice.locator("#toasts .toast", { hasText: /Bracket \d+: entry order \d+ placed/ });
  await placed.waitFor();
  const bracketId = (await placed.textContent()).match(/Bracket (\d+)/)[1];
  await open(alice, "GTT", "GTT triggers"); // away and back: the screen lists it from the API
  await open(alice, "Brackets", "Bracket orders");
  await alice.locator(`#brackets tr[data-bracket="${bracketId}"][data-status=ACTIVE]`).waitFor();
  await alice.getByRole("button", { name: `Exit bracket ${bracketId}` }).click();
  await alice.locator(`#brackets tr[data-bracket="${bracketId}"]:not([data-status=ACTIVE])`).waitFor();
  await audit(alice, "brackets");
  await shot(alice, "brackets");

  say("operator: ops sees every shard alive and the consumers' lag");
  await logIn(ops, LOGINS.ops);
  await open(ops, "Operator", "Operations");
  await ops.locator("#shards tr[data-shard]").first().waitFor();
  const shards = await ops.locator("#shards tr[data-shard]").count();
  assert.ok(shards >= 1, "shards listed");
  assert.equal(await ops.locator('#shards tr[data-alive="true"]').count(), shards, "every shard has an active daemon");
  await ops.locator("#consumers tr[data-consumer=settlement]").waitFor();
  await ops.getByRole("heading", { name: "Reconciler", level: 2 }).waitFor();
  await audit(ops, "operator");
  await shot(ops, "operator");

  say("alice at /operator: not a page of hers");
  await alice.goto(`${EDGE}/operator`);
  await alice.getByRole("heading", { name: "Not found", level: 1 }).waitFor();
  await audit(alice, "not found");

  say("the API reference at /api/docs, from this origin only");
  const docs = await session.page(desktop);
  const elsewhere = []; // answers from another origin (the page's policy refuses to ask)
  docs.on("response", (response) => {
    const url = new URL(response.url());
    if (url.protocol !== "blob:" && url.origin !== new URL(EDGE).origin) elsewhere.push(response.url());
  });
  await docs.goto(`${EDGE}/api/docs`);
  await docs.getByText("/api/v1/operator/overview").first().waitFor({ timeout: WAIT });
  await docs.getByText("brokercore API").first().waitFor();
  assert.deepEqual(elsewhere, [], "the reference loaded nothing from another origin");
  await shot(docs, "api-docs", false); // the whole reference is a very long page
});
