// Real parts for the Node tests: the `signalcast` binary started on free ports, its
// `token` and `produce` subcommands, and a TCP proxy that can cut every connection
// through it (a network failure without a server restart).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** The repository root (this file runs from clients/typescript/build-test/test/). */
export const repo = resolve(here, "..", "..", "..", "..");

export function binary(): string {
  const path = process.env.SIGNALCAST_BIN ?? join(repo, "target", "debug", "signalcast");
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build -p signalcast-gateway\` first (or set SIGNALCAST_BIN)`);
  }
  return path;
}

/** The environment for signalcast processes: without SIGNALCAST_BIN, which is ours
 * (signalcast refuses SIGNALCAST_* variables that are not its settings). */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.SIGNALCAST_BIN;
  return env;
}

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => ok(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits for `cond` (checked every 50 ms) for up to `ms`. */
export async function until(what: string, ms: number, cond: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) {
      throw new Error(`not within ${ms} ms: ${what}`);
    }
    await sleep(50);
  }
}

async function get(port: number, path: string): Promise<{ status: number; body: string } | null> {
  try {
    const r = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: r.status, body: await r.text() };
  } catch {
    return null;
  }
}

export interface ServerOptions {
  /** The built-in demo producer (off unless asked). */
  demo?: boolean;
  httpPort?: number;
  feedPort?: number;
  /** The data directory (signal store); default: a fresh temporary one, removed at stop. */
  dataDir?: string;
  env?: Record<string, string>;
}

/** A `signalcast serve` process in single-node mode, with a data directory (its signal
 * store) of its own: one process per directory. */
export class Server {
  private constructor(
    private child: ChildProcess,
    readonly httpPort: number,
    readonly feedPort: number,
    private dataDir: string,
    /** Whether `dataDir` is ours to remove. */
    private ownDir: boolean,
    private readonly options: ServerOptions,
  ) {}

  static async start(options: ServerOptions = {}): Promise<Server> {
    const httpPort = options.httpPort ?? (await freePort());
    const feedPort = options.feedPort ?? (await freePort());
    const ownDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "signalcast-ts-"));
    const child = spawn(binary(), ["serve"], {
      env: childEnv({
        SIGNALCAST_LISTEN: `127.0.0.1:${httpPort}`,
        SIGNALCAST_FEED_LISTEN: `127.0.0.1:${feedPort}`,
        SIGNALCAST_DEMO__ENABLED: options.demo ? "true" : "false",
        SIGNALCAST_DRAIN_TIMEOUT_SECS: "2",
        SIGNALCAST_LOG: "warn",
        SIGNALCAST_STORE__DATA_DIR: dataDir,
        ...options.env,
      }),
      stdio: ["ignore", "ignore", "inherit"],
    });
    const server = new Server(child, httpPort, feedPort, dataDir, ownDir, options);
    try {
      await server.ready();
    } catch (e) {
      await server.stop("SIGKILL");
      throw e;
    }
    return server;
  }

  private async ready(): Promise<void> {
    let exited = false;
    this.child.once("exit", () => (exited = true));
    await until("signalcast ready", 30_000, async () => {
      if (exited) throw new Error("signalcast exited at start");
      return (await get(this.httpPort, "/health/ready"))?.status === 200;
    });
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.httpPort}/ws`;
  }

  get http(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  /** A sample from /metrics: the first line that starts with `series`. */
  async metric(series: string): Promise<number> {
    const text = (await get(this.httpPort, "/metrics"))?.body ?? "";
    const line = text.split("\n").find((l) => l.startsWith(series + " "));
    return line ? Number(line.slice(series.length + 1)) : 0;
  }

  /** SIGTERM (drain) or SIGKILL, and waits for the exit; removes the data directory
   * unless `keepData`. */
  async stop(signal: NodeJS.Signals = "SIGTERM", keepData = false): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once("exit", r));
      this.child.kill(signal);
      await exited;
    }
    if (!keepData && this.ownDir) {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /**
   * Stops with `signal` and starts again on the same ports: by default on a fresh data
   * directory (a node that lost its store: new epochs, nothing to resume from), with
   * `keepData` on the same one (its store survives: epochs, rings and history).
   */
  async restart(signal: NodeJS.Signals, { keepData = false }: { keepData?: boolean } = {}): Promise<void> {
    await this.stop(signal, keepData);
    const next = await Server.start({
      ...this.options,
      httpPort: this.httpPort,
      feedPort: this.feedPort,
      dataDir: keepData ? this.dataDir : undefined,
    });
    this.child = next.child;
    if (!keepData) {
      this.dataDir = next.dataDir;
      this.ownDir = true;
    }
  }
}

/** A dev token for a fixture user (`signalcast token`). */
export function token(user: string, ttlSecs?: number): string {
  const args = ["token", "--user", user];
  if (ttlSecs !== undefined) args.push("--ttl", String(ttlSecs));
  const out = spawnSync(binary(), args, { encoding: "utf8", env: childEnv() });
  if (out.status !== 0) throw new Error(`signalcast token: ${out.stderr}`);
  return out.stdout.trim();
}

/** The dev producer of the embedded default (fixtures/producers.toml). */
export const PRODUCER = { id: "model-alpha", key: "dev-alpha-0c1d2e3f4a5b6c7d" };

/** A raw signal (docs/kafka.md) on RELIANCE@NSE by default, generated now and valid
 * for an hour, confident enough for every tier; `n` makes its id. */
export function rawSignal(n: number, fields: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Date.now() * 1000;
  return {
    id: `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`,
    source_id: "5eacdd1d-446b-4985-8de0-f44da0e8f005",
    source_type: "algorithm",
    symbol: "RELIANCE",
    exchange: "NSE",
    category: "equity",
    signal_type: "buy",
    entry_price: "2456.7500",
    target_price: "2500.0000",
    stop_loss: "2430.0000",
    quantity_recommended: 10,
    confidence: 95,
    generated_at: now,
    expires_at: now + 3_600_000_000,
    analysis: null,
    ...fields,
  };
}

/** Publishes signals through `POST /v1/signals`, one request each (so each is routed
 * after the one before); resolves once all are stored, with their ids. */
export async function publish(server: Server, signals: Record<string, unknown>[]): Promise<string[]> {
  const auth = `Basic ${Buffer.from(`${PRODUCER.id}:${PRODUCER.key}`).toString("base64")}`;
  const ids: string[] = [];
  for (const s of signals) {
    const r = await fetch(`${server.http}/v1/signals`, {
      method: "POST",
      headers: { Authorization: auth, "Content-Type": "application/json" },
      body: JSON.stringify(s),
    });
    const body = (await r.json()) as { results?: { id?: string; status: string; error?: string; message?: string }[] };
    const result = body.results?.[0];
    if (r.status !== 200 || result?.status !== "accepted") {
      throw new Error(`POST /v1/signals: ${r.status} ${JSON.stringify(body)}`);
    }
    ids.push(String(result.id));
  }
  return ids;
}

/** Publishes many signals through `POST /v1/signals` as NDJSON, up to 1,000 a request
 * (the server's bound); resolves once all are stored. */
export async function publishMany(server: Server, signals: Record<string, unknown>[]): Promise<void> {
  const auth = `Basic ${Buffer.from(`${PRODUCER.id}:${PRODUCER.key}`).toString("base64")}`;
  for (let i = 0; i < signals.length; i += 1000) {
    const batch = signals.slice(i, i + 1000);
    const r = await fetch(`${server.http}/v1/signals`, {
      method: "POST",
      headers: { Authorization: auth, "Content-Type": "application/x-ndjson" },
      body: batch.map((s) => JSON.stringify(s)).join("\n"),
    });
    const body = (await r.json()) as { results?: { status: string }[] };
    const refused = body.results?.filter((x) => x.status !== "accepted") ?? [];
    if (r.status !== 200 || body.results?.length !== batch.length || refused.length > 0) {
      throw new Error(`POST /v1/signals: ${r.status} ${JSON.stringify(body).slice(0, 500)}`);
    }
  }
}

/** Publishes ticks through `POST /v1/ticks` (NDJSON, one request). */
export async function publishTicks(server: Server, list: [string, string, string][]): Promise<void> {
  const auth = `Basic ${Buffer.from(`${PRODUCER.id}:${PRODUCER.key}`).toString("base64")}`;
  const now = Date.now() * 1000;
  const body = list
    .map(([symbol, exchange, last]) =>
      JSON.stringify({ symbol, exchange, bid: last, ask: last, last, volume: 1, ts: now }),
    )
    .join("\n");
  const r = await fetch(`${server.http}/v1/ticks`, {
    method: "POST",
    headers: { Authorization: auth, "Content-Type": "application/x-ndjson" },
    body,
  });
  if (r.status !== 200) throw new Error(`POST /v1/ticks: ${r.status} ${await r.text()}`);
}

/** Replays the embedded fixtures (signals and ticks) into the feed; resolves when all
 * are acknowledged. */
export async function produce(server: Server, count: number, rate: number): Promise<void> {
  const child = spawn(
    binary(),
    ["produce", "--addr", `127.0.0.1:${server.feedPort}`, "--producer", "model-alpha", "--count", String(count), "--rate", String(rate)],
    { stdio: ["ignore", "ignore", "inherit"], env: childEnv() },
  );
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  if (code !== 0) throw new Error(`signalcast produce exited with ${code}`);
}

/** A TCP proxy to 127.0.0.1:`target` that can cut every connection through it, and
 * swallow what the client sends after its request head on the first
 * `swallowRequests` connections (a SUBSCRIBE lost before its answer). */
export class Proxy {
  private constructor(
    private readonly server: net.Server,
    private readonly sockets: Set<net.Socket>,
    readonly port: number,
    /** The head (request line and headers) of every WebSocket upgrade that went
     * through, as a proxy's access log would see it. */
    readonly upgrades: string[],
  ) {}

  static async start(target: number, { swallowRequests = 0 }: { swallowRequests?: number } = {}): Promise<Proxy> {
    const sockets = new Set<net.Socket>();
    const upgrades: string[] = [];
    let connections = 0;
    const server = net.createServer((client) => {
      connections += 1;
      const upstream = net.connect(target, "127.0.0.1");
      if (connections <= swallowRequests) {
        // The request head goes through (the server answers 101 and welcome); every
        // frame after it is lost on the way.
        let headSeen = false;
        client.on("data", (chunk: Buffer) => {
          if (!headSeen) {
            headSeen = true;
            upstream.write(chunk);
          }
        });
      } else {
        client.pipe(upstream).on("error", () => client.destroy());
      }
      client.on("data", (chunk: Buffer) => {
        const text = chunk.toString("latin1");
        const head = text.slice(0, text.indexOf("\r\n\r\n"));
        if (/^GET /.test(head) && /^upgrade:\s*websocket/im.test(head)) upgrades.push(head);
      });
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on("close", () => sockets.delete(s));
        s.on("error", () => s.destroy());
      }
      upstream.pipe(client).on("error", () => upstream.destroy());
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return new Proxy(server, sockets, (server.address() as net.AddressInfo).port, upgrades);
  }

  /** Resets every connection through the proxy, as a network failure does. */
  cut(): number {
    const n = this.sockets.size;
    for (const s of this.sockets) s.resetAndDestroy();
    return n;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}
