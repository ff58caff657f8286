// A trace in Phoenix's UI, as a PNG, for the docs: Debian's chromium through
// playwright-core (no browser of its own). It opens the trace by its
// OpenTelemetry id, waits until the trace's spans are drawn, and saves a
// screenshot of the page.
//
//   node tests/observability/screenshot.mjs PHOENIX_URL TRACE_ID OUT.png [SPAN_NAME]
//
// PHOENIX_URL is Phoenix's UI (http://127.0.0.1:PORT, see
// tests/common/phoenix.rs), TRACE_ID the trace's 32 hex digits. SPAN_NAME,
// when given, is waited for in the span tree and selected, so its details
// are what the picture shows (by default the trace's root is). CHROMIUM
// names the browser (default /usr/bin/chromium).
//
// The browser may only reach loopback: every other request is refused and
// fails the run (Phoenix started with PHOENIX_ALLOW_EXTERNAL_RESOURCES=false
// makes none). Exits non-zero, with a screenshot of the moment next to
// OUT.png (OUT.failure.png), if the trace does not show.
import { mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import { chromium } from "playwright-core";

const [url, traceId, out, spanName] = process.argv.slice(2);
if (!url || !/^[0-9a-f]{32}$/.test(traceId ?? "") || !out) {
  console.error("usage: node screenshot.mjs PHOENIX_URL TRACE_ID OUT.png [SPAN_NAME]");
  process.exit(2);
}
const WAIT = 30_000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // Root in a container has no user namespace for chromium's own sandbox.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const offLoopback = [];
const errors = [];
let requests = 0;
let page;
try {
  const context = await browser.newContext({
    viewport: { width: 1440, height: 900 },
    deviceScaleFactor: 1,
    timezoneId: "UTC",
    locale: "en-US",
    colorScheme: "dark",
  });
  await context.route("**/*", (route) => {
    const { protocol, hostname } = new URL(route.request().url());
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(hostname);
    requests += 1;
    if (loopback || protocol === "data:" || protocol === "blob:") return route.continue();
    offLoopback.push(route.request().url());
    return route.abort("blockedbyclient");
  });
  page = await context.newPage();
  page.on("pageerror", (error) => errors.push(String(error)));

  // Phoenix's own link for a trace by its OpenTelemetry id: it finds the
  // project and opens the trace there.
  await page.goto(`${url.replace(/\/$/, "")}/redirects/traces/${traceId}`);
  await page.waitForURL(/\/projects\/[^/]+\/traces\//, { timeout: WAIT });
  // The trace's panel: its id in the header, then its span tree.
  await page.getByText(traceId, { exact: true }).first().waitFor({ timeout: WAIT });
  await page.waitForLoadState("networkidle", { timeout: WAIT });
  if (spanName) {
    await page.getByText(spanName, { exact: true }).first().click({ timeout: WAIT });
    // Selected, its name shows twice: in the tree and over its details.
    await page.waitForFunction(
      (name) => [...document.querySelectorAll("body *")].filter((e) => e.childElementCount === 0 && e.textContent === name).length >= 2,
      spanName,
      { timeout: WAIT },
    );
    await page.waitForLoadState("networkidle", { timeout: WAIT });
  }
  await mkdir(dirname(out), { recursive: true });
  await page.screenshot({ path: out });
  console.log(`screenshot: ${out} (${page.url()}, ${requests} requests, all to loopback)`);
} catch (error) {
  if (page) await page.screenshot({ path: out.replace(/\.png$/, "") + ".failure.png" }).catch(() => {});
  console.error(`screenshot: ${error && error.stack ? error.stack : error}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
if (offLoopback.length) {
  console.error(`requests off loopback, refused: ${offLoopback.join(" ")}`);
  process.exitCode = 1;
}
if (errors.length) console.error(`page errors: ${errors.join("; ")}`);
