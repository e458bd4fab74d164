// Filters and snapshots through the client against a real signalcast process: a
// watchlist on SUBSCRIBE with a snapshot first, then only its symbols live; the filter
// swapped in place with setFilter, nothing repeated.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";

import { SignalcastClient, type SignalUpdate, type WebSocketConstructor } from "../src/index.js";
import { Server, publish, publishTicks, rawSignal, token, until } from "./harness.js";

let server: Server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server.stop();
});

test("a watchlist with a snapshot, then live messages of its symbols only; setFilter swaps it", async () => {
  // Before the client: 1 TCS, 2 INFY, 3 TCS.
  await publish(server, [rawSignal(1, { symbol: "TCS" }), rawSignal(2, { symbol: "INFY" }), rawSignal(3, { symbol: "TCS" })]);
  const c = new SignalcastClient({
    url: server.ws,
    token: token("u-enterprise-1"),
    WebSocket: WebSocket as unknown as WebSocketConstructor,
  });
  const got: SignalUpdate[] = [];
  c.subscribe(
    "signals_enterprise",
    (m) => {
      if (m.type === "SIGNAL_UPDATE") got.push(m);
    },
    undefined,
    { filter: { symbols: ["TCS"] }, snapshot: 5 },
  );
  c.connect();
  await until("the snapshot", 10_000, () => got.length === 2);
  assert.deepEqual(
    got.map((m) => [m.data.symbol, m.snapshot === true]),
    [["TCS", true], ["TCS", true]],
  );
  await publish(server, [rawSignal(4, { symbol: "INFY" }), rawSignal(5, { symbol: "TCS" })]);
  await until("a live TCS", 10_000, () => got.length === 3);
  assert.equal(got[2]!.data.symbol, "TCS");
  assert.equal(got[2]!.snapshot, undefined);
  // Swapped in place: INFY from now on, nothing replayed.
  c.setFilter("signals_enterprise", { symbols: ["INFY"] });
  await new Promise((r) => setTimeout(r, 300));
  await publish(server, [rawSignal(6, { symbol: "TCS" }), rawSignal(7, { symbol: "INFY" })]);
  await until("a live INFY", 10_000, () => got.length === 4);
  assert.equal(got[3]!.data.symbol, "INFY");
  assert.ok(got.every((m, i) => i === 0 || m.seq > got[i - 1]!.seq), "increasing seqs, no repeat");
  c.close();
});

test("watchPrices: the latest price of each watched symbol first, then only theirs, at the rate asked", async () => {
  await publishTicks(server, [
    ["GOLD", "MCX", "72000"],
    ["SILVER", "MCX", "90000"],
    ["COPPER", "MCX", "800"],
  ]);
  const c = new SignalcastClient({
    url: server.ws,
    token: token("u-enterprise-1"),
    WebSocket: WebSocket as unknown as WebSocketConstructor,
  });
  const prices: { symbol: string; last: string; conflated: number }[] = [];
  let rate: number | undefined;
  c.on("message", (m) => {
    if (m.type === "SUBSCRIBED" && m.channel === "prices_general") rate = m.max_frequency;
  });
  c.watchPrices(["GOLD", "MCX:SILVER"], (p) => prices.push({ symbol: p.symbol, last: p.last, conflated: p.conflated }), 7);
  c.connect();
  await until("the latest of both", 10_000, () => prices.length === 2);
  assert.equal(rate, 5, "7 a second is taken down to 5");
  assert.deepEqual(prices.map((p) => p.symbol).sort(), ["GOLD", "SILVER"]);
  await publishTicks(server, [
    ["COPPER", "MCX", "801"],
    ["GOLD", "MCX", "72001"],
  ]);
  await until("GOLD's update", 10_000, () => prices.length === 3);
  assert.deepEqual(prices[2], { symbol: "GOLD", last: "72001.0000", conflated: 1 });
  c.setMaxFrequency(1);
  await until("the new rate", 10_000, () => rate === 1);
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(prices.every((p) => p.symbol !== "COPPER"), "never a symbol off the watchlist");
  c.close();
});
