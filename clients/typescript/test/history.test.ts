// The client's HTTP API calls against a real signalcast process: `history()` newest
// first with the caller's channels, pages through `next` (by hand and with
// `historyPages`) covering everything exactly once, filters, `live()`, and refusals as
// a typed `SignalcastHttpError` (400, 401, 429 with retryAfter). The token travels in
// the Authorization header, never in the URL.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  SignalcastClient,
  SignalcastHttpError,
  httpBase,
  type ClientOptions,
  type FetchLike,
  type HistoryItem,
  type WebSocketConstructor,
} from "../src/index.js";
import { Server, publish, rawSignal, token } from "./harness.js";

function client(options: Omit<ClientOptions, "WebSocket">): SignalcastClient {
  return new SignalcastClient({ ...options, WebSocket: WebSocket as unknown as WebSocketConstructor });
}

async function refusal(p: Promise<unknown>): Promise<SignalcastHttpError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof SignalcastHttpError, `a SignalcastHttpError: ${String(e)}`);
    return e;
  }
  assert.fail("the request was not refused");
}

test("the HTTP base comes from the WebSocket URL", () => {
  assert.equal(httpBase("ws://127.0.0.1:8080/ws"), "http://127.0.0.1:8080");
  assert.equal(httpBase("wss://signals.example.com/ws"), "https://signals.example.com");
  assert.equal(httpBase("wss://example.com/signalcast/ws/?x=1#f"), "https://example.com/signalcast");
  assert.equal(httpBase("wss://example.com"), "https://example.com");
  assert.throws(() => httpBase("ftp://example.com/ws"));
});

describe("history and live against a signalcast process", () => {
  let server: Server;
  /** Published ids, oldest first. */
  let ids: string[] = [];
  const kind = new Map<string, "tcs" | "crypto" | "reliance">();

  before(async () => {
    server = await Server.start();
    // Twelve signals: every third on TCS, two crypto, the rest RELIANCE.
    const signals = Array.from({ length: 12 }, (_, i) => {
      const n = i + 1;
      if (n === 5 || n === 10) {
        return { signal: rawSignal(n, {
            symbol: "BTCUSDT",
            exchange: "BINANCE",
            category: "crypto",
            signal_type: "sell",
            entry_price: "64000.0000",
            target_price: "62000.0000",
            stop_loss: "65000.0000",
          }), k: "crypto" as const };
      }
      if (n % 3 === 0) return { signal: rawSignal(n, { symbol: "TCS" }), k: "tcs" as const };
      return { signal: rawSignal(n), k: "reliance" as const };
    });
    ids = await publish(server, signals.map((s) => s.signal));
    signals.forEach((s, i) => kind.set(ids[i]!, s.k));
  });
  after(async () => {
    await server.stop();
  });

  test("history() is newest first, each item the SIGNAL_UPDATE data with its channels", async () => {
    const c = client({ url: server.ws, token: token("u-premium-1") });
    const page = await c.history();
    assert.deepEqual(
      page.items.map((i) => i.id),
      [...ids].reverse(),
    );
    assert.equal(page.next, null);
    assert.equal(page.withheld, undefined);
    const oldest: HistoryItem = page.items.at(-1)!;
    assert.equal(oldest.symbol, "RELIANCE");
    assert.equal(oldest.entry_price, "2456.7500");
    assert.equal(oldest.confidence, 95);
    assert.equal(typeof oldest.routed_ts, "number");
    assert.equal(oldest.channels["signals_premium"], 1, JSON.stringify(oldest.channels));
    assert.equal(oldest.channels["signals_free"], 1);
    assert.equal(oldest.channels["signals_enterprise"], undefined, "only channels the caller may read");
    assert.equal(page.items[0]!.channels["signals_premium"], 12);
  });

  test("pages through next cover every signal exactly once, in order", async () => {
    const c = client({ url: server.ws, token: () => token("u-enterprise-1") });
    const seen: string[] = [];
    const sizes: number[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await c.history({ limit: 5, cursor });
      seen.push(...page.items.map((i) => i.id));
      sizes.push(page.items.length);
      if (page.next === null) break;
      cursor = page.next;
    }
    assert.deepEqual(seen, [...ids].reverse());
    assert.deepEqual(sizes, [5, 5, 2]);

    // The same through the iterator, and a filter kept across pages.
    const pages = [];
    for await (const page of c.historyPages({ limit: 2, symbol: "TCS" })) pages.push(page);
    const tcs = ids.filter((id) => kind.get(id) === "tcs").reverse();
    assert.deepEqual(
      pages.flatMap((p) => p.items.map((i) => i.id)),
      tcs,
    );
    assert.deepEqual(
      pages.map((p) => p.items.length),
      [2, 2],
    );
    assert.equal(pages.at(-1)!.next, null);

    // Breaking out early asks for no more.
    let n = 0;
    for await (const page of c.historyPages({ limit: 3 })) {
      n += page.items.length;
      break;
    }
    assert.equal(n, 3);
  });

  test("filters: symbol, category, signal_type, time", async () => {
    const c = client({ url: server.ws, token: token("u-premium-1") });
    const only = (k: string) => ids.filter((id) => kind.get(id) === k).reverse();
    assert.deepEqual(
      (await c.history({ symbol: "TCS" })).items.map((i) => i.id),
      only("tcs"),
    );
    const crypto = await c.history({ category: ["crypto"] });
    assert.deepEqual(
      crypto.items.map((i) => i.id),
      only("crypto"),
    );
    assert.ok(crypto.items.every((i) => i.category === "crypto" && i.exchange === "BINANCE"));
    assert.deepEqual(
      (await c.history({ signal_type: "sell", exchange: "BINANCE" })).items.map((i) => i.id),
      only("crypto"),
    );
    assert.deepEqual((await c.history({ status: "target_hit" })).items, [], "no outcome yet");
    // `to` is exclusive: before the newest one's routing time (µs, or a Date).
    const all = (await c.history()).items;
    const newest = all[0]!;
    assert.deepEqual(
      (await c.history({ to: newest.routed_ts })).items.map((i) => i.id),
      all.slice(1).map((i) => i.id),
    );
    assert.equal((await c.history({ from: new Date(Date.now() + 60_000) })).items.length, 0);
    assert.equal((await c.history({ from: "1970-01-01T00:00:00Z", limit: 1 })).items[0]!.id, newest.id);
  });

  test("live() lists the open signals, newest first, in pages", async () => {
    const c = client({ url: server.ws, token: token("u-premium-1") });
    const first = await c.live({ limit: 4 });
    assert.deepEqual(
      first.items.map((i) => i.id),
      [...ids].reverse().slice(0, 4),
    );
    assert.equal(typeof first.next, "string");
    const second = await c.live({ limit: 50, cursor: first.next! });
    assert.deepEqual(
      second.items.map((i) => i.id),
      [...ids].reverse().slice(4),
    );
    assert.equal(second.next, null);
  });

  test("sources() and symbolStats() read the scoreboard with any signed-in token", async () => {
    // Open calls count only for those they were released to: in full for enterprise.
    const c = client({ url: server.ws, token: token("u-enterprise-1") });
    const board = await c.sources();
    assert.equal(typeof board.generated_at, "number");
    const source = board.sources.find((s) => s.source_id === "5eacdd1d-446b-4985-8de0-f44da0e8f005");
    assert.ok(source, JSON.stringify(board));
    assert.equal(source.windows.day.signals, 12);
    assert.equal(source.windows.all.open, 12, "nothing closed yet");
    assert.equal(source.windows.all.hit_rate, null);
    assert.equal(source.categories.crypto?.all.signals, 2);
    const tcs = await c.symbolStats("TCS", { exchange: "NSE" });
    assert.equal(tcs.symbol, "TCS");
    assert.equal(tcs.signals, 4);
    assert.equal(tcs.by_type.buy?.open, 4);
    assert.equal(tcs.mean_confidence, "95.00");
    const e = await refusal(c.symbolStats(""));
    assert.equal(e.status, 400);
    // A free user reads them too, counting no open call it was not shown (30 s delay,
    // 90.00 bar): never more than enterprise.
    const free = await client({ url: server.ws, token: token("u-free-1") }).symbolStats("TCS", { exchange: "NSE" });
    assert.ok(free.signals <= tcs.signals, JSON.stringify(free));
  });

  test("refusals throw SignalcastHttpError with the status, code and message", async () => {
    const c = client({ url: server.ws, token: token("u-premium-1") });
    for (const params of [{ limit: 0 }, { limit: 501 }, { source: "nope" }, { from: "yesterday" }, { cursor: "zz" }]) {
      const e = await refusal(c.history(params));
      assert.equal(e.status, 400, JSON.stringify(params));
      assert.equal(e.error, "bad_request");
      assert.ok(e.message.length > 0);
      assert.equal(e.retryAfter, undefined);
      assert.equal(e.name, "SignalcastHttpError");
    }
    const bad = await refusal(c.history({ category: "stocks" as "equity" }));
    assert.match(bad.message, /stocks/);
    const e = await refusal(client({ url: server.ws, token: "not-a-jwt" }).live());
    assert.equal(e.status, 401);
    assert.equal(e.error, "unauthorized");
  });

  test("the token goes in the Authorization header, never in the URL", async () => {
    const t = token("u-basic-1");
    const calls: { url: string; headers: Record<string, string> }[] = [];
    const recording: FetchLike = (url, init) => {
      calls.push({ url, headers: init.headers });
      return fetch(url, init);
    };
    const c = client({ url: `${server.ws}?region=x`, token: t, fetch: recording });
    const page = await c.history({ symbol: "RELIANCE", limit: 2 });
    assert.equal(page.items.length, 2);
    await c.live({ limit: 1 });
    const live = await c.live({ symbol: "NO-SUCH-SYMBOL" });
    assert.equal(live.items.length, 0, "live takes history's filters");
    assert.equal(calls.length, 3);
    assert.equal(calls[0]!.url, `${server.http}/v1/signals/history?symbol=RELIANCE&limit=2`);
    assert.equal(calls[1]!.url, `${server.http}/v1/signals/live?limit=1`);
    assert.equal(calls[2]!.url, `${server.http}/v1/signals/live?symbol=NO-SUCH-SYMBOL`);
    for (const call of calls) {
      assert.equal(call.headers["Authorization"], `Bearer ${t}`);
      assert.ok(!call.url.includes(t.split(".")[2]!), "no part of the token in the URL");
    }
  });

  test("over the rate: 429 with retryAfter", async () => {
    // The free tier may make 30 requests a minute.
    const c = client({ url: server.ws, token: token("u-free-1") });
    let refused: SignalcastHttpError | undefined;
    for (let i = 0; i < 40 && !refused; i++) {
      try {
        await c.live({ limit: 1 });
      } catch (e) {
        assert.ok(e instanceof SignalcastHttpError, String(e));
        refused = e;
      }
    }
    assert.ok(refused, "refused within 40 requests");
    assert.equal(refused.status, 429);
    assert.equal(refused.error, "rate_limited");
    assert.ok(typeof refused.retryAfter === "number" && refused.retryAfter >= 1, `retryAfter ${refused.retryAfter}`);
  });
});
