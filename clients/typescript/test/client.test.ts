// The client against a real signalcast process: receive, per-channel listeners,
// heartbeats, token refresh, reconnect with backoff, resume without loss across a cut
// connection, and a visible `recovered: false` across a server restart.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import {
  PROTOCOL,
  SignalcastClient,
  TOKEN_PROTOCOL_PREFIX,
  backoffDelay,
  type ChannelMessage,
  type ClientOptions,
  type ResumeEvent,
  type ServerMessage,
  type WebSocketConstructor,
} from "../src/index.js";
import { Proxy, Server, freePort, produce, sleep, token, until } from "./harness.js";

function client(options: Omit<ClientOptions, "WebSocket">): SignalcastClient {
  return new SignalcastClient({ ...options, WebSocket: WebSocket as unknown as WebSocketConstructor });
}

/** Seqs received on one channel. */
function collect(c: SignalcastClient, channel: "signals_enterprise" | "signals_premium"): number[] {
  const seqs: number[] = [];
  c.subscribe(channel, (m: ChannelMessage) => {
    assert.equal(m.type, "SIGNAL_UPDATE");
    assert.equal(m.channel, channel);
    if (m.type === "SIGNAL_UPDATE") seqs.push(m.seq);
  });
  return seqs;
}

function contiguous(seqs: number[]): boolean {
  return seqs.every((s, i) => i === 0 || s === seqs[i - 1]! + 1);
}

describe("backoff", () => {
  test("grows by the multiplier up to the cap, and jitter only takes away", () => {
    const o = { initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.5 };
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((a) => backoffDelay(a, o, () => 0)), [100, 200, 400, 800, 1000, 1000]);
    assert.deepEqual([0, 3, 9].map((a) => backoffDelay(a, o, () => 1)), [50, 400, 500]);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(2, o);
      assert.ok(d >= 200 && d <= 400, `${d}`);
    }
  });

  test("a client keeps trying a gateway that is down, each time waiting longer", async () => {
    // Something that accepts TCP and hangs up at once: every attempt fails.
    const attempts: number[] = [];
    const refuser = net.createServer((s) => {
      attempts.push(Date.now());
      s.destroy();
    });
    await new Promise<void>((r) => refuser.listen(0, "127.0.0.1", r));
    const port = (refuser.address() as net.AddressInfo).port;
    const c = client({
      url: `ws://127.0.0.1:${port}/ws`,
      token: "t",
      backoff: { initialMs: 50, multiplier: 2, maxMs: 10_000, jitter: 0 },
    });
    const states: string[] = [];
    c.on("state", (s) => states.push(s));
    c.connect();
    await sleep(1700);
    c.close();
    refuser.close();
    // 0, 50, 150, 350, 750, 1550 ms: six attempts in 1.7 s, not dozens.
    assert.ok(attempts.length >= 4 && attempts.length <= 7, `${attempts.length} attempts`);
    const gaps = attempts.slice(1).map((t, i) => t - attempts[i]!);
    for (let i = 1; i < gaps.length; i++) assert.ok(gaps[i]! > gaps[i - 1]!, `gaps grow: ${gaps}`);
    assert.deepEqual(states.slice(0, 2), ["connecting", "reconnecting"]);
    assert.equal(c.state, "closed");
  });
});

describe("against a signalcast process", () => {
  let server: Server;
  before(async () => {
    server = await Server.start();
  });
  after(async () => {
    await server.stop();
  });

  test("the token travels in the subprotocol, never in the URL, and the gateway answers signalcast.v1", async () => {
    const opened: { url: string; protocols: unknown }[] = [];
    const sockets: WebSocket[] = [];
    class Recording extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        opened.push({ url, protocols });
        sockets.push(this);
      }
    }
    const t = token("u-premium-1");
    const c = new SignalcastClient({ url: server.ws, token: t, WebSocket: Recording as unknown as WebSocketConstructor });
    const welcomes: string[] = [];
    c.on("welcome", (w) => welcomes.push(w.user));
    c.connect();
    await until("welcome", 5000, () => welcomes.length === 1);
    assert.deepEqual(welcomes, ["u-premium-1"], "the gateway read the token from the header");
    assert.deepEqual(opened, [{ url: server.ws, protocols: [PROTOCOL, TOKEN_PROTOCOL_PREFIX + t] }]);
    assert.equal(sockets[0]!.protocol, "signalcast.v1", "only the protocol name is echoed");
    c.close();
  });

  test("per-channel listeners get their own channel, and unsubscribing stops it", async () => {
    const c = client({ url: server.ws, token: token("u-enterprise-1") });
    const messages: ServerMessage[] = [];
    c.on("message", (m) => messages.push(m));
    c.connect();
    const enterprise = collect(c, "signals_enterprise");
    const premium: number[] = [];
    const stopPremium = c.subscribe("signals_premium", (m) => {
      if (m.type === "SIGNAL_UPDATE") premium.push(m.seq);
    });
    await until("subscribed twice", 5000, () => messages.filter((m) => m.type === "SUBSCRIBED").length === 2);
    await produce(server, 40, 0);
    await until("signals on both", 10_000, () => enterprise.length > 0 && premium.length > 0);
    assert.ok(contiguous(enterprise) && contiguous(premium));
    stopPremium();
    await until("UNSUBSCRIBED", 5000, () => messages.some((m) => m.type === "UNSUBSCRIBED"));
    const before = premium.length;
    const seen = enterprise.length;
    await produce(server, 20, 0);
    await until("more enterprise signals", 10_000, () => enterprise.length > seen);
    assert.equal(premium.length, before, "nothing more reaches a removed listener");
    assert.deepEqual(c.position("signals_premium"), undefined);
    assert.equal(c.position("signals_enterprise")?.seq, enterprise.at(-1));
    c.close();
  });

  test("heartbeats: a PING every interval, answered PONG", async () => {
    const c = client({ url: server.ws, token: token("u-basic-1"), pingIntervalMs: 100 });
    let pongs = 0;
    c.on("message", (m) => {
      if (m.type === "PONG") pongs += 1;
    });
    c.connect();
    await until("three PONGs", 5000, () => pongs >= 3);
    assert.equal(c.state, "open");
    c.close();
  });

  test("a token about to expire is refreshed through the callback, on the same connection", async () => {
    // 65 s of life: the server warns 60 s before expiry, i.e. at once.
    let calls = 0;
    const c = client({
      url: server.ws,
      token: () => {
        calls += 1;
        return token("u-premium-1", calls === 1 ? 65 : 3600);
      },
    });
    const events: string[] = [];
    c.on("system", (e) => events.push(e.event));
    let closes = 0;
    c.on("close", () => (closes += 1));
    c.connect();
    await until("token_refreshed", 10_000, () => events.includes("token_refreshed"));
    assert.deepEqual(events.slice(0, 3), ["welcome", "token_expiring", "token_refreshed"]);
    assert.equal(calls, 2);
    assert.equal(closes, 0);
    c.close();
  });

  test("a cut connection reconnects and resumes: every seq exactly once", async () => {
    const proxy = await Proxy.start(server.httpPort);
    const c = client({
      url: `ws://127.0.0.1:${proxy.port}/ws`,
      token: () => token("u-enterprise-1"),
      backoff: { initialMs: 50, maxMs: 500 },
    });
    const resumes: ResumeEvent[] = [];
    c.on("resume", (e) => resumes.push(e));
    c.connect();
    const seqs = collect(c, "signals_enterprise");
    await until("open", 5000, () => c.state === "open");
    const producing = produce(server, 300, 150);
    await until("some signals", 20_000, () => seqs.length >= 60);
    assert.ok(proxy.cut() > 0, "a connection was cut");
    await producing;
    const head = await server.metric('signalcast_channel_head_seq{tier="enterprise"}');
    await until(`every seq to ${head}`, 20_000, () => seqs.at(-1) === head);
    assert.equal(c.reconnects, 1);
    assert.equal(resumes.length, 1);
    assert.equal(resumes[0]!.recovered, true, JSON.stringify(resumes[0]));
    assert.ok(contiguous(seqs), "no gap, no repeat");
    assert.equal(seqs.length, head - seqs[0]! + 1);
    c.close();
    await proxy.close();
  });
});

test("a server restarted without its store: the client reconnects by itself and says recovered: false", async () => {
  const server = await Server.start({ httpPort: await freePort() });
  const c = client({ url: server.ws, token: () => token("u-enterprise-1"), backoff: { initialMs: 50, maxMs: 500 } });
  const resumes: ResumeEvent[] = [];
  const states: string[] = [];
  c.on("resume", (e) => resumes.push(e));
  c.on("state", (s) => states.push(s));
  c.connect();
  const seqs = collect(c, "signals_enterprise");
  await until("open", 5000, () => c.state === "open");
  await produce(server, 30, 0);
  // Every acknowledged signal delivered first: the position below is then the last one,
  // not whichever arrived when the first did (fan-out runs after the producer's ACK).
  const head = await server.metric('signalcast_channel_head_seq{tier="enterprise"}');
  await until(`signals to ${head}`, 10_000, () => seqs.at(-1) === head);
  const before = c.position("signals_enterprise")!;

  // A fresh data directory: a node that lost its signal store (a replaced machine).
  await server.restart("SIGKILL");
  await until("resumed on the new process", 15_000, () => resumes.length === 1);
  const r = resumes[0]!;
  assert.equal(r.recovered, false, "a store-less process has a new epoch: told, not silently cut");
  assert.deepEqual(r.since, before);
  assert.notEqual(r.epoch, before.epoch);
  const n = seqs.length;
  await produce(server, 30, 0);
  await until("signals after", 10_000, () => seqs.length > n);
  assert.equal(c.position("signals_enterprise")!.epoch, r.epoch);
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
  c.close();
  await server.stop();
});

test("a server restarted on its data directory: the client resumes recovered: true, nothing lost", async () => {
  const server = await Server.start({ httpPort: await freePort() });
  const c = client({ url: server.ws, token: () => token("u-enterprise-1"), backoff: { initialMs: 50, maxMs: 500 } });
  const resumes: ResumeEvent[] = [];
  c.on("resume", (e) => resumes.push(e));
  c.connect();
  const seqs = collect(c, "signals_enterprise");
  await until("open", 5000, () => c.state === "open");
  await produce(server, 30, 0);
  const head = await server.metric('signalcast_channel_head_seq{tier="enterprise"}');
  await until(`signals to ${head}`, 10_000, () => seqs.at(-1) === head);
  const before = c.position("signals_enterprise")!;

  // The store keeps the channels' epochs, heads and rings across the kill.
  await server.restart("SIGKILL", { keepData: true });
  await until("resumed on the new process", 15_000, () => resumes.length === 1);
  const r = resumes[0]!;
  assert.equal(r.recovered, true, JSON.stringify(r));
  assert.deepEqual(r.since, before);
  assert.equal(r.epoch, before.epoch, "the same epoch");
  await produce(server, 30, 0);
  const after = await server.metric('signalcast_channel_head_seq{tier="enterprise"}');
  await until(`signals to ${after}`, 10_000, () => seqs.at(-1) === after);
  assert.ok(after > head);
  assert.ok(contiguous(seqs), "no gap, no repeat across the restart");
  c.close();
  await server.stop();
});
