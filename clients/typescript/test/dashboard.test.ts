// The gateway's dashboard (`/`) in a real headless Chromium (Debian's, driven by
// playwright-core): it loads on the embedded default, shows a signal within 10 s, rides
// out a cut network (resumed, nothing lost) and a gateway restart (told: recovered
// false), and a screenshot of it is taken and checked.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { chromium, type Page } from "playwright-core";

import { Proxy, Server, freePort, repo, token } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Without these, Chromium reaches out to Google at start, which this network refuses.
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function text(page: Page, selector: string): Promise<string> {
  return (await page.locator(selector).textContent()) ?? "";
}

test("the dashboard shows live signals and survives a cut network and a gateway restart", async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium; scripts/test.sh does)`);
  // The embedded default with its demo producer: signals flow at once.
  const server = await Server.start({ demo: true, httpPort: await freePort() });
  // The page is loaded through a proxy, so that its socket can be cut like a network.
  const proxy = await Proxy.start(server.httpPort);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const errors: string[] = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    const started = Date.now();
    await page.goto(`http://127.0.0.1:${proxy.port}/`);

    // The dev token picker picks the enterprise user: every tier's table is on.
    await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
    assert.equal(await text(page, "#tier"), "enterprise");
    // The page's socket carried its token in the subprotocol: nothing in the request
    // line a proxy logs, and Chromium accepted the gateway's answer (signalcast.v1).
    const upgrade = proxy.upgrades[0] ?? "";
    assert.match(upgrade, /^GET \/ws HTTP\/1\.1\r\n/, upgrade);
    assert.match(upgrade, /^sec-websocket-protocol: signalcast\.v1, signalcast\.token\.ey[\w-]+\.[\w-]+\.[\w-]+\r?$/im, upgrade);
    await page.waitForSelector("#tier-enterprise tbody tr", { timeout: 10_000 });
    const firstSignal = Date.now() - started;
    assert.ok(firstSignal < 10_000, `first signal after ${firstSignal} ms`);
    const row = page.locator("#tier-enterprise tbody tr").first();
    const cells = await row.locator("td").allTextContents();
    assert.match(cells[6]!, /^\d+\.\d{4}$/, `entry price: ${cells}`);
    assert.match(cells[9]!, /^\d+\.\d{2}$/, `confidence: ${cells}`);
    assert.ok(await page.locator("#tier-free").isVisible(), "lower tiers are shown too");

    // The metrics charts have data after two scrapes.
    await page.waitForFunction(() => Number(document.getElementById("routed")?.textContent?.replace(/\D/g, "")) > 0, null, {
      timeout: 10_000,
    });

    // Some scrapes for the charts, then a cut network: the page reconnects through the
    // proxy and resumes, nothing lost.
    await page.waitForTimeout(10_000);
    const seqBefore = Number(await page.locator("#tier-enterprise tbody tr").first().getAttribute("data-seq"));
    assert.ok(proxy.cut() > 0);
    await page.waitForSelector('#resume[data-recovered="true"]', { timeout: 15_000 });
    await page.waitForSelector('#state[data-state="open"]');
    assert.equal(await text(page, "#reconnects"), "1");
    await page.waitForFunction(
      (s) => Number(document.querySelector("#tier-enterprise tbody tr")?.getAttribute("data-seq")) > s,
      seqBefore,
      { timeout: 15_000 },
    );
    const seqs = (await page.locator("#tier-enterprise tbody tr").evaluateAll((trs) => trs.map((t) => Number(t.getAttribute("data-seq")))))
      .reverse();
    assert.ok(seqs.every((s, i) => i === 0 || s === seqs[i - 1]! + 1), `no gap across the cut: ${seqs}`);

    // The picture (README): after the resume, with a few scrapes in the charts.
    const dir = join(repo, "target", "dashboard");
    mkdirSync(dir, { recursive: true });
    const path = join(dir, "dashboard.png");
    await page.screenshot({ path, fullPage: true });
    const png = readFileSync(path);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], "a PNG");
    assert.ok(png.length > 20_000, `a screenshot with something in it: ${png.length} bytes`);
    assert.equal(png.readUInt32BE(16), 1440, "as wide as the viewport");
    console.log(`dashboard: first signal after ${firstSignal} ms; screenshot ${path} (${png.length} bytes)`);

    // A gateway restart: a new process, a new epoch; the page says so and goes on.
    await server.restart("SIGKILL");
    await page.waitForSelector('#resume[data-recovered="false"]', { timeout: 20_000 });
    await page.waitForSelector('#state[data-state="open"]');
    assert.equal(await text(page, "#reconnects"), "2");
    const top = await page.locator("#tier-enterprise tbody tr").first().getAttribute("data-id");
    await page.waitForFunction(
      (id) => document.querySelector("#tier-enterprise tbody tr")?.getAttribute("data-id") !== id,
      top,
      { timeout: 15_000 },
    );

    assert.deepEqual(errors, [], "no script error on the page");
  } finally {
    await browser.close();
    await proxy.close();
    await server.stop();
  }
});

test("a token given in the page's fragment connects and leaves the address bar; charts say where /metrics went", async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing`);
  const metricsPort = await freePort();
  const server = await Server.start({ env: { SIGNALCAST_METRICS_LISTEN: `127.0.0.1:${metricsPort}` } });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const errors: string[] = [];
  try {
    const page = await browser.newPage();
    page.on("pageerror", (e) => errors.push(String(e)));
    const t = token("u-basic-1");
    // The fragment never leaves the browser: the page's own request carries no token.
    await page.goto(`${server.http}/#token=${t}`);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
    assert.equal(await text(page, "#user"), "u-basic-1", "the given token, not the picker's");
    assert.ok(!page.url().includes(t.split(".")[2]!), `the token left the address bar: ${page.url()}`);
    // /metrics has its own listener here: the client port answers 404 and the page says why.
    await page.waitForSelector("#metrics-elsewhere:not([hidden])", { timeout: 10_000 });
    const scraped = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    assert.equal(scraped.status, 200);
    assert.deepEqual(errors, [], "no script error on the page");
  } finally {
    await browser.close();
    await server.stop();
  }
});
