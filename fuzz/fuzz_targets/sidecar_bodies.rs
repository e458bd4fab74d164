//! The accounts sidecar's request bodies: any bytes as the JSON body of every route,
//! decoded and checked as the route's handler does before it touches the database
//! (`accounts::api::decode_body`). No panic; every input is accepted or refused with a
//! client error status.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (method, path) in accounts::api::ROUTES {
        if let Err((status, _)) = accounts::api::decode_body(method, path, data) {
            assert!((400..500).contains(&status), "{method} {path}: {status}");
        }
    }
});
