//! The real `signalcast` binary on its embedded default: no config, no services.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Client;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_a_signal_within_10_s_and_drains_on_sigterm() {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        // Ephemeral ports, so that tests never collide with anything on 8080/7000.
        .env("SIGNALCAST_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_FEED_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line =
            tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap();
        if line.starts_with("premium") {
            break line.split_whitespace().last().unwrap().to_owned();
        }
    };
    assert!(url.starts_with("ws://127.0.0.1:") && url.contains("/ws?token="), "{url}");
    let mut c = Client::connect(&url).await;
    assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
    let m = c.next_of(&["SIGNAL_UPDATE"]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "first signal after {:?}", started.elapsed());
    assert_eq!(m["channel"], "signals_premium");
    assert!(m["data"]["confidence"].as_f64().unwrap() > 75.0);

    // SIGTERM: a drain notice, close 1001, and a clean exit.
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let drain = c.next_of(&["SYSTEM_MESSAGE"]).await;
    assert_eq!(drain["data"]["event"], "drain", "{drain}");
    assert_eq!(c.close_code().await, Some(1001));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn help_and_version_read_well() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast")).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "token", "produce", "version"] {
        assert!(help.contains(cmd), "{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast")).arg("version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("signalcast {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        .args(["token", "--user", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_replays_signals_into_a_feed_and_waits_for_the_acks() {
    let server = common::start(common::config()).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        .args([
            "produce",
            "--addr",
            &server.feed_addr.expect("a feed").to_string(),
            "--producer",
            "model-alpha",
            "--count",
            "50",
            "--rate",
            "0",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done: 50 signals"), "{stdout}");
    assert_eq!(
        server.engine.stats.signals_in(),
        50,
        "every signal reached the pipeline before produce exited"
    );
    server.shutdown().await;
}
