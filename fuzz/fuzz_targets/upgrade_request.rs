//! The HTTP side of `/ws`: any bytes as a request on the gateway's port, served by the
//! real `gateway::http::serve` (hyper, token extraction from the query, the
//! Authorization header and the `Sec-WebSocket-Protocol` subprotocols, JWT
//! verification, the upgrade decision) over an in-memory
//! stream, against a real gateway started once. No panic; every request gets an answer
//! or the connection is closed.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Arc<gateway::server::App>,
    /// Kept (not forgotten) so that LeakSanitizer sees it reachable.
    _running: gateway::Running,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let running = rt.block_on(async {
            let mut config = gateway::Config::default();
            config.demo.enabled = false;
            config.shards = 1;
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let feed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            gateway::start_on(config, http, feed).await.expect("gateway")
        });
        Fixture { rt, app: Arc::clone(&running.app), _running: running }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(gateway::http::serve(server, None, Arc::clone(&f.app)));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), serving).await;
    });
});
