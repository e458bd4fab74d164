//! The real `signalcast` binary on its embedded default: no config, no services.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Client;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_a_signal_within_10_s_and_drains_on_sigterm() {
    let started = Instant::now();
    let (mut child, url) = common::serve_default(&[]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_subprotocol_never_reaches_the_log_or_the_metrics() {
    let log = std::env::temp_dir().join(format!("signalcast-trace-{}.log", std::process::id()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        .env("SIGNALCAST_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_FEED_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_STORE__DATA_DIR", common::data_dir())
        .env("SIGNALCAST_DEMO__ENABLED", "false")
        // Everything the process logs, at every level.
        .env("SIGNALCAST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
    let (base, token) = url.split_once("?token=").unwrap();
    let offer = |t: &str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(base).unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            format!("signalcast.v1, signalcast.token.{t}").parse().unwrap(),
        );
        req
    };
    let (ws, _) = tokio_tungstenite::connect_async(offer(token)).await.unwrap();
    let mut c = Client::from_ws(ws).await;
    assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
    // A forged one (another signature) is refused, and must not be logged either.
    let forged = format!("{}.bm90LXRoZS1zaWduYXR1cmU", token.rsplit_once('.').unwrap().0);
    assert!(tokio_tungstenite::connect_async(offer(&forged)).await.is_err());

    let host = base.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut metrics = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut metrics).await.unwrap();
    assert!(metrics.contains("signalcast_auth_failures_total 1"), "{metrics}");

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("signalcast serving") && logged.contains("TRACE"),
        "the log was written:\n{logged}"
    );
    let signature = token.rsplit('.').next().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    for (what, text) in [("log", &logged), ("metrics", &metrics)] {
        for secret in [signature, payload, "bm90LXRoZS1zaWduYXR1cmU", "signalcast.token."] {
            assert!(!text.contains(secret), "the {what} holds {secret}");
        }
    }
}

#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let secrets = [
        ("SIGNALCAST_PRODUCER_KEY", "hunter2-producer-key"),
        ("SIGNALCAST_AUTH__ACCOUNTS_GATEWAY_TOKEN", "hunter2-gateway-token"),
    ];
    for args in [&["--help"][..], &["serve", "--help"], &["produce", "--help"], &["token", "--help"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
            .args(args)
            .envs(secrets)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(!text.contains("hunter2"), "{args:?} printed a secret:\n{text}");
    }
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

/// The binary with a clean environment plus `vars` (no SIGNALCAST_* from the caller).
fn signalcast(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNALCAST_")) {
        c.env_remove(k);
    }
    c.args(args).envs(vars.iter().copied()).stdin(std::process::Stdio::null()).output().unwrap()
}

#[test]
fn variables_of_other_commands_stop_no_command() {
    // What docs/accounts.md exports for the sidecar, and what `produce --key` reads.
    let others = [
        ("SIGNALCAST_PRODUCER_KEY", "dev-alpha-0c1d2e3f4a5b6c7d"),
        ("SIGNALCAST_ACCOUNTS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        ("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", "change-me-admin-0123456789"),
        ("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", "change-me-gateway-0123456789"),
        ("SIGNALCAST_ACCOUNTS_LISTEN", "127.0.0.1:8081"),
        ("SIGNALCAST_ACCOUNTS_ADMIN_URL", "http://127.0.0.1:8082"),
        ("SIGNALCAST_ACCOUNTS_ADMIN_LISTEN", "127.0.0.1:8082"),
        ("SIGNALCAST_ACCOUNTS_LOGIN_PERMITS", "2"),
        ("SIGNALCAST_ACCOUNTS_KEK", "change-me-key-encryption-key-0123456789"),
        ("SIGNALCAST_URL", "ws://127.0.0.1:8080/ws"),
        ("SIGNALCAST_TOKEN", "x"),
        ("SIGNALCAST_BIN", "/bin/true"),
    ];
    let out = signalcast(&["version"], &others);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = signalcast(&["token", "--user", "u-free-1"], &others);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("eyJ"));
    // `version` does not even read the settings: a broken one does not stop it.
    let out = signalcast(&["version"], &[("SIGNALCAST_SHARDS", "many")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_misspelt_setting_stops_the_server_with_one_line_naming_the_closest_key() {
    for (var, expect) in [
        (
            "SIGNALCAST_ENGINE__RING_CAPASITY",
            "unknown setting SIGNALCAST_ENGINE__RING_CAPASITY (did you mean SIGNALCAST_ENGINE__RING_CAPACITY?)",
        ),
        ("SIGNALCAST_LISTN", "unknown setting SIGNALCAST_LISTN (did you mean SIGNALCAST_LISTEN?)"),
        (
            "SIGNALCAST_PRODUCER_KYE",
            "unknown setting SIGNALCAST_PRODUCER_KYE (did you mean SIGNALCAST_PRODUCERS_FILE?)",
        ),
    ] {
        let out = signalcast(&["serve"], &[(var, "1"), ("SIGNALCAST_LISTEN", "127.0.0.1:0")]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines, [format!("Error: {expect}")], "{err}");
    }
    let toml = common::temp_file("typo.toml", "[engine]\nring_capasity = 5\n");
    let out = signalcast(&["serve", "--config", toml.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown setting `engine.ring_capasity` in")
            && err.contains("(did you mean `engine.ring_capacity`?)"),
        "{err}"
    );
}

#[test]
fn a_duration_past_30_days_stops_the_server_at_start_not_a_timer_later() {
    for (var, name) in [
        ("SIGNALCAST_PRICE_INTERVAL_MS", "price_interval_ms"),
        ("SIGNALCAST_HANDSHAKE_TIMEOUT_MS", "handshake_timeout_ms"),
        ("SIGNALCAST_FEED__ACK_INTERVAL_MS", "18446744073709551615 ms"),
    ] {
        let out =
            signalcast(&["serve"], &[(var, "18446744073709551615"), ("SIGNALCAST_LISTEN", "127.0.0.1:0")]);
        assert!(!out.status.success(), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name) && err.contains("30 days"), "{var}: {err}");
    }
}

#[test]
fn public_dev_credentials_never_listen_beyond_loopback() {
    // The container image's environment (deploy/Dockerfile): refused before binding,
    // every credential named with what to set instead.
    let image = [
        ("SIGNALCAST_LISTEN", "0.0.0.0:8080"),
        ("SIGNALCAST_FEED_LISTEN", "0.0.0.0:7000"),
        ("SIGNALCAST_DEMO__ENABLED", "false"),
    ];
    let out = signalcast(&["serve"], &image);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needed in [
        "refusing to listen on 0.0.0.0:8080",
        "the public dev secret and /dev/tokens",
        "the fixture accounts",
        "the fixture producer keys",
        "SIGNALCAST_AUTH__ACCOUNTS_URL",
        "SIGNALCAST_UNSAFE_PUBLIC_DEV_CREDENTIALS",
    ] {
        assert!(err.contains(needed), "{needed}: {err}");
    }
    assert!(!err.contains("the demo producer"), "the image has the demo off: {err}");
    // The feed alone beyond loopback is refused too.
    let out = signalcast(
        &["serve"],
        &[("SIGNALCAST_LISTEN", "127.0.0.1:0"), ("SIGNALCAST_FEED_LISTEN", "0.0.0.0:0")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refusing to listen on 0.0.0.0:0"), "{err}");
    // Weak secrets are refused wherever the server listens.
    let out = signalcast(
        &["serve"],
        &[("SIGNALCAST_LISTEN", "127.0.0.1:0"), ("SIGNALCAST_AUTH__DEV_SECRET", "short")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at least 32"), "{err}");
    let out = signalcast(
        &["serve", "--accounts-url", "http://127.0.0.1:9"],
        &[("SIGNALCAST_LISTEN", "127.0.0.1:0"), ("SIGNALCAST_FEED_LISTEN", "127.0.0.1:0")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("accounts_gateway_token"), "{err}");
}

#[test]
fn the_exposure_rule_in_the_configuration() {
    let mut c = gateway::Config::default();
    assert_eq!(c.public_dev_credentials().len(), 4, "the embedded default uses all four");
    c.auth.accounts_url = Some("https://accounts.internal:8443".into());
    c.auth.accounts_gateway_token = "gateway-token-0123456789".into();
    assert!(c.public_dev_credentials().is_empty(), "the sidecar replaces them all");
    assert!(c.check_secrets().is_ok());
    let mut c = gateway::Config::default();
    c.auth.dev_secret = "a-private-secret-of-at-least-32-bytes!".into();
    c.accounts_file = Some("accounts.toml".into());
    c.producers_file = Some("producers.toml".into());
    c.demo.enabled = false;
    assert!(c.public_dev_credentials().is_empty(), "private files and secret");
    assert!(!c.public_dev_secret());
}

#[test]
fn every_environment_variable_is_in_the_documented_table() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let table: String = doc
        .split("## Environment variables")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/configuration.md has an environment variables table")
        .to_owned();
    // What the binaries' command lines read, and what the settings loader leaves alone.
    let mut vars: Vec<String> = gateway::config::NOT_SETTINGS.iter().map(|s| (*s).to_owned()).collect();
    for src in ["gateway-ws/src/main.rs", "accounts/src/main.rs"] {
        let text = std::fs::read_to_string(root.join(src)).unwrap();
        for part in text.split("env = \"").skip(1) {
            let var = part.split('"').next().unwrap();
            // Settings given as flags too (SIGNALCAST_ROLE, …) are covered by the
            // SIGNALCAST_<KEY> row; everything else must have its own.
            if !var.contains("__") && !["SIGNALCAST_ROLE"].contains(&var) {
                vars.push(var.to_owned());
            }
        }
    }
    for var in vars {
        assert!(table.contains(&format!("`{var}`")), "{var} is not in docs/configuration.md's table");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_take_the_server_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_signalcast"))
        .env("SIGNALCAST_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIGNALCAST_FEED_LISTEN", "127.0.0.1:0")
        .env("SIGNALCAST_STORE__DATA_DIR", common::data_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The reader goes before the server prints its ready lines (`signalcast | head -1`).
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let live = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        });
        if live.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited: {:?}", child.try_wait());
        assert!(Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the server died after its ready lines");
}
