// Opens a finished, failed job's page in Debian's headless Chromium, checks that the failed
// service's box is marked failed, clicks it, checks that its log tail shows, and takes a
// screenshot. Usage: node job-page.mjs BASE_URL JOB SERVICE EXPECTED_LOG_LINE SCREENSHOT.png
import { chromium } from "playwright-core";

const [base, job, service, expected, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root in a sandboxless container; and no background traffic to the closed network.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  await page.goto(`${base}/jobs/${job}`);
  const box = page.locator(`a.box[data-service="${service}"][data-stage="check"]`);
  const classes = await box.getAttribute("class");
  if (!classes.split(" ").includes("failed")) throw new Error(`box is not marked failed: ${classes}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  await box.click();
  await page.waitForURL(`**/jobs/${job}/log?service=${service}`);
  const log = await page.locator("#log").innerText();
  if (!log.includes(expected)) throw new Error(`log does not show "${expected}":\n${log}`);
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-log.png"), fullPage: true });
  console.log(`ok: ${service} is marked failed and its log shows "${expected}"`);
} finally {
  await browser.close();
}
