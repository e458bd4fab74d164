// The gateway's HTTP API for clients (docs/gateway-openapi.yaml): past signals
// (`GET /v1/signals/history`) and the open ones (`GET /v1/signals/live`), read with the
// same token as the socket, sent as `Authorization: Bearer`, never in the URL.
/** A request the HTTP API refused: `status` and the body's `{error, message}`
 * (`bad_request`, `unauthorized`, `rate_limited`, …). */
export class SignalcastHttpError extends Error {
    name = "SignalcastHttpError";
    status;
    /** The stable code, e.g. `bad_request`; `http_<status>` when the answer was not the
     * API's JSON (a proxy's page, say). */
    error;
    /** On 429: the seconds to wait before asking again (`Retry-After`). */
    retryAfter;
    constructor(status, error, message, retryAfter) {
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
export function httpBase(wsUrl) {
    const u = new URL(wsUrl);
    const scheme = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" }[u.protocol];
    if (!scheme) {
        throw new Error(`not a ws(s) URL: ${wsUrl}`);
    }
    const path = u.pathname.replace(/\/ws\/?$/, "").replace(/\/+$/, "");
    return `${scheme}//${u.host}${path}`;
}
function time(t) {
    if (t instanceof Date) {
        return t.toISOString();
    }
    return typeof t === "number" ? String(Math.trunc(t)) : t;
}
/** The query string of a history or live request (without `?`; empty for none). */
export function query(params) {
    const q = new URLSearchParams();
    const put = (k, v) => {
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
export async function getPage(fetchImpl, url, token, signal) {
    const r = await getJson(fetchImpl, url, token, signal);
    const page = r.body;
    if (!page || !Array.isArray(page.items) || (page.next !== null && typeof page.next !== "string")) {
        throw new SignalcastHttpError(r.status, "bad_response", "the answer is not a page of signals");
    }
    return page;
}
/** GET `url` with the token; the parsed JSON body, or a `SignalcastHttpError`. */
export async function getJson(fetchImpl, url, token, signal) {
    const init = {
        method: "GET",
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    };
    if (signal) {
        init.signal = signal;
    }
    const r = await fetchImpl(url, init);
    const text = await r.text();
    let body;
    try {
        body = JSON.parse(text);
    }
    catch {
        body = undefined;
    }
    if (!r.ok) {
        const e = body;
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
