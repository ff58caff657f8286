// The dashboard in a real browser, for tests/dashboard.rs: Debian's
// chromium through playwright-core. It signs in, finds the runs the test
// made, follows the slow run live, saves screenshots (desktop and phone),
// cancels the run and signs out. Exits non-zero at the first thing that
// does not hold, with a screenshot of the moment.
//
// Input (environment): DASHBOARD_URL, DASHBOARD_TOKEN, DASHBOARD_RUN_ID,
// DASHBOARD_ARTIFACTS (a folder), CHROMIUM, and DASHBOARD_README_IMAGE
// (optional: where the README's picture is replaced after a pass).
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("DASHBOARD_URL");
const token = env("DASHBOARD_TOKEN");
const runId = env("DASHBOARD_RUN_ID");
const artifacts = env("DASHBOARD_ARTIFACTS");
const readmeImage = process.env.DASHBOARD_README_IMAGE;
const WAIT = 30_000;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Everything a page sends and logs, to prove the token never lands in a
// URL or a console line.
function watch(page, seen) {
  page.on("request", (request) => seen.urls.push(request.url()));
  page.on("console", (message) => seen.console.push(message.text()));
  page.on("pageerror", (error) => seen.errors.push(String(error)));
}

async function signIn(page) {
  await page.goto(url + "/");
  await page.locator("#signin").waitFor({ state: "visible", timeout: WAIT });
  await page.fill("#token", token);
  await page.click("#signin-form button[type=submit]");
  await page.locator("#runs-view").waitFor({ state: "visible", timeout: WAIT });
  await page.locator(`tr[data-run-id="${runId}"]`).waitFor({ timeout: WAIT });
}

async function openLive(page) {
  await page.click(`tr[data-run-id="${runId}"] td.prompt a`);
  await page.locator("#run-view").waitFor({ state: "visible", timeout: WAIT });
  // The run's events arrive through the streaming reader: its start, the
  // agent's init and the tool call it is now running.
  await page.locator('#events li[data-type="run"]').waitFor({ timeout: WAIT });
  await page.locator('#events li[data-type="assistant"]', { hasText: "Bash" }).first().waitFor({ timeout: WAIT });
  await page.locator("#live-state", { hasText: "live" }).waitFor({ timeout: WAIT });
  await page.locator("#cancel").waitFor({ state: "visible", timeout: WAIT });
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  // Root in a container has no user namespace for chromium's own sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const seen = { urls: [], console: [], errors: [] };
let page;
try {
  await mkdir(artifacts, { recursive: true });
  const desktop = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: "UTC" });
  page = await desktop.newPage();
  watch(page, seen);

  // Signed out: the page asks for the token; a wrong one is refused.
  await page.goto(url + "/");
  await page.locator("#signin").waitFor({ state: "visible", timeout: WAIT });
  await page.fill("#token", "a-wrong-token-a-wrong-token-a-wrong-token");
  await page.click("#signin-form button[type=submit]");
  await page.locator("#signin-error", { hasText: "not accepted" }).waitFor({ timeout: WAIT });

  await signIn(page);
  const rows = page.locator("#runs-body tr");
  check((await rows.count()) === 3, `three runs listed, got ${await rows.count()}`);
  const first = await rows.first().getAttribute("data-run-id");
  if (first !== runId) {
    const listed = await page.evaluate(async (t) => {
      const r = await fetch("/runs", { headers: { Authorization: "Bearer " + t } });
      return (await r.json()).runs.map((run) => [run.run_id, run.status, run.created_at]);
    }, token);
    throw new Error(`the newest run (the live one) comes first: ${JSON.stringify(listed)}`);
  }
  const statuses = await page.locator("#runs-body .status").allTextContents();
  check(
    JSON.stringify(statuses) === JSON.stringify(["running", "succeeded", "succeeded"]),
    `statuses: ${statuses}`,
  );
  // Markup in a prompt is text on the page, never elements.
  await page.locator("#runs-body td.prompt", { hasText: "Summarize <b>report.csv</b> <img src=x>" }).waitFor({ timeout: WAIT });
  check((await page.locator("#runs-body img, #runs-body b").count()) === 0, "a prompt became markup");
  // Today's totals.
  await page.locator("#total-runs", { hasText: "3" }).waitFor({ timeout: WAIT });
  await page.locator("#total-failures", { hasText: "0" }).waitFor({ timeout: WAIT });
  await page.locator("#total-running", { hasText: "1" }).waitFor({ timeout: WAIT });
  const cost = await page.locator("#total-cost").textContent();
  check(/^\$\d+\.\d+$/.test(cost), `a cost total, got ${cost}`);
  // A status filter asks the server.
  await page.click('#filters button:text-is("succeeded")');
  await page.waitForFunction(() => document.querySelectorAll("#runs-body tr").length === 2, null, { timeout: WAIT });
  await page.click('#filters button:text-is("all")');
  await page.waitForFunction(() => document.querySelectorAll("#runs-body tr").length === 3, null, { timeout: WAIT });
  await page.screenshot({ path: join(artifacts, "list-desktop.png"), fullPage: true });

  // Pages: the list asks for 50 at a time; asked for 2, it shows "More",
  // which brings the third with the server's next_cursor.
  await page.route(/\/runs\?limit=50/, (route) => route.continue({ url: route.request().url().replace("limit=50", "limit=2") }));
  await page.click("#refresh");
  await page.waitForFunction(() => document.querySelectorAll("#runs-body tr").length === 2, null, { timeout: WAIT });
  await page.click("#more");
  await page.waitForFunction(() => document.querySelectorAll("#runs-body tr").length === 3, null, { timeout: WAIT });
  await page.locator("#more").waitFor({ state: "hidden", timeout: WAIT });
  await page.unroute(/\/runs\?limit=50/);

  // A finished attached run: its record, and no events to follow.
  await page.click('#runs-body td.prompt a:text-is("Write a haiku about sandstorms into poem.md")');
  await page.locator("#run-status", { hasText: "succeeded" }).waitFor({ timeout: WAIT });
  await page.locator("#live-state", { hasText: "not live" }).waitFor({ timeout: WAIT });
  check(!(await page.locator("#cancel").isVisible()), "no cancel button on a finished run");
  await page.click("a.back");
  await page.locator(`tr[data-run-id="${runId}"]`).waitFor({ timeout: WAIT });

  await openLive(page);
  await page.screenshot({ path: join(artifacts, "live-desktop.png"), fullPage: true });

  // The same on a phone: cards, not a table.
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    timezoneId: "UTC",
  });
  const small = await phone.newPage();
  watch(small, seen);
  await signIn(small);
  check(!(await small.locator("table.runs thead").isVisible()), "no table head on a phone");
  await small.screenshot({ path: join(artifacts, "list-phone.png"), fullPage: true });
  await openLive(small);
  await small.screenshot({ path: join(artifacts, "live-phone.png"), fullPage: true });
  await phone.close();

  // Cancel: the outcome shows, and the run's end arrives on the live view.
  await page.click("#cancel");
  await page.locator("#cancel-outcome", { hasText: "Cancelled" }).waitFor({ timeout: WAIT });
  await page.locator('#events li[data-type="error"]', { hasText: "cancelled" }).waitFor({ timeout: WAIT });
  await page.locator('#events li[data-type="done"]').waitFor({ timeout: WAIT });
  await page.locator("#live-state", { hasText: "finished" }).waitFor({ timeout: WAIT });
  await page.locator("#run-status", { hasText: "cancelled" }).waitFor({ timeout: WAIT });
  await page.screenshot({ path: join(artifacts, "live-cancelled-desktop.png"), fullPage: true });

  // Sign out forgets the token.
  await page.click("#signout");
  await page.locator("#signin").waitFor({ state: "visible", timeout: WAIT });
  const kept = await page.evaluate(() => sessionStorage.length);
  check(kept === 0, "sign-out leaves nothing in session storage");

  check(!seen.urls.some((u) => u.includes(token)), "the token was in a URL");
  check(!seen.console.some((line) => line.includes(token)), "the token was logged");
  check(seen.errors.length === 0, `page errors: ${seen.errors.join("; ")}`);
  // The README's picture is replaced only when asked, by a run that passed.
  if (readmeImage) {
    await mkdir(dirname(readmeImage), { recursive: true });
    await copyFile(join(artifacts, "list-desktop.png"), readmeImage);
  }
  console.log(`dashboard: ok (${seen.urls.length} requests)`);
} catch (error) {
  if (page) await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`dashboard: ${error && error.stack ? error.stack : error}`);
  console.error(`console: ${seen.console.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
