//! The heavier client mode (`--client tungstenite`): tokio-tungstenite subscribers that
//! parse every message as JSON still receive everything from signalcast and the raw
//! reference, with sensible percentiles. (Its own process: the mode is per run.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bench::run::Session;
use bench::targets::Target;
use bench::worker::ClientMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_subscribers_receive_everything() {
    bench::targets::set_exe(env!("CARGO_BIN_EXE_signalcast-bench"));
    bench::run::set_options(bench::run::Options { client: ClientMode::Tungstenite, ..Default::default() })
        .unwrap();
    assert_eq!(bench::run::options().client, ClientMode::Tungstenite);
    for target in [Target::Signalcast, Target::Reference] {
        let mut s = Session::open(target, 40, 2).await.unwrap();
        assert_eq!(s.workers.ready.connected, 40, "{target:?}: {:?}", s.workers.ready.first_error);
        let row = s.window("tungstenite", 100.0, 0, Duration::from_secs(1), Duration::ZERO).await.unwrap();
        s.close().await;
        assert_eq!(row.received, row.expected, "{target:?}: every message to every subscriber");
        assert_eq!((row.published, row.loss), (100, 0), "{target:?}");
        let l = row.latency_us;
        assert!(l.p50 > 0 && l.p50 <= l.p99 && l.p99 <= l.max, "{target:?}: {l:?}");
    }
}
