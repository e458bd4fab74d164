// The live dashboard: signals per tier as they arrive (through the TypeScript client,
// served from /assets/sdk/), older ones from the gateway's history on demand ("load
// older", or scrolling a table to its end), and charts of the server's own /metrics.
import { SignalcastClient } from "/assets/sdk/index.js";

const TIERS = ["free", "basic", "premium", "enterprise"];
const ROWS = 10; // live signals kept per tier table until older ones are loaded
const MAX_ROWS = 1000; // rows a table keeps at most once older ones are loaded
const HISTORY_PAGE = 50; // signals asked per history request
const HISTORY_PAGES = 4; // requests at most per "load older" (lower tiers skip many)
const POLL_MS = 2000; // /metrics
const SCOREBOARD_MS = 15000; // /v1/sources (the server computes it at most every 10 s)
const WINDOW = 150; // chart points (5 minutes at 2 s)

const $ = (id) => document.getElementById(id);

// --- connection ---

let client = null;
let pricesOn = false;
/** The symbol filter box's list (empty: every symbol). */
let watchlist = [];

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect(token) {
  if (client) client.close();
  for (const t of TIERS) tierView(t).reset();
  $("prices").replaceChildren();
  $("scoreboard").hidden = true;
  pricesOn = false;
  client = new SignalcastClient({ url: wsUrl(), token, backoff: { initialMs: 200, maxMs: 5000 } });
  client.on("state", showState);
  client.on("welcome", (w) => {
    $("user").textContent = w.user;
    $("tier").textContent = w.tier;
    $("reconnects").textContent = String(client.reconnects);
    for (const t of TIERS.slice(0, TIERS.indexOf(w.tier) + 1)) {
      const view = tierView(t);
      view.show();
      if (!view.subscribed) {
        view.subscribed = true;
        client.subscribe(`signals_${t}`, (m) => view.add(m), undefined, signalFilter());
      }
    }
    if (!pricesOn) {
      pricesOn = true;
      client.subscribe("prices_general", (m) => showPrice(m.data), undefined, { filter: { symbols: watchlist } });
    }
    void showScoreboard();
  });
  client.on("resume", (e) => {
    const el = $("resume");
    el.textContent = e.recovered
      ? `${e.channel}: resumed from seq ${e.since.seq}, nothing lost`
      : `${e.channel}: could not resume from seq ${e.since.seq} (epoch ${e.since.epoch}); live from seq ${e.head}`;
    el.className = `resume ${e.recovered ? "kept" : "lost"}`;
    el.dataset.recovered = String(e.recovered);
  });
  client.on("close", (c) => console.info("socket closed", c.code, c.reason));
  client.connect();
}

/** The subscribe options of a signal channel for the current watchlist. */
function signalFilter() {
  return watchlist.length > 0 ? { filter: { symbols: watchlist } } : {};
}

/** Applies the symbol filter box: signal tables and prices show those symbols only
 * from now on (the server filters; prices of the list come again at once). */
function applyWatchlist(text) {
  watchlist = text
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  $("watching").textContent = watchlist.length > 0 ? `watching ${watchlist.join(", ")}` : "";
  if (!client) return;
  for (const t of TIERS) {
    if (tierView(t).subscribed) client.setFilter(`signals_${t}`, watchlist.length > 0 ? { symbols: watchlist } : undefined);
  }
  if (pricesOn) {
    prices.clear();
    $("prices").replaceChildren();
    client.setFilter("prices_general", { symbols: watchlist });
  }
}

function showState(state) {
  const el = $("state");
  el.textContent = state;
  el.className = `state ${state}`;
  el.dataset.state = state;
}

// --- tier tables ---

const views = new Map();

function tierView(tier) {
  let v = views.get(tier);
  if (v) return v;
  const node = $("tier-template").content.firstElementChild.cloneNode(true);
  node.id = `tier-${tier}`;
  node.hidden = true;
  node.style.setProperty("--tier-color", `var(--${tier})`);
  node.querySelector(".name").textContent = tier;
  $("tiers").append(node);
  const body = node.querySelector("tbody");
  const rows = node.querySelector(".rows");
  const button = node.querySelector(".load-older");
  const olderState = node.querySelector(".older-state");
  const channel = `signals_${tier}`;
  let count = 0;
  // Scrolling back: ids shown (history and live overlap at their seam), the cursor of
  // the next older page and the bound (`to`) its pages share, whether the beginning was
  // reached, and the number of older rows shown.
  let shown = new Set();
  let older = { cursor: null, to: null, done: false, loading: false, rows: 0, withheld: 0 };
  // The seqs of the last messages received (signals and closes), oldest first, on the
  // node as data-received: what shows that nothing was lost across a reconnect.
  let received = [];

  function row(s, seq, fresh) {
    const tr = document.createElement("tr");
    tr.className = fresh ? "fresh" : "older";
    tr.dataset.seq = String(seq);
    tr.dataset.id = s.id;
    tr.dataset.generated = String(s.generated_at);
    tr.dataset.routed = String(s.routed_ts);
    tr.dataset.status = s.status ?? "open";
    const k = s.market; // the symbol's latest tick when the signal was routed, or null
    const cells = [
      ["age", ""],
      ["", s.symbol, s.id],
      ["dim", s.exchange],
      ["dim", s.category],
      ["dim", s.source_type],
      [s.signal_type, s.signal_type],
      ["num", s.entry_price],
      ["num", s.target_price],
      ["num", s.stop_loss],
      ["num", s.confidence.toFixed(2)],
      ...statusCell(s),
      ["num", k ? k.bid : "no tick"],
      ["num", k ? k.ask : ""],
      ["num", k ? k.last : ""],
      ["num", k ? `${k.tick_age_ms} ms` : ""],
      ["num dim", String(seq)],
    ];
    appendCells(tr, cells);
    updateAge(tr);
    return tr;
  }

  function trim() {
    // Live rows only: the newest ROWS; once older ones are shown (or being loaded below
    // the oldest row), all of them up to MAX_ROWS.
    const keep = older.rows > 0 || older.loading ? MAX_ROWS : ROWS;
    while (body.rows.length > keep) {
      const last = body.rows[body.rows.length - 1];
      shown.delete(last.dataset.id);
      if (last.classList.contains("older")) older.rows -= 1;
      body.deleteRow(-1);
      // The next scroll back starts below what is left.
      older.cursor = null;
      older.to = null;
      older.done = false;
    }
  }

  function showOlderState(text) {
    olderState.textContent = text;
    button.disabled = older.done || older.loading;
    node.dataset.older = older.done ? "done" : older.loading ? "loading" : "more";
  }

  /** One step back through /v1/signals/history with the connected token: below the
   * table's oldest row, the signals that entered this tier's channel. */
  async function loadOlder() {
    if (older.loading || older.done || !client) return;
    const c = client;
    older.loading = true;
    showOlderState("loading…");
    let added = 0;
    let message = "";
    try {
      for (let pages = 0; pages < HISTORY_PAGES && added < HISTORY_PAGE / 2 && !older.done; pages++) {
        if (older.cursor === null) {
          // Through the oldest row's routing time (µs; `to` is exclusive, so + 1: a
          // signal routed in the same µs is not skipped, and the ids seen are not repeated).
          const last = body.rows[body.rows.length - 1];
          older.to = last ? Number(last.dataset.routed) + 1 : null;
        }
        const params = { limit: HISTORY_PAGE };
        if (older.cursor !== null) params.cursor = older.cursor;
        if (older.to !== null) params.to = older.to;
        const page = await c.history(params);
        if (c !== client) return; // another token was picked meanwhile
        for (const item of page.items) {
          const seq = item.channels[channel];
          if (seq === undefined || shown.has(item.id)) continue;
          shown.add(item.id);
          body.append(row(item, seq, false));
          older.rows += 1;
          added += 1;
        }
        older.withheld += page.withheld ?? 0;
        older.cursor = page.next;
        older.done = page.next === null;
      }
      message = older.done ? "the beginning of history" : "";
    } catch (e) {
      message =
        e && e.status === 429
          ? `too many requests: try again in ${e.retryAfter ?? "a few"} s`
          : `could not load older signals: ${e && e.message ? e.message : e}`;
    } finally {
      if (c === client) {
        older.loading = false;
        trim();
        const parts = [];
        if (older.rows > 0) parts.push(`${older.rows} older shown`);
        if (older.withheld > 0) parts.push(`${older.withheld} withheld (daily quota)`);
        if (message) parts.push(message);
        showOlderState(parts.join(" · "));
        node.querySelector(".empty").hidden = body.rows.length > 0 || !older.done;
        if (body.rows.length === 0 && older.done) node.querySelector(".empty").textContent = "no signals yet";
      }
    }
  }

  button.addEventListener("click", () => void loadOlder());
  // Infinite scroll: a table scrolled to (near) its end asks for the next older page.
  rows.addEventListener("scroll", () => {
    if (rows.scrollTop > 0 && rows.scrollTop + rows.clientHeight >= rows.scrollHeight - 48) void loadOlder();
  });

  v = {
    subscribed: false,
    show() {
      node.hidden = false;
    },
    reset() {
      this.subscribed = false;
      node.hidden = true;
      body.replaceChildren();
      count = 0;
      shown = new Set();
      received = [];
      delete node.dataset.received;
      older = { cursor: null, to: null, done: false, loading: false, rows: 0, withheld: 0 };
      node.querySelector(".empty").textContent = "waiting for signals…";
      node.querySelector(".empty").hidden = false;
      showOlderState("");
    },
    add(m) {
      const s = m.data;
      received.push(m.seq);
      if (received.length > 200) received = received.slice(-100);
      node.dataset.received = received.join(",");
      node.querySelector(".seq").textContent = `seq ${m.seq}`;
      if (shown.has(s.id)) {
        // A close (a later SIGNAL_UPDATE of the same id): its row shows how it ended.
        if (s.status !== "open") {
          const tr = body.querySelector(`tr[data-id="${CSS.escape(s.id)}"]`);
          if (tr) setStatus(tr, s);
        }
        return;
      }
      shown.add(s.id);
      body.prepend(row(s, m.seq, true));
      trim();
      count += 1;
      node.querySelector(".count").textContent = `${count} signal${count === 1 ? "" : "s"}`;
      node.querySelector(".seq").textContent = `seq ${m.seq}`;
      node.querySelector(".empty").hidden = true;
    },
  };
  views.set(tier, v);
  return v;
}

/** Appends a cell per [class, text, title?] to `tr` (text only: never HTML). */
function appendCells(tr, cells) {
  for (const [cls, text, title] of cells) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    if (title) td.title = title;
    tr.append(td);
  }
}

/** The status cell of a signal: its status, and its return once closed. */
function statusCell(s) {
  const status = s.status ?? "open";
  const r = s.outcome ? s.outcome.return_pct : null;
  const text = r === null || r === undefined ? status.replace("_", " ") : `${status.replace("_", " ")} ${r.startsWith("-") ? "" : "+"}${r}%`;
  const title = s.outcome
    ? `entry ${s.outcome.entry_price ?? "–"} → exit ${s.outcome.exit_price ?? "–"}`
    : "tracked against the live ticks until its target, stop or expiry";
  return [[`status ${status}`, text, title]];
}

function setStatus(tr, s) {
  const [[cls, text, title]] = statusCell(s);
  const td = tr.querySelector("td.status");
  td.className = cls;
  td.textContent = text;
  td.title = title;
  tr.dataset.status = s.status;
}

// --- scoreboard ---

async function showScoreboard() {
  const c = client;
  if (!c) return;
  let board;
  try {
    board = await c.sources();
  } catch (e) {
    console.info("scoreboard unavailable", e && e.message ? e.message : e);
    return;
  }
  if (c !== client) return;
  const section = $("scoreboard");
  const body = section.querySelector("tbody");
  body.replaceChildren();
  for (const src of board.sources) {
    const w = src.windows.week;
    if (w.signals === 0) continue;
    const tr = document.createElement("tr");
    tr.dataset.source = src.source_id;
    const pct = (v) => (v === null ? "–" : `${v.startsWith("-") ? "" : "+"}${v}%`);
    const sign = (v) => (v === null ? "" : v.startsWith("-") ? "num down" : "num up");
    const cells = [
      ["", src.source_id.slice(0, 8), src.source_id],
      ["dim", src.source_type],
      ["num", String(w.signals)],
      ["num", String(w.open)],
      ["num", String(w.target_hit)],
      ["num", String(w.stop_hit)],
      ["num", String(w.expired)],
      ["num", String(w.closed)],
      ["num", w.hit_rate === null ? "–" : `${(Number(w.hit_rate) * 100).toFixed(1)}%`],
      [sign(w.mean_return_pct), pct(w.mean_return_pct)],
      [sign(w.median_return_pct), pct(w.median_return_pct)],
    ];
    appendCells(tr, cells);
    body.append(tr);
  }
  section.querySelector(".empty").hidden = body.rows.length > 0;
  section.hidden = false;
}

setInterval(() => void showScoreboard(), SCOREBOARD_MS);

function updateAge(tr) {
  const micros = Number(tr.dataset.generated);
  const s = Math.max(0, (Date.now() * 1000 - micros) / 1e6);
  tr.cells[0].textContent =
    s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${Math.floor(s / 60)} min` : s < 172800 ? `${Math.floor(s / 3600)} h` : `${Math.floor(s / 86400)} d`;
}

setInterval(() => document.querySelectorAll("tr[data-generated]").forEach(updateAge), 1000);

const prices = new Map();
function showPrice(t) {
  const key = `${t.symbol}@${t.exchange}`;
  let el = prices.get(key);
  if (!el || !el.isConnected) {
    el = document.createElement("span");
    prices.set(key, el);
    $("prices").append(el);
  }
  el.innerHTML = "";
  const b = document.createElement("b");
  b.textContent = t.symbol;
  el.append(b, document.createTextNode(t.last));
}

// --- metrics ---

/** Prometheus text → Map of "name{labels}" → value. */
function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const LATENCY = "signalcast_delivery_latency_seconds_bucket";

/** Cumulative buckets [(upper bound s, count)] of the latency histogram. */
function buckets(m) {
  const b = [];
  for (const [k, v] of m) {
    const match = k.startsWith(LATENCY) && k.match(/le="([^"]+)"/);
    if (match) b.push([match[1] === "+Inf" ? Infinity : Number(match[1]), v]);
  }
  return b.sort((x, y) => x[0] - y[0]);
}

/** The q-quantile (ms) of what was delivered between two scrapes, as Prometheus'
 * histogram_quantile does it: linear inside the bucket. */
function quantile(q, before, after) {
  const delta = after.map(([le, c], i) => [le, c - (before[i]?.[1] ?? 0)]);
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, c] of delta) {
    if (c >= rank) {
      if (le === Infinity) return lower * 1000;
      return (lower + ((le - lower) * (rank - below)) / Math.max(1, c - below)) * 1000;
    }
    lower = le;
    below = c;
  }
  return null;
}

const series = {
  p50: [], p90: [], p99: [],
  free: [], basic: [], premium: [], enterprise: [],
};
let previous = null;

async function poll() {
  let m;
  try {
    const r = await fetch("/metrics", { cache: "no-store" });
    // 404: the gateway serves /metrics on its own listener (`metrics_listen`), not here.
    $("metrics-elsewhere").hidden = r.status !== 404;
    if (!r.ok) throw new Error(`/metrics: ${r.status}`);
    m = parseMetrics(await r.text());
  } catch {
    previous = null; // the gateway is away; the next scrape starts a new delta
    return;
  }
  const now = { at: Date.now(), buckets: buckets(m), m };
  const push = (name, v) => {
    series[name].push(v);
    if (series[name].length > WINDOW) series[name].shift();
  };
  if (previous) {
    for (const [name, q] of [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]]) {
      push(name, quantile(q, previous.buckets, now.buckets));
    }
    const delivered = (x) => TIERS.reduce((s, t) => s + (x.m.get(`signalcast_signals_delivered_total{tier="${t}"}`) ?? 0), 0);
    const rate = (delivered(now) - delivered(previous)) / ((now.at - previous.at) / 1000);
    $("rate").textContent = rate >= 0 ? rate.toFixed(0) : "–";
  }
  for (const t of TIERS) push(t, m.get(`signalcast_connections{tier="${t}"}`) ?? 0);
  const sum = (prefix) => [...m].filter(([k]) => k.startsWith(prefix)).reduce((s, [, v]) => s + v, 0);
  $("routed").textContent = sum("signalcast_signals_routed_total").toLocaleString();
  $("dropped").textContent = sum("signalcast_drops_total").toLocaleString();
  $("slow").textContent = sum("signalcast_slow_consumer_closes_total").toLocaleString();
  previous = now;
  draw($("latency-chart"), ["p50", "p90", "p99"], "ms");
  draw($("connections-chart"), TIERS, "");
}

function draw(canvas, names, unit) {
  const css = getComputedStyle(document.documentElement);
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const values = names.flatMap((n) => series[n]).filter((v) => v !== null);
  // The x axis grows with the data up to the window, so a new page is not a sliver.
  const span = Math.min(WINDOW, Math.max(30, ...names.map((n) => series[n].length)));
  const top = niceCeil(Math.max(1, ...values));
  const left = 44, bottom = h - 18, right = w - 6, topY = 8;
  g.strokeStyle = css.getPropertyValue("--line");
  g.fillStyle = css.getPropertyValue("--dim");
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = bottom - ((bottom - topY) * i) / 4;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(right, y);
    g.stroke();
    g.fillText(`${format(top * i / 4)}${unit}`, 2, y + 4);
  }
  const seconds = (span * POLL_MS) / 1000;
  g.fillText(`last ${seconds >= 120 ? `${Math.round(seconds / 60)} min` : `${seconds} s`}`, left, h - 4);
  g.lineWidth = 2;
  for (const n of names) {
    g.strokeStyle = css.getPropertyValue(`--${n}`);
    g.beginPath();
    let pen = false;
    series[n].forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const x = right - ((series[n].length - 1 - i) * (right - left)) / (span - 1);
      const y = bottom - ((bottom - topY) * v) / top;
      if (pen) g.lineTo(x, y);
      else g.moveTo(x, y);
      pen = true;
    });
    g.stroke();
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function format(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, "") || "0";
}

// --- start ---

function readGivenToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const token = fragment.get("token") || query.get("token");
  if (fragment.has("token") || query.has("token")) {
    query.delete("token");
    const rest = query.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
  }
  return token;
}

async function start() {
  // The user's own (highest) tier first.
  for (const t of [...TIERS].reverse()) tierView(t);
  // A token handed over in the page's address: the fragment (`/#token=…`) never leaves
  // the browser; `?token=` (sent with the page's request, so in access logs) is still
  // read. Either is taken out of the address bar and history at once. The socket itself
  // carries the token in its subprotocol (the client does that), never in its URL.
  const given = readGivenToken();
  let devTokens = [];
  try {
    const r = await fetch("/dev/tokens");
    if (r.ok) devTokens = await r.json();
  } catch {
    // not the embedded default: paste a token
  }
  const select = $("user-select");
  for (const d of devTokens) {
    const o = document.createElement("option");
    o.value = d.token;
    o.textContent = `${d.user} (${d.tier})`;
    select.append(o);
  }
  $("picker").hidden = devTokens.length === 0;
  const enterprise = devTokens.find((d) => d.tier === "enterprise");
  if (enterprise) select.value = enterprise.token;
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim() || select.value;
    if (token) connect(token);
  });
  $("watch").addEventListener("submit", (e) => {
    e.preventDefault();
    applyWatchlist($("symbols-input").value);
  });
  select.addEventListener("change", () => {
    $("token-input").value = "";
    connect(select.value);
  });
  const token = given || select.value;
  if (token) connect(token);
  poll();
  setInterval(poll, POLL_MS);
}

start();
