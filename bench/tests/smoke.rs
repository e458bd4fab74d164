//! A tiny scenario against signalcast and the raw reference (and the peers where they
//! are installed; CI installs them): every message delivered, percentiles that make
//! sense. No timing thresholds: speed is the bench's to report, not a test's to assert.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bench::run::{Row, Session};
use bench::targets::{Target, peers_dir};

async fn window(target: Target, subscribers: usize, rate: f64) -> Row {
    bench::targets::set_exe(env!("CARGO_BIN_EXE_signalcast-bench"));
    let mut s = Session::open(target, subscribers, 2).await.unwrap();
    assert_eq!(s.workers.ready.connected, subscribers, "{target:?}: {:?}", s.workers.ready.first_error);
    let row = s.window("smoke", rate, 0, Duration::from_secs(1), Duration::ZERO).await.unwrap();
    s.close().await;
    row
}

/// `cpu`: also require the server's CPU to have been counted. CPU time is read in
/// 10 ms ticks (USER_HZ), so a peer that serves the peers' small window (1,000
/// deliveries) in less than one tick reads as zero; only the larger windows check it.
fn check(row: &Row, subscribers: usize, published: u64, cpu: bool) {
    let name = row.target.name();
    assert_eq!(row.published, published, "{name}");
    assert_eq!(row.expected, published * subscribers as u64, "{name}");
    assert_eq!(row.received, row.expected, "{name}: every message to every subscriber");
    assert_eq!(row.loss, 0, "{name}");
    let l = row.latency_us;
    assert!(
        l.p50 > 0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{name}: {l:?}"
    );
    assert!(row.size > 400, "{name}: a real SIGNAL_UPDATE-sized message ({} B)", row.size);
    if cpu {
        assert!(row.server_us_per_delivery > 0.0, "{name}: the server's CPU was accounted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalcast_and_the_reference_deliver_everything() {
    for target in [Target::Signalcast, Target::Reference] {
        let row = window(target, 50, 100.0).await;
        check(&row, 50, 100, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_peers_deliver_everything() {
    let status =
        std::process::Command::new("bash").arg(peers_dir().join("peers.sh")).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    for (target, name) in [(Target::NodeWs, "node-ws"), (Target::Nats, "nats"), (Target::Nchan, "nchan")] {
        if !status.contains(&format!("{name}: installed")) {
            // CI installs the peers (scripts/test.sh); elsewhere they are optional.
            assert!(std::env::var_os("CI").is_none(), "{name} is not installed in CI:\n{status}");
            eprintln!("skipping {name}: not installed (bench/peers/peers.sh install)");
            continue;
        }
        let row = window(target, 20, 50.0).await;
        check(&row, 20, 50, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_with_churn_loses_nothing_for_steady_subscribers() {
    bench::targets::set_exe(env!("CARGO_BIN_EXE_signalcast-bench"));
    let r = bench::run::soak(
        Target::Signalcast,
        200,
        50,
        20.0,
        Duration::from_secs(8),
        Duration::from_secs(1),
        1,
    )
    .await
    .unwrap();
    assert_eq!(r.window.loss, 0, "steady subscribers miss nothing while others churn: {:?}", r.window);
    assert!(r.window.received > 0);
    assert!(r.reconnects >= 50, "connections churned: {} reconnects", r.reconnects);
    assert!(r.samples.len() >= 5, "sampled throughout: {:?}", r.samples);
    assert!(r.samples.iter().all(|s| s.rss_kib > 0 && s.fds > 200), "{:?}", r.samples);
}
