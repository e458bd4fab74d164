// The gateway's HTTP API for clients (docs/gateway-openapi.yaml): past signals
// (`GET /v1/signals/history`) and the open ones (`GET /v1/signals/live`), read with the
// same token as the socket, sent as `Authorization: Bearer`, never in the URL.

import type { Category, EnrichedSignal, Micros, SignalStatus } from "./messages.js";

/** One signal of a history or live page: its SIGNAL_UPDATE `data`, in its latest form,
 * with the seq it had on each signal channel the caller may read
 * (`{"signals_premium": 388, …}`). */
export interface HistoryItem extends EnrichedSignal {
  channels: Record<string, number>;
}

export interface HistoryPage {
  /** Newest first. */
  items: HistoryItem[];
  /** The cursor of the next (older) page; null on the last one. */
  next: string | null;
  /** Today's signals left out because the caller's daily quota is spent. */
  withheld?: number;
}

export type SignalType = EnrichedSignal["signal_type"];
export type { SignalStatus };

/** Counts and returns of a set of signals (docs/outcomes.md); rates and returns are
 * 4-decimal strings, null when there is nothing to compute them from. */
export interface Figures {
  signals: number;
  open: number;
  target_hit: number;
  stop_hit: number;
  expired: number;
  closed: number;
  /** target_hit / (target_hit + stop_hit). */
  hit_rate: string | null;
  mean_return_pct: string | null;
  median_return_pct: string | null;
}

/** Figures over the signals routed in the last day, week, and all time. */
export interface Windows {
  day: Figures;
  week: Figures;
  all: Figures;
}

/** `GET /v1/sources`: the scoreboard, most signals first. */
export interface Scoreboard {
  generated_at: Micros;
  sources: {
    source_id: string;
    source_type: EnrichedSignal["source_type"];
    windows: Windows;
    categories: Partial<Record<Category, Windows>>;
  }[];
}

/** `GET /v1/signals/stats`: one symbol's figures. */
export interface SymbolStats extends Figures {
  symbol: string;
  exchange: string | null;
  mean_confidence: string | null;
  by_type: Partial<Record<SignalType, Figures & { mean_confidence: string | null }>>;
}

/** A point in time: a `Date`, an RFC 3339 string, or microseconds since the Unix epoch
 * (as the signals' own `*_at`/`*_ts` fields). */
export type TimeParam = Date | string | Micros;

export interface PageParams {
  /** Items per page, 1 to 500 (the server's default: 50). */
  limit?: number;
  /** The `next` of the previous page. */
  cursor?: string;
  /** Aborts the request. */
  signal?: AbortSignal;
}

export interface HistoryParams extends PageParams {
  symbol?: string;
  exchange?: string;
  /** One or several; only the caller's own categories are ever found. */
  category?: Category | Category[];
  signal_type?: SignalType;
  /** The producer's source id (a UUID). */
  source?: string;
  status?: SignalStatus;
  /** Routed at or after. */
  from?: TimeParam;
  /** Routed before. */
  to?: TimeParam;
}

/** History's filters but `status` (live signals are open). */
export type LiveParams = Omit<HistoryParams, "status">;

/** What the client needs of `fetch`: the browser's or Node's (20+). */
export type FetchLike = (
  input: string,
  init: { method: string; headers: Record<string, string>; signal?: AbortSignal },
) => Promise<{
  status: number;
  ok: boolean;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
}>;

/** A request the HTTP API refused: `status` and the body's `{error, message}`
 * (`bad_request`, `unauthorized`, `rate_limited`, …). */
export class SignalcastHttpError extends Error {
  override readonly name = "SignalcastHttpError";
  readonly status: number;
  /** The stable code, e.g. `bad_request`; `http_<status>` when the answer was not the
   * API's JSON (a proxy's page, say). */
  readonly error: string;
  /** On 429: the seconds to wait before asking again (`Retry-After`). */
  readonly retryAfter?: number;

  constructor(status: number, error: string, message: string, retryAfter?: number) {
    super(message);
    this.status = status;
    this.error = error;
    if (retryAfter !== undefined) {
      this.retryAfter = retryAfter;
    }
  }
}

/**
 * The HTTP(S) base of the gateway whose WebSocket is at `wsUrl`: the scheme made
 * http(s), the last path segment `ws` taken off, the query and fragment dropped
 * (`wss://host/prefix/ws?x` → `https://host/prefix`).
 */
export function httpBase(wsUrl: string): string {
  const u = new URL(wsUrl);
  const scheme = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" }[u.protocol];
  if (!scheme) {
    throw new Error(`not a ws(s) URL: ${wsUrl}`);
  }
  const path = u.pathname.replace(/\/ws\/?$/, "").replace(/\/+$/, "");
  return `${scheme}//${u.host}${path}`;
}

function time(t: TimeParam): string {
  if (t instanceof Date) {
    return t.toISOString();
  }
  return typeof t === "number" ? String(Math.trunc(t)) : t;
}

/** The query string of a history or live request (without `?`; empty for none). */
export function query(params: HistoryParams): string {
  const q = new URLSearchParams();
  const put = (k: string, v: string | number | undefined) => {
    if (v !== undefined) {
      q.set(k, String(v));
    }
  };
  put("symbol", params.symbol);
  put("exchange", params.exchange);
  put("category", Array.isArray(params.category) ? params.category.join(",") : params.category);
  put("signal_type", params.signal_type);
  put("source", params.source);
  put("status", params.status);
  put("from", params.from === undefined ? undefined : time(params.from));
  put("to", params.to === undefined ? undefined : time(params.to));
  put("limit", params.limit);
  put("cursor", params.cursor);
  return q.toString();
}

/** GET `url` with the token; the parsed page, or a `SignalcastHttpError`. */
export async function getPage(fetchImpl: FetchLike, url: string, token: string, signal?: AbortSignal): Promise<HistoryPage> {
  const r = await getJson(fetchImpl, url, token, signal);
  const page = r.body as Partial<HistoryPage> | undefined;
  if (!page || !Array.isArray(page.items) || (page.next !== null && typeof page.next !== "string")) {
    throw new SignalcastHttpError(r.status, "bad_response", "the answer is not a page of signals");
  }
  return page as HistoryPage;
}

/** GET `url` with the token; the parsed JSON body, or a `SignalcastHttpError`. */
export async function getJson(
  fetchImpl: FetchLike,
  url: string,
  token: string,
  signal?: AbortSignal,
): Promise<{ status: number; body: unknown }> {
  const init: Parameters<FetchLike>[1] = {
    method: "GET",
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
  };
  if (signal) {
    init.signal = signal;
  }
  const r = await fetchImpl(url, init);
  const text = await r.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!r.ok) {
    const e = body as { error?: unknown; message?: unknown } | undefined;
    const retry = r.headers.get("retry-after");
    const seconds = retry !== null && /^\d+$/.test(retry.trim()) ? Number(retry.trim()) : undefined;
    if (typeof e?.error === "string" && typeof e.message === "string") {
      throw new SignalcastHttpError(r.status, e.error, e.message, seconds);
    }
    throw new SignalcastHttpError(r.status, `http_${r.status}`, text.slice(0, 200) || `HTTP ${r.status}`, seconds);
  }
  if (body === undefined) {
    throw new SignalcastHttpError(r.status, "bad_response", "the answer is not JSON");
  }
  return { status: r.status, body };
}
