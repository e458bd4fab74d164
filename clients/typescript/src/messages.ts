// The messages of the signalcast client protocol, as TypeScript types.
//
// docs/asyncapi.yaml is the contract; test/asyncapi.test.ts reads both and fails when a
// type here and a schema there disagree on a field or on whether it is required, and
// validates every message a real server sent during the tests against the schemas.

export type Tier = "free" | "basic" | "premium" | "enterprise";
export type Category = "equity" | "crypto" | "forex" | "commodity";
export type SignalChannel = "signals_free" | "signals_basic" | "signals_premium" | "signals_enterprise";
export type UserChannel = `user_${string}`;
export type ChannelName = SignalChannel | "prices_general" | UserChannel;

/** Prices are decimal strings with four places ("2456.7500"), never binary floats. */
export type Price = string;
/** Microseconds since the Unix epoch. */
export type Micros = number;

// --- client to server ---

export interface Subscribe {
  type: "SUBSCRIBE";
  channel: ChannelName;
  /** The last seq processed; goes with `epoch`. */
  since?: number;
  epoch?: string;
  /** Signal channels: only the messages that pass it (docs/protocol.md, "Filters"). */
  filter?: Filter;
  /** Signal channels: the last N matching messages first, marked `snapshot`. Not with `since`. */
  snapshot?: number;
  /** `prices_general`: updates per second per symbol (taken down to 1, 2, 5, 10, 25 or 50
   * and to the tier's rate; SUBSCRIBED says which). */
  max_frequency?: number;
}

/** A signal channel's filter; every part optional. `add_symbols`/`remove_symbols` alone
 * change the current watchlist (a large one is built in steps). */
export interface Filter {
  /** `"TCS"` on any exchange, or `"NSE:TCS"`. */
  symbols?: string[];
  add_symbols?: string[];
  remove_symbols?: string[];
  categories?: Category[];
  signal_types?: ("buy" | "sell" | "hold" | "exit")[];
  sources?: string[];
  /** Percent. */
  min_confidence?: number;
}

export interface Unsubscribe {
  type: "UNSUBSCRIBE";
  channel: ChannelName;
}

export interface Ping {
  type: "PING";
}

export interface Refresh {
  type: "REFRESH";
  token: string;
}

export type ClientMessage = Subscribe | Unsubscribe | Ping | Refresh;

// --- server to client ---

export interface Subscribed {
  type: "SUBSCRIBED";
  channel: ChannelName;
  /** Signal channels only: the channel's identity and head (last published seq). */
  epoch?: string;
  seq?: number;
  /** Present when the SUBSCRIBE carried `since`. */
  recovered?: boolean;
  /** The subscription's filter, normalized (a watchlist on `prices_general`). */
  filter?: Filter;
  /** `prices_general`: the rate in force, updates per second per symbol. */
  max_frequency?: number;
}

export interface Unsubscribed {
  type: "UNSUBSCRIBED";
  channel: ChannelName;
  reason: "client" | "entitlement";
}

export interface MarketSnapshot {
  bid: Price;
  ask: Price;
  last: Price;
  volume: number;
  tick_ts: Micros;
  tick_age_ms: number;
}

export interface EnrichedSignal {
  id: string;
  source_id: string;
  source_type: "ai_model" | "analyst" | "algorithm" | "sentiment";
  symbol: string;
  exchange: string;
  category: Category;
  signal_type: "buy" | "sell" | "hold" | "exit";
  entry_price: Price;
  target_price: Price;
  stop_loss: Price;
  quantity_recommended: number | null;
  confidence: number;
  generated_at: Micros;
  expires_at: Micros;
  /** The latest tick of the symbol when the signal was routed, or null. */
  market: MarketSnapshot | null;
  ingest_ts: Micros;
  routed_ts: Micros;
  sent_ts: Micros | null;
  analysis: unknown;
  /** `open` when routed; a later SIGNAL_UPDATE of the same id (new seq) closes it. */
  status: SignalStatus;
  /** How it closed (docs/outcomes.md); present once `status` is not `open`. */
  outcome?: Outcome;
}

/** Where a signal stands. */
export type SignalStatus = "open" | "target_hit" | "stop_hit" | "expired" | "closed";

/** How a signal closed: prices and return (percent, signed) as 4-decimal strings, null
 * where unknown (informational signals, no price ever seen). */
export interface Outcome {
  entry_price: Price | null;
  exit_price: Price | null;
  return_pct: string | null;
  closed_at: Micros;
}

export interface SignalUpdate {
  type: "SIGNAL_UPDATE";
  channel: SignalChannel;
  seq: number;
  /** Sent for a SUBSCRIBE's snapshot, before live messages. */
  snapshot?: true;
  data: EnrichedSignal;
}

export interface Tick {
  symbol: string;
  exchange: string;
  bid: Price;
  ask: Price;
  last: Price;
  volume: number;
  ts: Micros;
}

/** A price as `prices_general` sends it: the tick, and how many updates of the symbol it
 * stands for at the subscriber's rate (1: none merged). */
export interface PriceData extends Tick {
  conflated: number;
}

export interface PriceUpdate {
  type: "PRICE_UPDATE";
  channel: "prices_general";
  data: PriceData;
}

export interface Entitlements {
  tier: Tier;
  categories: Category[];
  real_time: boolean;
  /** null: unlimited. */
  max_signals_per_day: number | null;
}

export interface UserUpdate {
  type: "USER_UPDATE";
  channel: UserChannel;
  data: Entitlements;
}

export interface Notification {
  type: "NOTIFICATION";
  channel: UserChannel;
  data: { event: "quota_exhausted"; message: string };
}

export interface Welcome {
  event: "welcome";
  user: string;
  tier: Tier;
  real_time: boolean;
  /** Unix seconds. */
  token_expires_at: number;
  heartbeat_interval_s: number;
  server: string;
}

export interface TokenEvent {
  event: "token_expiring" | "token_refreshed";
  token_expires_at: number;
}

export interface NoticeEvent {
  event: "drain" | "suspended";
  message: string;
}

export interface EntitlementsChanged {
  event: "entitlements_changed";
  tier: Tier;
}

export type SystemEvent = Welcome | TokenEvent | NoticeEvent | EntitlementsChanged;

export interface SystemMessage {
  type: "SYSTEM_MESSAGE";
  data: SystemEvent;
}

export interface Pong {
  type: "PONG";
}

export type ErrorCode =
  | "bad_request"
  | "unknown_type"
  | "unknown_channel"
  | "forbidden"
  | "rate_limited"
  | "too_many_subscriptions"
  | "quota_exhausted"
  | "internal";

export interface ErrorMessage {
  type: "ERROR";
  code: ErrorCode;
  message: string;
  channel?: string;
}

export type ServerMessage =
  | Subscribed
  | Unsubscribed
  | SignalUpdate
  | PriceUpdate
  | UserUpdate
  | Notification
  | SystemMessage
  | Pong
  | ErrorMessage;

/** Close codes the server uses (docs/protocol.md). */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  Unsupported: 1003,
  InvalidUtf8: 1007,
  Policy: 1008,
  TooBig: 1009,
  Internal: 1011,
  TryAgainLater: 1013,
  TokenExpired: 4001,
  Suspended: 4003,
  HeartbeatTimeout: 4004,
  SlowConsumer: 4008,
} as const;
