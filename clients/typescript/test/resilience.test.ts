// Edges of the client against a real signalcast process: watchlist steps made while
// disconnected (or before their SUBSCRIBED), a filter change while a resume waits for
// its read-back from the signal store, a snapshot whose SUBSCRIBE was lost.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  SignalcastClient,
  type ClientOptions,
  type ErrorMessage,
  type Filter,
  type ResumeEvent,
  type SignalUpdate,
  type Subscribed,
  type WebSocketConstructor,
} from "../src/index.js";
import { Proxy, Server, publish, publishMany, rawSignal, sleep, token, until } from "./harness.js";

const CHANNEL = "signals_enterprise";

function client(options: Omit<ClientOptions, "WebSocket">): SignalcastClient {
  return new SignalcastClient({ ...options, WebSocket: WebSocket as unknown as WebSocketConstructor });
}

/** What a client saw of one channel: SUBSCRIBEDs, signals, resumes, errors. */
function record(c: SignalcastClient, filter?: Filter, extra: { snapshot?: number } = {}) {
  const r = {
    subscribed: [] as Subscribed[],
    signals: [] as SignalUpdate[],
    resumes: [] as ResumeEvent[],
    errors: [] as ErrorMessage[],
  };
  c.on("message", (m) => {
    if (m.type === "SUBSCRIBED" && m.channel === CHANNEL) r.subscribed.push(m);
  });
  c.on("resume", (e) => r.resumes.push(e));
  c.on("error", (e) => r.errors.push(e));
  c.subscribe(
    CHANNEL,
    (m) => {
      if (m.type === "SIGNAL_UPDATE") r.signals.push(m);
    },
    undefined,
    { filter, ...extra },
  );
  return r;
}

describe("against a signalcast process", () => {
  let server: Server;
  before(async () => {
    server = await Server.start();
  });
  after(async () => {
    await server.stop();
  });

  test("watchlist steps made while disconnected apply to the watchlist, not to an empty filter", async () => {
    const proxy = await Proxy.start(server.httpPort);
    // A second between the cut and the reconnect: the steps are made in it.
    const c = client({
      url: `ws://127.0.0.1:${proxy.port}/ws`,
      token: () => token("u-enterprise-1"),
      backoff: { initialMs: 1000, jitter: 0 },
    });
    const r = record(c, { symbols: ["RSA", "RSB"] });
    c.connect();
    await until("SUBSCRIBED", 10_000, () => r.subscribed.length === 1);
    assert.ok(proxy.cut() > 0);
    await until("reconnecting", 5000, () => c.state === "reconnecting");
    c.setFilter(CHANNEL, { add_symbols: ["RSC"] });
    c.setFilter(CHANNEL, { remove_symbols: ["RSA"] });
    // Would empty the watchlist (an empty list means every symbol): refused here, as the
    // server refuses it, and nothing changes.
    c.setFilter(CHANNEL, { remove_symbols: ["RSB", "RSC"] });
    await until("resubscribed", 10_000, () => r.subscribed.length === 2);
    // The whole watchlist went with the resume: RSB and RSC, not RSC alone, not all.
    assert.deepEqual(r.subscribed[1]!.filter, { symbols: ["RSB", "RSC"] });
    assert.deepEqual(
      r.errors.map((e) => [e.code, e.channel]),
      [["bad_request", CHANNEL]],
    );
    assert.deepEqual(
      r.resumes.map((e) => e.recovered),
      [true],
    );
    await publish(server, ["RSA", "RSB", "RSC", "RSD"].map((s, i) => rawSignal(1000 + i, { symbol: s })));
    await until("RSB and RSC", 10_000, () => r.signals.length >= 2);
    await sleep(300);
    assert.deepEqual(
      r.signals.map((m) => m.data.symbol),
      ["RSB", "RSC"],
    );
    // A step while subscribed is still sent as a step, on top of what the server has.
    c.setFilter(CHANNEL, { add_symbols: ["RSD"] });
    await until("the step confirmed", 10_000, () => r.subscribed.length === 3);
    assert.deepEqual(r.subscribed[2]!.filter, { symbols: ["RSB", "RSC", "RSD"] });
    c.close();
    await proxy.close();
  });

  test("a step whose SUBSCRIBED has not come when the connection drops is resent as the whole watchlist", async () => {
    const proxy = await Proxy.start(server.httpPort);
    const c = client({
      url: `ws://127.0.0.1:${proxy.port}/ws`,
      token: () => token("u-enterprise-1"),
      backoff: { initialMs: 50, jitter: 0 },
    });
    const r = record(c, { symbols: ["RSA", "RSB"] });
    c.connect();
    await until("SUBSCRIBED", 10_000, () => r.subscribed.length === 1);
    // Sent, and cut before the proxy passes it on: never answered.
    c.setFilter(CHANNEL, { add_symbols: ["NSE:RSE"] });
    assert.ok(proxy.cut() > 0);
    await until("resumed", 10_000, () => r.resumes.length === 1);
    await sleep(100);
    assert.deepEqual(r.subscribed.at(-1)!.filter, { symbols: ["RSA", "RSB", "NSE:RSE"] });
    assert.equal(r.resumes[0]!.recovered, true);
    c.close();
    await proxy.close();
  });

  test("a snapshot is asked again when the connection drops before SUBSCRIBED", async () => {
    await publish(server, ["SNA", "SNB", "SNA"].map((s, i) => rawSignal(2000 + i, { symbol: s })));
    // The first connection's SUBSCRIBE never reaches the server.
    const proxy = await Proxy.start(server.httpPort, { swallowRequests: 1 });
    const c = client({
      url: `ws://127.0.0.1:${proxy.port}/ws`,
      token: () => token("u-enterprise-1"),
      backoff: { initialMs: 50 },
    });
    let welcomes = 0;
    c.on("welcome", () => (welcomes += 1));
    c.connect();
    await until("welcome", 10_000, () => welcomes === 1);
    const r = record(c, { symbols: ["SNA"] }, { snapshot: 5 });
    await sleep(500);
    assert.equal(r.subscribed.length, 0, "the SUBSCRIBE was lost");
    assert.ok(proxy.cut() > 0);
    await until("SUBSCRIBED on the second connection", 10_000, () => r.subscribed.length === 1);
    await until("the snapshot", 10_000, () => r.signals.length >= 2);
    await sleep(300);
    assert.deepEqual(
      r.signals.map((m) => [m.data.symbol, m.snapshot === true]),
      [
        ["SNA", true],
        ["SNA", true],
      ],
    );
    // Answered: a later reconnect resumes instead of asking for the snapshot again.
    assert.ok(proxy.cut() > 0);
    await until("resumed", 10_000, () => r.resumes.length === 1);
    await sleep(300);
    assert.equal(r.signals.length, 2, "no second snapshot");
    c.close();
    await proxy.close();
  });
});

/** A position 5,000 signals (RBX, RBY, …) behind the head, which a ring of 16 does not
 * hold: a resume from it waits for the store's read-back. */
async function behind(server: Server, firstId: number): Promise<{ since: { epoch: string; seq: number }; head: number }> {
  const first = client({ url: server.ws, token: () => token("u-enterprise-1") });
  const f = record(first);
  first.connect();
  await until("SUBSCRIBED", 10_000, () => f.subscribed.length === 1);
  const since = first.position(CHANNEL)!;
  assert.deepEqual(since, { epoch: f.subscribed[0]!.epoch, seq: f.subscribed[0]!.seq });
  first.close();
  await publishMany(
    server,
    Array.from({ length: 5000 }, (_, i) => rawSignal(firstId + i, { symbol: i % 2 === 0 ? "RBX" : "RBY" })),
  );
  return { since, head: since.seq + 5000 };
}

describe("a ring of 16: resumes read back from the store", () => {
  let server: Server;
  before(async () => {
    server = await Server.start({ env: { SIGNALCAST_ENGINE__RING_CAPACITY: "16" } });
  });
  after(async () => {
    await server.stop();
  });

  test("a filter change while a resume waits for its read-back keeps the resume", async () => {
    {
      // 5,000 missed, the ring holds 16: a read-back long enough that the filter change
      // reaches the server while it is under way.
      const { since, head } = await behind(server, 10_000);

      const c = client({ url: server.ws, token: () => token("u-enterprise-1") });
      let welcomes = 0;
      c.on("welcome", () => (welcomes += 1));
      c.connect();
      await until("welcome", 10_000, () => welcomes === 1);
      const r = {
        subscribed: [] as Subscribed[],
        seqs: [] as number[],
        symbols: [] as string[],
        resumes: [] as ResumeEvent[],
      };
      c.on("message", (m) => {
        if (m.type === "SUBSCRIBED" && m.channel === CHANNEL) r.subscribed.push(m);
      });
      c.on("resume", (e) => r.resumes.push(e));
      c.subscribe(
        CHANNEL,
        (m) => {
          if (m.type === "SIGNAL_UPDATE") {
            r.seqs.push(m.seq);
            r.symbols.push(m.data.symbol);
          }
        },
        since,
      );
      // At once: the SUBSCRIBE with since is under way, its SUBSCRIBED not back.
      c.setFilter(CHANNEL, { symbols: ["RBX"] });
      await until("the resume and the swap", 15_000, () => r.subscribed.length === 2);
      assert.deepEqual(
        r.resumes.map((e) => e.recovered),
        [true],
        JSON.stringify(r.resumes),
      );
      const gap = Array.from({ length: head - since.seq }, (_, i) => since.seq + 1 + i);
      assert.deepEqual(r.seqs, gap, "the gap, whole, before the swap");
      assert.deepEqual(r.subscribed[1]!.filter, { symbols: ["RBX"] });
      await publish(server, [rawSignal(20_000, { symbol: "RBY" }), rawSignal(20_001, { symbol: "RBX" })]);
      await until("RBX live", 10_000, () => r.seqs.at(-1) === head + 2);
      assert.equal(r.symbols.at(-1), "RBX");
      assert.equal(r.seqs.length, gap.length + 1, "RBY left out by the new filter");
      c.close();
    }
  });

  test("a resume answered without `recovered` is reported recovered: false", async () => {
    const { since, head } = await behind(server, 30_000);
    // A filter-only SUBSCRIBE right behind the resume, as an older client sent it: the
    // server takes it for a new subscription from the head and answers SUBSCRIBED
    // without `recovered`.
    class Meddling extends WebSocket {
      override send(data: unknown, ...rest: unknown[]): void {
        (super.send as (...a: unknown[]) => void)(data, ...rest);
        const m = JSON.parse(String(data)) as { type: string; channel?: string; since?: number };
        if (m.type === "SUBSCRIBE" && m.since !== undefined) {
          (super.send as (...a: unknown[]) => void)(JSON.stringify({ type: "SUBSCRIBE", channel: m.channel, filter: {} }));
        }
      }
    }
    const c = new SignalcastClient({
      url: server.ws,
      token: () => token("u-enterprise-1"),
      WebSocket: Meddling as unknown as WebSocketConstructor,
    });
    const subscribed: Subscribed[] = [];
    const resumes: ResumeEvent[] = [];
    c.on("message", (m) => {
      if (m.type === "SUBSCRIBED" && m.channel === CHANNEL) subscribed.push(m);
    });
    c.on("resume", (e) => resumes.push(e));
    c.subscribe(CHANNEL, () => {}, since);
    c.connect();
    await until("SUBSCRIBED", 15_000, () => subscribed.length >= 1);
    await sleep(500);
    assert.equal(subscribed[0]!.recovered, undefined, JSON.stringify(subscribed));
    assert.deepEqual(resumes, [{ channel: CHANNEL, recovered: false, since, epoch: since.epoch, head }]);
    assert.deepEqual(c.position(CHANNEL), { epoch: since.epoch, seq: head }, "live from the head");
    c.close();
  });
});
