// What the browser tests share: their settings, progress lines, screenshots, logging in,
// the navigation, the accessibility audit (audit(): axe-core, WCAG 2.1 AA), and run(),
// which launches Debian's chromium (playwright-core, never a downloaded browser), hands
// out pages, and on the first failure names the step, screenshots every page
// (failure-N.png) and exits non-zero. Settings (environment):
//   BROKERCORE_EDGE         the edge's URL (default http://127.0.0.1:8080)
//   BROKERCORE_LOGINS       {"alice": {"email", "password"}, ...}: the demo users
//   BROKERCORE_SCREENSHOTS  where screenshots go (default /tmp/brokercore-screenshots)
//   BROKERCORE_CHROMIUM     the browser (default /usr/bin/chromium)
//   BROKERCORE_E2E_WAIT_MS  how long any one condition is waited for (default 20000)

import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const EDGE = process.env.BROKERCORE_EDGE ?? "http://127.0.0.1:8080";
export const LOGINS = JSON.parse(process.env.BROKERCORE_LOGINS ?? "{}");
export const SHOTS = process.env.BROKERCORE_SCREENSHOTS ?? "/tmp/brokercore-screenshots";
export const WAIT = Number(process.env.BROKERCORE_E2E_WAIT_MS ?? 20_000);
const BROWSER = process.env.BROKERCORE_CHROMIUM ?? "/usr/bin/chromium";
const AXE = createRequire(import.meta.url).resolve("axe-core/axe.min.js"); // web/node_modules'
// WCAG 2.0 and 2.1, levels A and AA: what issue 17's "accessible" is checked against
const WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

const started = Date.now();
let step = "start";

/** A progress line; the step a failure is reported in. */
export function say(text) {
  step = text;
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);
}

export async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage });
}

/**
 * The accessibility audit of `page` as it is now, named `screen` in the failure: axe-core
 * (its script added to the page from node_modules) with the WCAG 2.1 A and AA rules on the
 * whole document. Throws with one line per violation (rule, impact, what it says) and the
 * selectors of the elements it found. Once per screen and viewport: each run costs time.
 */
export async function audit(page, screen) {
  if (!(await page.evaluate(() => "axe" in window))) await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async (tags) => {
    const result = await window.axe.run(document, { runOnly: { type: "tag", values: tags }, resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(" ")) }));
  }, WCAG);
  if (!violations.length) return;
  const width = page.viewportSize()?.width;
  const lines = violations.map((v) => `  ${v.id} (${v.impact}): ${v.help}\n${v.targets.map((t) => `      ${t}`).join("\n")}`);
  throw new Error(`accessibility of ${screen} (${width}px wide): ${violations.length} WCAG 2.1 AA violations\n${lines.join("\n")}`);
}

/** Log in through the login screen; back on the watchlist with the socket live. */
export async function logIn(page, { email, password }) {
  await page.goto(`${EDGE}/login`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Watchlist", level: 1 }).waitFor();
  await page.locator("#connection[data-state=live]").waitFor();
}

/** A screen through the main navigation (no page load: the WebSocket stays up); on a
 * phone, through its Menu button. */
export async function open(page, label, heading) {
  const link = page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: label, exact: true });
  if (!(await link.isVisible())) await page.getByRole("button", { name: "Menu" }).click();
  await link.click();
  await page.getByRole("heading", { name: heading, level: 1 }).waitFor();
}

/**
 * Run `body(session)` in a fresh browser. `session.page(options)` opens a page in a new
 * browser context (options: Playwright's context options); `session.onEnd(f)` runs f at
 * the end, passed or failed. A script error in any page fails the run.
 */
export async function run(body) {
  mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: BROWSER,
    headless: true,
    args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
  });
  const pages = [];
  const errors = [];
  const endings = [];
  const session = {
    async page(options = {}) {
      const context = await browser.newContext({ ...options, baseURL: EDGE });
      context.setDefaultTimeout(WAIT);
      const page = await context.newPage();
      page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));
      pages.push(page);
      return page;
    },
    onEnd(f) {
      endings.push(f);
    },
  };
  try {
    await body(session);
    if (errors.length) throw new Error(`script errors in the pages:\n${errors.join("\n")}`);
    say(`passed: screenshots in ${SHOTS}`);
  } catch (e) {
    console.error(`FAILED at step "${step}": ${e.stack ?? e}`);
    for (const [i, page] of pages.entries()) {
      await page.screenshot({ path: join(SHOTS, `failure-${i}.png`), fullPage: true }).catch(() => undefined);
    }
    process.exitCode = 1;
  } finally {
    for (const f of endings) await f();
    await browser.close();
  }
}
