// The messages of the signalcast client protocol, as TypeScript types.
//
// docs/asyncapi.yaml is the contract; test/asyncapi.test.ts reads both and fails when a
// type here and a schema there disagree on a field or on whether it is required, and
// validates every message a real server sent during the tests against the schemas.
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
};
