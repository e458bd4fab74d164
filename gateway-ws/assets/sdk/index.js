// @signalcast/client: a typed client for signalcast's WebSocket protocol.
export { PROTOCOL, SignalcastClient, TOKEN_PROTOCOL_PREFIX } from "./client.js";
export { SignalcastHttpError, httpBase } from "./api.js";
export { backoffDelay, defaultBackoff } from "./backoff.js";
export * from "./messages.js";
