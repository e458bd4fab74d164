// Reconnect delays: exponential, capped, with jitter so that a thousand clients cut off
// by the same gateway restart do not all come back in the same millisecond.
export const defaultBackoff = { initialMs: 250, maxMs: 30_000, multiplier: 2, jitter: 0.5 };
/**
 * The delay before reconnect attempt `attempt` (0 for the first after a connection was
 * lost): `min(maxMs, initialMs * multiplier^attempt)`, less up to `jitter` of it.
 * `random` is `Math.random` unless a test gives its own.
 */
export function backoffDelay(attempt, options, random = Math.random) {
    const exp = options.initialMs * Math.pow(options.multiplier, Math.max(0, attempt));
    const capped = Math.min(options.maxMs, exp);
    const jitter = Math.min(1, Math.max(0, options.jitter));
    return Math.round(capped * (1 - jitter * random()));
}
