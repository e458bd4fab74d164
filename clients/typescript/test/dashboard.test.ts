// The gateway's dashboard (`/`) in a real headless Chromium (Debian's, driven by
// playwright-core): it loads on the embedded default, shows a signal within 10 s, rides
// out a cut network (resumed, nothing lost) and a gateway restart (told: recovered
// false), and a screenshot of it is taken and checked; it scrolls back through history
// (/v1/signals/history) below the live rows.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { chromium, type Page } from "playwright-core";

import { PRODUCER, Proxy, Server, freePort, publish, publishTicks, rawSignal, repo, token } from "./harness.js";

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
    // Every message of the channel, signals and their closes (docs/outcomes.md), in order.
    const received = ((await page.locator("#tier-enterprise").getAttribute("data-received")) ?? "").split(",").map(Number);
    assert.ok(received.length > 1 && received.some((s) => s <= seqBefore) && received.at(-1)! > seqBefore, `${received}`);
    assert.ok(received.every((s, i) => i === 0 || s === received[i - 1]! + 1), `no gap across the cut: ${received}`);

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

test("scrolling back: older signals from history appear below the live ones, each once, under the page's CSP", async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing`);
  const server = await Server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const errors: string[] = [];
  try {
    // 70 signals before the page opens: history only (a new subscription starts live).
    const before = await publish(server, Array.from({ length: 70 }, (_, i) => rawSignal(i + 1)));
    const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => {
      // (The browser's own request for /favicon.ico is answered 404: not the page's doing.)
      if (m.location().url.endsWith("/favicon.ico")) return;
      if (m.type() === "error" || /Content.Security.Policy/i.test(m.text())) errors.push(`${m.text()} (${m.location().url})`);
    });
    await page.goto(server.http);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
    assert.equal(await text(page, "#tier"), "enterprise");
    await page.waitForSelector("#tier-enterprise .empty:not([hidden])");
    // Three live ones.
    const live = await publish(server, [71, 72, 73].map((n) => rawSignal(n, { symbol: "TCS" })));
    const rows = page.locator("#tier-enterprise tbody tr");
    await page.waitForFunction(() => document.querySelectorAll("#tier-enterprise tbody tr").length === 3, null, { timeout: 10_000 });
    const seqsOf = async () => rows.evaluateAll((trs) => trs.map((t) => Number(t.getAttribute("data-seq"))));
    const idsOf = async () => rows.evaluateAll((trs) => trs.map((t) => t.getAttribute("data-id")));
    assert.deepEqual(await seqsOf(), [73, 72, 71]);

    // "load older": the page below the live rows, through the page's own token.
    await page.locator("#tier-enterprise .load-older").click();
    await page.waitForFunction(() => document.querySelectorAll("#tier-enterprise tbody tr.older").length > 0, null, { timeout: 10_000 });
    await page.waitForSelector('#tier-enterprise[data-older="more"]');
    let seqs = await seqsOf();
    assert.ok(seqs.length > 3 + 25 && seqs.length < 73, `a page or so: ${seqs.length} rows`);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => 73 - i), "live, then older ones below, no gap, no repeat");
    assert.equal(await page.locator("#tier-enterprise tbody tr.older").count(), seqs.length - 3);
    assert.equal(await page.locator("#tier-enterprise tbody tr.older td").nth(1).textContent(), "RELIANCE");

    // Scrolling the table to its end loads the rest, down to the first signal.
    const scroller = page.locator("#tier-enterprise .rows");
    assert.ok(await scroller.evaluate((el) => el.scrollHeight > el.clientHeight), "the table scrolls");
    await scroller.hover();
    for (let i = 0; i < 40 && (await page.locator("#tier-enterprise").getAttribute("data-older")) !== "done"; i++) {
      await page.mouse.wheel(0, 2000);
      await page.waitForTimeout(100);
    }
    await page.waitForSelector('#tier-enterprise[data-older="done"]', { timeout: 10_000 });
    seqs = await seqsOf();
    assert.deepEqual(seqs, Array.from({ length: 73 }, (_, i) => 73 - i), "every signal, once, newest first");
    assert.deepEqual(await idsOf(), [...before, ...live].reverse());
    assert.match(await text(page, "#tier-enterprise .older-state"), /70 older shown.*beginning of history/);
    assert.ok(await page.locator("#tier-enterprise .load-older").isDisabled());
    // The free table takes the signals of its own channel (95.00: all of them).
    await page.locator("#tier-free .load-older").click();
    await page.waitForFunction(() => document.querySelectorAll("#tier-free tbody tr.older").length > 25, null, { timeout: 10_000 });
    const free = await page.locator("#tier-free tbody tr").evaluateAll((trs) => trs.map((t) => Number(t.getAttribute("data-seq"))));
    assert.deepEqual(free, Array.from({ length: free.length }, (_, i) => 73 - i), "the free channel's seqs");

    // A live signal still goes on top, and the older rows stay.
    await publish(server, [rawSignal(74)]);
    await page.waitForFunction(() => document.querySelector("#tier-enterprise tbody tr")?.getAttribute("data-seq") === "74", null, {
      timeout: 10_000,
    });
    assert.equal(await rows.count(), 74);

    // Two TCS ticks: the entry of 71..73 (routed with no snapshot), then past their
    // target of 2500: each row shows its close, and the scoreboard counts them.
    const auth = `Basic ${Buffer.from(`${PRODUCER.id}:${PRODUCER.key}`).toString("base64")}`;
    const ticks = ["2456.7500", "2510.0000"]
      .map((last, i) => JSON.stringify({ symbol: "TCS", exchange: "NSE", bid: last, ask: last, last, volume: 1, ts: i + 1 }))
      .join("\n");
    const posted = await fetch(`${server.http}/v1/ticks`, {
      method: "POST",
      headers: { Authorization: auth, "Content-Type": "application/x-ndjson" },
      body: ticks,
    });
    assert.equal(posted.status, 200, await posted.text());
    const closed = page.locator(`#tier-enterprise tbody tr[data-id="${live[2]}"]`);
    await page.waitForSelector(`#tier-enterprise tbody tr[data-id="${live[2]}"][data-status="target_hit"]`, { timeout: 10_000 });
    assert.equal(await closed.locator("td.status").textContent(), "target hit +2.1675%");
    assert.equal(await rows.count(), 74, "a close updates its row, it adds none");
    await page.waitForFunction(
      () => Number(document.querySelector("#scoreboard tbody tr td:nth-child(5)")?.textContent) >= 3,
      null,
      { timeout: 40_000 },
    );
    assert.ok(await page.locator("#scoreboard").isVisible());
    assert.deepEqual(errors, [], "no script error and no CSP violation on the page");
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("the symbol filter box: prices and new signals of the watched symbols only", async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing`);
  const server = await Server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const errors: string[] = [];
  try {
    await publishTicks(server, [
      ["GOLD", "MCX", "72000"],
      ["SILVER", "MCX", "90000"],
    ]);
    const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(server.http);
    await page.waitForSelector('#state[data-state="open"]', { timeout: 10_000 });
    await page.waitForFunction(() => document.querySelectorAll("#prices span").length === 2, null, { timeout: 10_000 });
    await page.locator("#symbols-input").fill("GOLD, NSE:TCS");
    await page.locator("#apply-symbols").click();
    await page.waitForFunction(
      () => Array.from(document.querySelectorAll("#prices span b"), (b) => b.textContent).join() === "GOLD",
      null,
      { timeout: 10_000 },
    );
    assert.match(await text(page, "#watching"), /watching GOLD, NSE:TCS/);
    // Signals: INFY is left out by the server, TCS arrives.
    await new Promise((r) => setTimeout(r, 300));
    await publish(server, [rawSignal(1, { symbol: "INFY" }), rawSignal(2, { symbol: "TCS" })]);
    await page.waitForSelector("#tier-enterprise tbody tr", { timeout: 10_000 });
    await page.waitForTimeout(500);
    const symbols = await page.locator("#tier-enterprise tbody tr td:nth-child(2)").allTextContents();
    assert.deepEqual(symbols, ["TCS"]);
    await publishTicks(server, [["SILVER", "MCX", "90001"]]);
    await page.waitForTimeout(300);
    assert.equal(await page.locator("#prices span").count(), 1, "no price off the watchlist");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await server.stop();
  }
});

test("Chromium negotiates permessage-deflate and reads the compressed signals as they were sent", async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing`);
  const server = await Server.start();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  try {
    const page = await browser.newPage();
    await page.goto(server.http);
    // A socket of the page's own, as any browser app opens one: Chromium offers the
    // extension by itself, and inflates what comes compressed before the page sees it.
    const opened = page.evaluate(
      ({ url, protocols }) =>
        new Promise<{ extensions: string; signal: { type: string; seq: number; data: { id: string } } }>(
          (resolve, reject) => {
            const ws = new WebSocket(url, protocols);
            const timer = setTimeout(() => reject(new Error("no SIGNAL_UPDATE in 15 s")), 15_000);
            ws.onopen = () => ws.send(JSON.stringify({ type: "SUBSCRIBE", channel: "signals_enterprise" }));
            ws.onmessage = (e) => {
              const m = JSON.parse(e.data as string);
              if (m.type === "SUBSCRIBED") (window as unknown as { subscribed: boolean }).subscribed = true;
              if (m.type === "SIGNAL_UPDATE") {
                clearTimeout(timer);
                resolve({ extensions: ws.extensions, signal: m });
                ws.close();
              }
            };
            ws.onerror = () => reject(new Error("socket error"));
          },
        ),
      { url: server.ws, protocols: ["signalcast.v1", `signalcast.token.${token("u-enterprise-1")}`] },
    );
    await page.waitForFunction(() => (window as unknown as { subscribed?: boolean }).subscribed === true, null, {
      timeout: 10_000,
    });
    const [id] = await publish(server, [rawSignal(901)]);
    const { extensions, signal } = await opened;
    assert.equal(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    assert.equal(signal.type, "SIGNAL_UPDATE");
    assert.equal(signal.data.id, id);
    const compressed = await server.metric("signalcast_deflate_messages_total");
    assert.ok(compressed >= 1, `the signal went compressed (signalcast_deflate_messages_total ${compressed})`);
  } finally {
    await browser.close();
    await server.stop();
  }
});
