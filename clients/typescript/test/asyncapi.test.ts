// docs/asyncapi.yaml against the two things it describes: the TypeScript types of
// src/messages.ts (same fields, same required ones) and what a real server sends
// (every message type, provoked on purpose, validated against its schema).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import ts from "typescript";
import WebSocket from "ws";
import { parse } from "yaml";

import { Server, produce, repo, token, until } from "./harness.js";

type Schema = {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  oneOf?: Schema[];
  const?: unknown;
  enum?: unknown[];
  $ref?: string;
};

const doc = parse(readFileSync(join(repo, "docs", "asyncapi.yaml"), "utf8")) as {
  components: { schemas: Record<string, Schema>; messages: Record<string, { name: string; payload: Schema; examples?: { payload: unknown }[] }> };
  operations: Record<string, { action: string; messages: { $ref: string }[] }>;
};
const schemas = doc.components.schemas;

function validator(): (name: string) => ValidateFunction {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  ajv.addSchema({ $id: "asyncapi", components: { schemas } });
  return (name) => {
    const v = ajv.getSchema(`asyncapi#/components/schemas/${name}`);
    assert.ok(v, `no schema ${name}`);
    return v;
  };
}

/** Server message type → its schema name in the document. */
function serverTypes(): Map<string, string> {
  const out = new Map<string, string>();
  const messages = doc.components.messages;
  for (const ref of doc.operations["toClients"]!.messages) {
    const key = ref.$ref.split("/").at(-1)!;
    const channelMsg = key.charAt(0).toUpperCase() + key.slice(1);
    const m = messages[channelMsg];
    assert.ok(m, `message ${channelMsg}`);
    out.set(m.name, m.payload.$ref!.split("/").at(-1)!);
  }
  return out;
}

test("every example in the document is valid against its own schema", () => {
  const v = validator();
  for (const [name, m] of Object.entries(doc.components.messages)) {
    const check = v(m.payload.$ref!.split("/").at(-1)!);
    for (const e of m.examples ?? []) {
      assert.ok(check(e.payload), `${name}: ${JSON.stringify(check.errors)}`);
    }
  }
});

// --- the TypeScript types against the schemas ---

const program = ts.createProgram([join(repo, "clients", "typescript", "src", "messages.ts")], { strict: true });
const checker = program.getTypeChecker();
const source = program.getSourceFile(join(repo, "clients", "typescript", "src", "messages.ts"))!;

/** The properties of an exported interface or type: name → optional. */
function tsFields(name: string): Map<string, boolean> {
  const symbol = checker.getSymbolAtLocation(source)!.exports!.get(ts.escapeLeadingUnderscores(name));
  assert.ok(symbol, `messages.ts exports no ${name}`);
  const type = checker.getDeclaredTypeOfSymbol(symbol);
  return new Map(checker.getPropertiesOfType(type).map((p) => [p.name, (p.flags & ts.SymbolFlags.Optional) !== 0]));
}

function schemaFields(s: Schema): Map<string, boolean> {
  const required = new Set(s.required ?? []);
  return new Map(Object.keys(s.properties ?? {}).map((k) => [k, !required.has(k)]));
}

function resolve(s: Schema): Schema {
  return s.$ref ? schemas[s.$ref.split("/").at(-1)!]! : s;
}

test("src/messages.ts has every field of docs/asyncapi.yaml, optional exactly where the schema is", () => {
  const pairs: [string, Schema][] = [
    ["Subscribe", schemas["Subscribe"]!],
    ["Unsubscribe", schemas["Unsubscribe"]!],
    ["Ping", schemas["Ping"]!],
    ["Refresh", schemas["Refresh"]!],
    ["Subscribed", schemas["Subscribed"]!],
    ["Unsubscribed", schemas["Unsubscribed"]!],
    ["SignalUpdate", schemas["SignalUpdate"]!],
    ["EnrichedSignal", schemas["EnrichedSignal"]!],
    ["MarketSnapshot", schemas["MarketSnapshot"]!],
    ["PriceUpdate", schemas["PriceUpdate"]!],
    ["Tick", schemas["Tick"]!],
    ["UserUpdate", schemas["UserUpdate"]!],
    ["Entitlements", resolve(schemas["UserUpdate"]!.properties!["data"]!)],
    ["Notification", schemas["Notification"]!],
    ["SystemMessage", schemas["SystemMessage"]!],
    ["Pong", schemas["Pong"]!],
    ["ErrorMessage", schemas["Error"]!],
  ];
  // SYSTEM_MESSAGE's data variants, matched by their event names.
  const variants = schemas["SystemMessage"]!.properties!["data"]!.oneOf!;
  const byEvent = (event: string) =>
    variants.find((v) => {
      const e = v.properties!["event"]!;
      return e.const === event || (e.enum ?? []).includes(event);
    })!;
  pairs.push(["Welcome", byEvent("welcome")], ["TokenEvent", byEvent("token_expiring")]);
  pairs.push(["NoticeEvent", byEvent("drain")], ["EntitlementsChanged", byEvent("entitlements_changed")]);
  assert.equal(variants.length, 4, "every SYSTEM_MESSAGE variant has its type");
  for (const [name, schema] of pairs) {
    assert.deepEqual(
      [...tsFields(name)].sort(),
      [...schemaFields(schema)].sort(),
      `${name}: [field, optional] in messages.ts vs the schema`,
    );
  }
});

// --- a real server's output against the schemas ---

type Raw = { ws: WebSocket; got: Record<string, unknown>[] };

async function open(server: Server, user: string, ttl?: number): Promise<Raw> {
  const ws = new WebSocket(`${server.ws}?token=${token(user, ttl)}`);
  const raw: Raw = { ws, got: [] };
  ws.on("message", (data) => raw.got.push(JSON.parse(data.toString()) as Record<string, unknown>));
  await new Promise((ok, fail) => {
    ws.once("open", ok);
    ws.once("error", fail);
  });
  return raw;
}

const send = (r: Raw, m: unknown) => r.ws.send(typeof m === "string" ? m : JSON.stringify(m));
const has = (r: Raw, pred: (m: Record<string, unknown>) => boolean) => r.got.some(pred);

test("every message type the server sends validates against the document", async () => {
  const server = await Server.start();
  const v = validator();
  const types = serverTypes();
  assert.deepEqual(
    [...types.keys()].sort(),
    ["ERROR", "NOTIFICATION", "PONG", "PRICE_UPDATE", "SIGNAL_UPDATE", "SUBSCRIBED", "SYSTEM_MESSAGE", "UNSUBSCRIBED", "USER_UPDATE"],
  );

  // An enterprise user on everything, a token that is about to expire (token_expiring),
  // and a premium user with a quota of 5 a day (NOTIFICATION quota_exhausted).
  const ent = await open(server, "u-enterprise-1", 65);
  const capped = await open(server, "u-premium-capped");
  for (const ch of ["signals_enterprise", "prices_general", "user_u-enterprise-1"]) send(ent, { type: "SUBSCRIBE", channel: ch });
  for (const ch of ["signals_premium", "user_u-premium-capped"]) send(capped, { type: "SUBSCRIBE", channel: ch });
  await until("SUBSCRIBED x5", 5000, () => ent.got.length + capped.got.length >= 7);
  await produce(server, 40, 0);
  await until("signals, prices and the quota notice", 10_000, () =>
    has(ent, (m) => m.type === "SIGNAL_UPDATE") &&
    has(ent, (m) => m.type === "PRICE_UPDATE") &&
    has(capped, (m) => m.type === "NOTIFICATION"),
  );
  // The expiry warning comes from the server's periodic sweep (within seconds).
  await until("token_expiring", 15_000, () => has(ent, (m) => (m.data as { event?: string })?.event === "token_expiring"));
  // A resume (recovered), replies, refusals, and a REFRESH (token_refreshed + USER_UPDATE).
  const seq = (ent.got.filter((m) => m.type === "SIGNAL_UPDATE").at(0) as { seq: number }).seq;
  const epoch = (ent.got.find((m) => m.type === "SUBSCRIBED" && m.channel === "signals_enterprise") as { epoch: string }).epoch;
  send(ent, { type: "UNSUBSCRIBE", channel: "signals_enterprise" });
  send(ent, { type: "SUBSCRIBE", channel: "signals_enterprise", since: seq, epoch });
  send(ent, { type: "PING" });
  send(ent, { type: "SUBSCRIBE", channel: "signals_gold" });
  send(ent, "{not json");
  send(ent, { type: "DANCE" });
  send(capped, { type: "SUBSCRIBE", channel: "signals_enterprise" });
  send(ent, { type: "REFRESH", token: token("u-enterprise-1") });
  await until("the replies", 10_000, () =>
    has(ent, (m) => m.type === "USER_UPDATE") &&
    has(ent, (m) => m.type === "PONG") &&
    has(ent, (m) => m.type === "UNSUBSCRIBED") &&
    has(ent, (m) => m.recovered === true) &&
    ent.got.filter((m) => m.type === "ERROR").length >= 3 &&
    has(capped, (m) => m.type === "ERROR"),
  );
  // The drain notice on SIGTERM.
  const stopped = server.stop("SIGTERM");
  await until("drain", 10_000, () => has(ent, (m) => (m.data as { event?: string })?.event === "drain"));
  await stopped;

  const all = [...ent.got, ...capped.got];
  const seen = new Set<string>();
  for (const m of all) {
    const schema = types.get(String(m.type));
    assert.ok(schema, `a message type the document does not have: ${JSON.stringify(m)}`);
    const check = v(schema);
    assert.ok(check(m), `${JSON.stringify(m)}\n${JSON.stringify(check.errors, null, 1)}`);
    seen.add(String(m.type));
  }
  assert.deepEqual([...seen].sort(), [...types.keys()].sort(), "every server message type was seen and checked");
  const events = new Set(all.filter((m) => m.type === "SYSTEM_MESSAGE").map((m) => (m.data as { event: string }).event));
  for (const e of ["welcome", "token_expiring", "token_refreshed", "drain"]) assert.ok(events.has(e), e);
  const codes = new Set(all.filter((m) => m.type === "ERROR").map((m) => m.code));
  for (const c of ["unknown_channel", "bad_request", "unknown_type", "forbidden"]) assert.ok(codes.has(c), `ERROR ${c}`);
  console.log(`${all.length} server messages validated: ${[...seen].join(", ")}`);
});
