// The dashboard in a real browser (Debian's chromium, driven by playwright-core): it opens
// the page of a running aggregator fed by a small fleet, and checks that an alert appears in
// the feed, that a courier's marker moves, and that an alert opens its task's timeline; it
// saves a screenshot. Usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT
import { chromium } from "playwright-core";

const [base, token, screenshot] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${base}/#token=${encodeURIComponent(token)}`);
  await page.waitForSelector("#live.on", { timeout: 30_000 });

  // A courier marker moves: a courier's position and its place on the canvas change.
  await page.waitForFunction(() => window.fleet.couriers.size > 0 && [...window.fleet.couriers.values()].some((c) => c.x !== undefined), null, { timeout: 60_000 });
  const before = await page.evaluate(() =>
    Object.fromEntries([...window.fleet.couriers].map(([id, c]) => [id, [c.lat, c.lon, c.x, c.y]])),
  );
  await page.waitForFunction(
    (before) =>
      [...window.fleet.couriers].some(([id, c]) => {
        const b = before[id];
        return b && (c.lat !== b[0] || c.lon !== b[1]) && (Math.abs(c.x - b[2]) > 0.01 || Math.abs(c.y - b[3]) > 0.01);
      }),
    before,
    { timeout: 60_000 },
  );
  console.log("a courier marker moved");

  // An alert appears in the feed, and opens its task's timeline.
  const alert = await page.waitForSelector("#alerts li.alert", { timeout: 120_000 });
  console.log(`an alert in the feed: ${(await alert.innerText()).split("\n")[0]}`);
  await alert.click();
  await page.waitForSelector("#task-panel:not([hidden]) #timeline tbody tr", { timeout: 30_000 });
  const rows = await page.locator("#timeline tbody tr").count();
  console.log(`its task's timeline: ${rows} rows`);
  await page.waitForSelector("#devices tbody tr", { timeout: 30_000 });
  // The drift panel shows the model's score and features against its training baseline.
  await page.waitForFunction(() => document.querySelectorAll("#drift tbody tr.drift").length >= 2, null, { timeout: 60_000 });
  const drift = await page.locator("#drift tbody tr").first().innerText();
  console.log(`drift: ${drift.replace(/\s+/g, " ")}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
} finally {
  await browser.close();
}
if (errors.length) {
  console.error(`errors on the page: ${errors.join("; ")}`);
  process.exit(1);
}
