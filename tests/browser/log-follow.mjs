// Opens a running job's log page for one service in Debian's headless Chromium, prints
// "opened", then waits for a line the caller appends after that to show, and checks that a
// line of another service, appended before it, does not. Usage:
// node log-follow.mjs BASE_URL JOB SERVICE EXPECTED_LINE OTHER_LINE
import { chromium } from "playwright-core";

const [base, job, service, expected, other] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root in a sandboxless container; and no background traffic to the closed network.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/jobs/${job}/log?service=${service}`);
  console.log("opened");
  const log = page.locator("#log");
  await log.filter({ hasText: expected }).waitFor({ timeout: 10000 });
  const text = await log.innerText();
  if (text.includes(other)) throw new Error(`another service's line shows:\n${text}`);
  console.log(`ok: the log page of ${service} shows "${expected}" as it comes`);
} finally {
  await browser.close();
}
