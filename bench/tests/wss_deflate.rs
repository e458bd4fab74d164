//! `--tls --deflate --mix fixtures`: subscribers over WSS that negotiated
//! permessage-deflate get every fixture signal, compressed, and the rows count the
//! bytes that crossed the wire. (Its own process: the options are per run.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bench::run::{Options, Session};
use bench::targets::{Mix, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_subscribers_with_deflate_receive_every_fixture_signal_compressed() {
    bench::targets::set_exe(env!("CARGO_BIN_EXE_signalcast-bench"));
    bench::run::set_options(Options { deflate: true, tls: true, mix: Mix::Fixtures, ..Default::default() })
        .unwrap();
    let mut s = Session::open(Target::Signalcast, 40, 2).await.unwrap();
    assert_eq!(s.workers.ready.connected, 40, "{:?}", s.workers.ready.first_error);
    assert!(s.server.endpoint.tls_ca.is_some(), "the server serves WSS");
    let row = s.window("wss-deflate", 100.0, 0, Duration::from_secs(1), Duration::ZERO).await.unwrap();
    s.close().await;
    assert_eq!((row.published, row.loss), (100, 0));
    assert_eq!(row.received, row.expected, "every message to every subscriber");
    // The mix's JSON is ~720 bytes a message; compressed it is ~0.6 of that.
    assert!(row.size > 600, "{}", row.size);
    assert!(
        row.wire_bytes_per_delivery > 0.0 && row.wire_bytes_per_delivery < row.size as f64 * 0.7,
        "compressed on the wire: {} bytes per delivery of {}-byte messages",
        row.wire_bytes_per_delivery,
        row.size
    );
}

/// The peers' TLS configurations (bench/peers/peers.sh with PEERS_TLS_DIR) serve WSS
/// that the bench's client trusts, and deliver everything over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_peers_serve_wss() {
    bench::targets::set_exe(env!("CARGO_BIN_EXE_signalcast-bench"));
    bench::run::set_options(Options { deflate: true, tls: true, mix: Mix::Fixtures, ..Default::default() })
        .unwrap();
    let status = std::process::Command::new("bash")
        .arg(bench::targets::peers_dir().join("peers.sh"))
        .arg("status")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    for (target, name) in [(Target::NodeWs, "node-ws"), (Target::Nats, "nats"), (Target::Nchan, "nchan")] {
        if !status.contains(&format!("{name}: installed")) {
            assert!(std::env::var_os("CI").is_none(), "{name} is not installed in CI:\n{status}");
            eprintln!("skipping {name}: not installed (bench/peers/peers.sh install)");
            continue;
        }
        let mut s = Session::open(target, 20, 1).await.unwrap();
        assert_eq!(s.workers.ready.connected, 20, "{name}: {:?}", s.workers.ready.first_error);
        assert!(s.server.endpoint.tls_ca.is_some(), "{name} serves WSS");
        let row = s.window("wss", 50.0, 0, Duration::from_secs(1), Duration::ZERO).await.unwrap();
        s.close().await;
        assert_eq!((row.published, row.loss), (50, 0), "{name}");
        assert_eq!(row.received, row.expected, "{name}: every message to every subscriber");
    }
}

#[test]
fn deflate_and_tls_need_the_light_client() {
    let options =
        |client| Options { client, deflate: true, tls: false, mix: Mix::Padded, ..Default::default() };
    let e = bench::run::set_options(options(bench::worker::ClientMode::Tungstenite)).unwrap_err();
    assert!(e.to_string().contains("--deflate"), "{e}");
}
