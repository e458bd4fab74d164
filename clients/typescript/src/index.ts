// @signalcast/client: a typed client for signalcast's WebSocket protocol.
export { PROTOCOL, SignalcastClient, TOKEN_PROTOCOL_PREFIX } from "./client.js";
export type {
  ChannelListener,
  ChannelMessage,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  Position,
  ResumeEvent,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { SignalcastHttpError, httpBase } from "./api.js";
export type {
  FetchLike,
  Figures,
  Scoreboard,
  SymbolStats,
  Windows,
  HistoryItem,
  HistoryPage,
  HistoryParams,
  LiveParams,
  PageParams,
  SignalType,
  TimeParam,
} from "./api.js";
export { backoffDelay, defaultBackoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export * from "./messages.js";
