// The client: one WebSocket to a signalcast gateway, kept alive (PING), re-opened with
// backoff when it drops, and every channel resumed from the last seq seen, so that a
// reconnect costs nothing, or says so with a `resume` event whose `recovered` is false.
import { SignalcastHttpError, getJson, getPage, httpBase, query, } from "./api.js";
import { backoffDelay, defaultBackoff } from "./backoff.js";
import { CloseCode, } from "./messages.js";
/** The subprotocol the gateway speaks; it answers with this one in the handshake. */
export const PROTOCOL = "signalcast.v1";
/** The token travels as a second offered subprotocol, `signalcast.token.<JWT>`: in a
 * header (`Sec-WebSocket-Protocol`), not in the URL, whose query proxies and access
 * logs record. The gateway never echoes it. */
export const TOKEN_PROTOCOL_PREFIX = "signalcast.token.";
// RFC 7230 token characters: what a subprotocol may hold (a JWT always fits).
const TOKEN_CHARS = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
const STEPS = ["add_symbols", "remove_symbols"];
/** Whether `filter` is a watchlist step: `add_symbols`/`remove_symbols` only. */
function isStep(filter) {
    return STEPS.some((k) => filter[k] !== undefined);
}
/** `"TCS"` (any exchange) or `"NSE:TCS"`, as the server splits it (at the first `:`). */
function symbolKey(s) {
    const i = s.indexOf(":");
    return i < 0 ? [s, null] : [s.slice(i + 1), s.slice(0, i)];
}
/** Deduplicated, in the server's order: by symbol, then exchange (any exchange first). */
function sortedSymbols(symbols) {
    const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
    return [...new Set(symbols)].sort((a, b) => {
        const [sa, ea] = symbolKey(a);
        const [sb, eb] = symbolKey(b);
        if (sa !== sb)
            return cmp(sa, sb);
        if (ea === eb)
            return 0;
        if (ea === null)
            return -1;
        if (eb === null)
            return 1;
        return cmp(ea, eb);
    });
}
/**
 * The whole filter `change` leaves in force on top of `current`, as the server works
 * it out (gateway-ws/src/protocol/filter.rs, `Filter::update`): a step
 * (`add_symbols`/`remove_symbols`) changes the current watchlist and keeps the rest of
 * the current filter (none: every symbol); any other filter replaces it. A string
 * where the server would refuse the step.
 */
function applyFilter(current, change) {
    if (!isStep(change)) {
        return { ...change };
    }
    const other = Object.keys(change).find((k) => !STEPS.includes(k) && change[k] !== undefined);
    if (other !== undefined) {
        return `${JSON.stringify(other)} cannot go with add_symbols or remove_symbols`;
    }
    const had = current?.symbols ?? [];
    // "EX:SYM" and "SYM" stand for one (symbol, exchange) pair each: compared as text.
    const remove = new Set(change.remove_symbols ?? []);
    const kept = had.filter((s) => !remove.has(s));
    const add = change.add_symbols ?? [];
    if (had.length > 0 && kept.length === 0 && add.length === 0) {
        // An empty list means every symbol: the server refuses to turn a watchlist into the
        // whole channel this way.
        return "remove_symbols would empty the watchlist: setFilter(channel, undefined) for every symbol, or unsubscribe";
    }
    const { symbols: _, ...rest } = current ?? {};
    const symbols = sortedSymbols([...kept, ...add]);
    return symbols.length > 0 ? { ...rest, symbols } : rest;
}
const OPEN = 1;
export class SignalcastClient {
    #options;
    #fetch;
    #httpUrl;
    #channels = new Map();
    #handlers = {
        state: new Set(),
        welcome: new Set(),
        resume: new Set(),
        error: new Set(),
        unsubscribed: new Set(),
        system: new Set(),
        close: new Set(),
        message: new Set(),
    };
    #ws = null;
    #state = "idle";
    #attempt = 0;
    #opened = 0;
    #reconnectTimer = null;
    #pingTimer = null;
    #lastReceived = 0;
    /** Channels subscribed on this connection that have not been answered yet. */
    #resuming = new Map();
    constructor(options) {
        const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
        if (!WebSocketImpl) {
            throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the `ws` package)");
        }
        const pingIntervalMs = options.pingIntervalMs ?? 30_000;
        this.#options = {
            url: options.url,
            token: options.token,
            WebSocket: WebSocketImpl,
            pingIntervalMs,
            idleTimeoutMs: options.idleTimeoutMs ?? pingIntervalMs * 2.5,
            backoff: { ...defaultBackoff, ...options.backoff },
            fatalCloseCodes: options.fatalCloseCodes ?? [CloseCode.Suspended],
        };
        this.#fetch = options.fetch;
        this.#httpUrl = options.httpUrl?.replace(/\/+$/, "");
    }
    get state() {
        return this.#state;
    }
    /** Connections opened after the first. */
    get reconnects() {
        return Math.max(0, this.#opened - 1);
    }
    /** The last seq and epoch seen on a signal channel. */
    position(channel) {
        const p = this.#channels.get(channel)?.position;
        return p ? { ...p } : undefined;
    }
    on(event, handler) {
        this.#handlers[event].add(handler);
        return () => this.#handlers[event].delete(handler);
    }
    /** Opens the connection (and keeps it open until `close`). */
    connect() {
        if (this.#state === "idle" || this.#state === "closed") {
            this.#attempt = 0;
            void this.#open();
        }
    }
    /** Closes for good: no reconnect. */
    close() {
        this.#setState("closed");
        this.#clearTimers();
        const ws = this.#ws;
        this.#ws = null;
        if (ws) {
            ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
            ws.close(CloseCode.Normal, "client closed");
        }
    }
    /**
     * Subscribes to `channel` (now if connected, else on connect) and adds `listener` to
     * its messages. Returns a function that removes the listener, and unsubscribes when
     * it was the channel's last. `from` resumes a signal channel from a saved position.
     */
    subscribe(channel, listener, from, options = {}) {
        let state = this.#channels.get(channel);
        if (!state) {
            state = { listeners: new Set(), position: from ? { ...from } : undefined, pending: 0, deferred: false };
            if (options.filter) {
                // A step on a new subscription is a step on the default (every symbol): kept
                // whole, so that a reconnect does not send the step again. (One the server
                // refuses is sent as given, and refused.)
                const full = applyFilter(undefined, options.filter);
                state.filter = typeof full === "string" ? { ...options.filter } : full;
            }
            if (options.snapshot !== undefined && !from)
                state.snapshot = options.snapshot;
            if (options.maxFrequency !== undefined)
                state.maxFrequency = options.maxFrequency;
            this.#channels.set(channel, state);
            if (this.#isOpen()) {
                this.#sendSubscribe(channel, state);
            }
        }
        if (listener) {
            state.listeners.add(listener);
        }
        const st = state;
        return () => {
            if (listener) {
                st.listeners.delete(listener);
            }
            if (st.listeners.size === 0 && this.#channels.get(channel) === st) {
                this.unsubscribe(channel);
            }
        };
    }
    /**
     * Replaces the filter of a subscribed signal channel (the server swaps it where the
     * subscription stands: no gap, no repeat); the new filter goes with every later
     * SUBSCRIBE of the channel, reconnects included. `undefined` lets everything through.
     *
     * `{add_symbols, remove_symbols}` changes the current watchlist in steps. The client
     * applies each step to the filter in force, as the server does, and keeps the whole
     * result: a step goes on the wire only while the server holds the subscription;
     * disconnected, the whole filter goes with the next SUBSCRIBE; subscribed but not yet
     * answered (a resume waiting for its replay), the whole filter is sent once
     * SUBSCRIBED arrives, so that the resume is never replaced by a subscription from
     * the head. A step the server would refuse (one that empties the watchlist, or
     * mixed with other parts) changes nothing and is reported as an `error` event
     * (`bad_request`), as the server's refusal would be.
     */
    setFilter(channel, filter) {
        const state = this.#channels.get(channel);
        if (!state)
            return;
        let full;
        if (filter) {
            const applied = applyFilter(state.filter, filter);
            if (typeof applied === "string") {
                const refused = { type: "ERROR", code: "bad_request", message: applied, channel };
                queueMicrotask(() => this.#emit("error", refused));
                return;
            }
            full = applied;
        }
        state.filter = full;
        if (!this.#isOpen()) {
            return; // the next connection's SUBSCRIBE carries it
        }
        if (!state.confirmed) {
            state.deferred = true; // a filter-only SUBSCRIBE now would replace the resume
            return;
        }
        // Only the filter: no since, no snapshot. A step as a step (a watchlist too large
        // for one message is built this way), on top of what the server holds.
        const wire = filter && isStep(filter) ? { ...filter } : (full ?? {});
        state.pending += 1;
        this.#send({ type: "SUBSCRIBE", channel, filter: wire });
    }
    /**
     * Prices of a watchlist: the latest price of each symbol (`"GOLD"` on any exchange,
     * `"MCX:GOLD"` on one) first, then their updates, at most `maxFrequency` a second per
     * symbol (the tier's rate when absent). Change the list with `setFilter("prices_general",
     * {symbols})` and the rate with `setMaxFrequency`; both are kept across reconnects.
     */
    watchPrices(symbols, listener, maxFrequency) {
        return this.subscribe("prices_general", (m) => {
            if (m.type === "PRICE_UPDATE")
                listener(m.data);
        }, undefined, { filter: { symbols }, maxFrequency });
    }
    /** Lowers (or raises, up to the tier's rate) the rate of `prices_general` on the fly. */
    setMaxFrequency(maxFrequency) {
        const state = this.#channels.get("prices_general");
        if (!state)
            return;
        state.maxFrequency = maxFrequency;
        if (!this.#isOpen()) {
            return; // the next connection's SUBSCRIBE carries it
        }
        if (!state.confirmed) {
            state.deferred = true; // sent once the SUBSCRIBE under way is answered
            return;
        }
        state.pending += 1;
        this.#send({ type: "SUBSCRIBE", channel: "prices_general", max_frequency: maxFrequency });
    }
    unsubscribe(channel) {
        if (this.#channels.delete(channel) && this.#isOpen()) {
            this.#send({ type: "UNSUBSCRIBE", channel });
        }
    }
    // --- the HTTP API (docs/gateway-openapi.yaml) ---
    /**
     * One page of past signals the token may see, newest first
     * (`GET /v1/signals/history`). Pass the page's `next` as `cursor` for the next older
     * page. Throws `SignalcastHttpError` when the gateway refuses (400 bad parameter, 401,
     * 403 origin, 429 with `retryAfter`, 503 no store).
     */
    async history(params = {}) {
        return this.#get("/v1/signals/history", query(params), params.signal);
    }
    /** One page of the signals still open and unexpired, newest first
     * (`GET /v1/signals/live`), with history's filters but `status`; errors as `history`. */
    async live(params = {}) {
        return this.#get("/v1/signals/live", query(params), params.signal);
    }
    /**
     * Every page of `history(params)`, newest first, following each page's `next` until
     * the last: `for await (const page of client.historyPages({symbol: "TCS"}))`. Stop
     * early with `break`. A refused request throws (a 429 as well: wait `retryAfter`
     * seconds, then go on from the last page's `next`).
     */
    async *historyPages(params = {}) {
        let cursor = params.cursor;
        for (;;) {
            const page = await this.history(cursor === undefined ? params : { ...params, cursor });
            yield page;
            if (page.next === null) {
                return;
            }
            cursor = page.next;
        }
    }
    /** The scoreboard of every signal source (`GET /v1/sources`, docs/outcomes.md):
     * per source, counts, hit rate and returns over the last day, week and all time, and
     * per category. Any signed-in user may read it; errors as `history`. */
    async sources(options = {}) {
        const r = await this.#getJson("/v1/sources", "", options.signal);
        const board = r.body;
        if (!Array.isArray(board.sources)) {
            throw new SignalcastHttpError(r.status, "bad_response", "the answer is not a scoreboard");
        }
        return board;
    }
    /** One symbol's figures by signal type and status (`GET /v1/signals/stats`). */
    async symbolStats(symbol, options = {}) {
        const q = new URLSearchParams({ symbol });
        if (options.exchange !== undefined) {
            q.set("exchange", options.exchange);
        }
        const r = await this.#getJson("/v1/signals/stats", q.toString(), options.signal);
        return r.body;
    }
    async #getJson(path, qs, signal) {
        const base = this.#httpUrl ?? httpBase(this.#options.url);
        const token = await this.#token();
        return getJson(this.#fetchImpl(), `${base}${path}${qs ? `?${qs}` : ""}`, token, signal);
    }
    #fetchImpl() {
        return (this.#fetch ??
            ((input, init) => {
                const g = globalThis;
                if (!g.fetch) {
                    throw new Error("no fetch implementation: pass options.fetch");
                }
                return g.fetch(input, init);
            }));
    }
    async #get(path, qs, signal) {
        const base = this.#httpUrl ?? httpBase(this.#options.url);
        const token = await this.#token();
        return getPage(this.#fetchImpl(), `${base}${path}${qs ? `?${qs}` : ""}`, token, signal);
    }
    // --- the connection ---
    async #open() {
        this.#setState(this.#opened === 0 ? "connecting" : "reconnecting");
        let token;
        try {
            token = await this.#token();
        }
        catch {
            return this.#retry();
        }
        if (this.#state === "closed") {
            return;
        }
        let ws;
        try {
            if (TOKEN_CHARS.test(token)) {
                ws = new this.#options.WebSocket(this.#options.url, [PROTOCOL, TOKEN_PROTOCOL_PREFIX + token]);
            }
            else {
                // Not a JWT (no subprotocol may carry it): the query, which the gateway also reads.
                const sep = this.#options.url.includes("?") ? "&" : "?";
                ws = new this.#options.WebSocket(`${this.#options.url}${sep}token=${encodeURIComponent(token)}`);
            }
        }
        catch {
            return this.#retry();
        }
        this.#ws = ws;
        ws.onopen = () => {
            this.#lastReceived = Date.now();
            this.#resuming.clear();
            for (const [channel, state] of this.#channels) {
                this.#sendSubscribe(channel, state);
            }
            this.#startPing();
        };
        ws.onmessage = (ev) => {
            this.#lastReceived = Date.now();
            const text = typeof ev.data === "string" ? ev.data : String(ev.data);
            let msg;
            try {
                msg = JSON.parse(text);
            }
            catch {
                return; // the server sends JSON only; anything else is not ours to act on
            }
            this.#handle(msg);
        };
        ws.onerror = () => {
            // A close follows; the reconnect happens there.
        };
        ws.onclose = (ev) => {
            if (this.#ws !== ws) {
                return;
            }
            this.#ws = null;
            this.#clearTimers();
            this.#emit("close", { code: ev.code, reason: ev.reason });
            if (this.#state === "closed") {
                return;
            }
            if (this.#options.fatalCloseCodes.includes(ev.code)) {
                this.#setState("closed");
                return;
            }
            this.#retry();
        };
    }
    #retry() {
        if (this.#state === "closed") {
            return;
        }
        this.#setState("reconnecting");
        const delay = backoffDelay(this.#attempt, this.#options.backoff);
        this.#attempt += 1;
        this.#reconnectTimer = setTimeout(() => {
            this.#reconnectTimer = null;
            void this.#open();
        }, delay);
    }
    /** Drops a connection that has gone quiet and reconnects at once. */
    #abandon() {
        const ws = this.#ws;
        if (!ws) {
            return;
        }
        this.#ws = null;
        this.#clearTimers();
        ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
        try {
            ws.close(CloseCode.Normal, "idle");
        }
        catch {
            // already closing
        }
        this.#emit("close", { code: 1006, reason: "no message within the idle timeout" });
        this.#retry();
    }
    #startPing() {
        this.#pingTimer = setInterval(() => {
            if (Date.now() - this.#lastReceived > this.#options.idleTimeoutMs) {
                this.#abandon();
                return;
            }
            this.#send({ type: "PING" });
        }, this.#options.pingIntervalMs);
    }
    #clearTimers() {
        if (this.#pingTimer) {
            clearInterval(this.#pingTimer);
            this.#pingTimer = null;
        }
        if (this.#reconnectTimer) {
            clearTimeout(this.#reconnectTimer);
            this.#reconnectTimer = null;
        }
    }
    // --- messages ---
    #handle(msg) {
        switch (msg.type) {
            case "SIGNAL_UPDATE": {
                const state = this.#channels.get(msg.channel);
                if (!state) {
                    break;
                }
                const p = state.position;
                if (msg.snapshot) {
                    // Older than the head SUBSCRIBED gave: delivered, the position stays.
                    this.#deliver(state, msg);
                    break;
                }
                if (p && msg.seq <= p.seq) {
                    break; // already delivered (a replay overlapping what was seen)
                }
                state.position = { epoch: p?.epoch ?? "", seq: msg.seq };
                this.#deliver(state, msg);
                break;
            }
            case "PRICE_UPDATE":
            case "USER_UPDATE":
            case "NOTIFICATION": {
                const state = this.#channels.get(msg.channel);
                if (state) {
                    this.#deliver(state, msg);
                }
                break;
            }
            case "SUBSCRIBED": {
                const state = this.#channels.get(msg.channel);
                let resend = false;
                if (state) {
                    state.confirmed = true;
                    state.snapshot = undefined; // answered: a reconnect from now on resumes instead
                    state.confirmedFilter = msg.filter ? { ...msg.filter } : undefined;
                    state.pending = Math.max(0, state.pending - 1);
                    if (state.deferred) {
                        // Changed while the SUBSCRIBE was under way: the change goes out now, whole,
                        // where the subscription stands.
                        state.deferred = false;
                        resend = true;
                    }
                    else if (state.pending === 0) {
                        state.filter = state.confirmedFilter; // the server's normalized filter, whole
                    }
                }
                this.#subscribed(msg.channel, msg.epoch, msg.seq, msg.recovered);
                if (resend && state && this.#channels.get(msg.channel) === state) {
                    const change = { type: "SUBSCRIBE", channel: msg.channel, filter: state.filter ?? {} };
                    if (state.maxFrequency !== undefined) {
                        change.max_frequency = state.maxFrequency;
                    }
                    state.pending += 1;
                    this.#send(change);
                }
                break;
            }
            case "UNSUBSCRIBED":
                if (msg.reason === "entitlement") {
                    this.#channels.delete(msg.channel);
                }
                this.#emit("unsubscribed", msg);
                break;
            case "SYSTEM_MESSAGE":
                this.#system(msg.data);
                break;
            case "ERROR": {
                const state = msg.channel ? this.#channels.get(msg.channel) : undefined;
                if (state) {
                    state.pending = Math.max(0, state.pending - 1);
                }
                if (state?.confirmed) {
                    // A change refused: the subscription stands as it was, and so does its filter
                    // (unless more changes are still to be answered).
                    if (state.pending === 0 && !state.deferred) {
                        state.filter = state.confirmedFilter;
                    }
                }
                else if (msg.channel && (msg.code === "forbidden" || msg.code === "unknown_channel")) {
                    // Resubscribing on every reconnect would only be refused again.
                    this.#channels.delete(msg.channel);
                }
                this.#emit("error", msg);
                break;
            }
            case "PONG":
                break;
        }
        this.#emit("message", msg);
    }
    #subscribed(channel, epoch, head, recovered) {
        const state = this.#channels.get(channel);
        const asked = this.#resuming.get(channel);
        this.#resuming.delete(channel);
        if (!state || epoch === undefined || head === undefined) {
            return; // a channel without seq (prices, user)
        }
        if (asked) {
            // A resume answered without `recovered` (a server that took it for a new
            // subscription) recovered nothing: it says so.
            this.#emit("resume", { channel, recovered: recovered === true, since: asked, epoch, head });
        }
        if (recovered === true) {
            return; // the replay continues from the position asked
        }
        // A fresh subscription, or a resume the server could not honour: live from head.
        state.position = { epoch, seq: head };
    }
    #system(data) {
        switch (data.event) {
            case "welcome":
                this.#attempt = 0;
                this.#opened += 1;
                this.#setState("open");
                this.#emit("welcome", data);
                break;
            case "token_expiring":
                void this.#refresh();
                break;
            default:
                break;
        }
        this.#emit("system", data);
    }
    async #refresh() {
        if (typeof this.#options.token === "string") {
            return; // nothing fresher to offer; the server closes 4001 at expiry
        }
        try {
            const token = await this.#token();
            this.#send({ type: "REFRESH", token });
        }
        catch {
            // The connection lives until expiry; the reconnect asks for a token again.
        }
    }
    #deliver(state, msg) {
        for (const listener of state.listeners) {
            try {
                listener(msg);
            }
            catch (e) {
                // One listener's bug must not starve the others.
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
    #sendSubscribe(channel, state) {
        state.confirmed = false; // a new connection: the server holds nothing yet
        state.pending = 1; // this SUBSCRIBE carries everything: nothing is left deferred
        state.deferred = false;
        const msg = { type: "SUBSCRIBE", channel };
        if (state.position) {
            msg.since = state.position.seq;
            msg.epoch = state.position.epoch;
            this.#resuming.set(channel, { ...state.position });
        }
        else if (state.snapshot !== undefined) {
            msg.snapshot = state.snapshot; // cleared once SUBSCRIBED arrives: a lost one asks again
        }
        if (state.filter) {
            msg.filter = state.filter;
        }
        if (state.maxFrequency !== undefined) {
            msg.max_frequency = state.maxFrequency;
        }
        this.#send(msg);
    }
    #send(msg) {
        if (this.#ws && this.#ws.readyState === OPEN) {
            this.#ws.send(JSON.stringify(msg));
        }
    }
    #isOpen() {
        return this.#ws !== null && this.#ws.readyState === OPEN;
    }
    async #token() {
        const t = this.#options.token;
        return typeof t === "string" ? t : await t();
    }
    #setState(state) {
        if (this.#state !== state) {
            this.#state = state;
            this.#emit("state", state);
        }
    }
    #emit(event, ...args) {
        for (const h of this.#handlers[event]) {
            try {
                h(...args);
            }
            catch (e) {
                setTimeout(() => {
                    throw e;
                });
            }
        }
    }
}
