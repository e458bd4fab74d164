// @signalcast/client: a typed client for signalcast's WebSocket protocol.
export { SignalcastClient } from "./client.js";
export { backoffDelay, defaultBackoff } from "./backoff.js";
export * from "./messages.js";
