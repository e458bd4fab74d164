//! [3/10] 2: the sidecar over HTTPS, and gateways that verify it against a CA file and
//! refuse plain HTTP beyond loopback, so that a forged JWKS cannot mint a tier.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn gateway_config(sidecar: &Sidecar, ca: Option<&TestCert>) -> gateway::Config {
    let mut config = gateway::Config::default();
    config.store.data_dir = std::env::temp_dir().join(format!(
        "signalcast-accounts-test-{}-{}",
        std::process::id(),
        engine::model::UnixNanos::now().0
    ));
    config.demo.enabled = false;
    config.auth.accounts_url = Some(format!("https://localhost:{}", sidecar.addr.port()));
    config.auth.accounts_gateway_token = GATEWAY.to_owned();
    config.auth.accounts_ca_file = ca.map(TestCert::cert);
    config
}

async fn start(config: gateway::Config) -> Result<gateway::Running, gateway::StartError> {
    let http_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    gateway::start_on(config, http_l, feed_l).await
}

async fn ready_within(gw: &gateway::Running, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if http(gw.http_addr, "GET", "/health/ready", None, None).0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_speaks_https_and_a_gateway_trusts_only_its_ca() {
    let db = Postgres::start();
    let cert = TestCert::new("sidecar");
    let cert_path = cert.cert().display().to_string();
    let key_path = cert.key().display().to_string();
    let s = Sidecar::start_with(&db, free_port(), &["--tls-cert", &cert_path, "--tls-key", &key_path]);

    // Both listeners are HTTPS; plain HTTP gets no answer.
    assert_eq!(https(s.addr, &cert, "GET", "/health/live", None, None).0, 200);
    assert_eq!(http(s.addr, "GET", "/health/live", None, None).0, 0, "no plain HTTP on the TLS port");
    let plan = json!({"id": "premium", "name": "premium", "tier": "premium"});
    assert_eq!(https(s.admin_addr, &cert, "POST", "/v1/admin/plans", Some(ADMIN), Some(&plan)).0, 201);
    let user = json!({"id": "u-t", "email": "t@example.com", "password": "pass-word-9", "plan": "premium"});
    assert_eq!(https(s.admin_addr, &cert, "POST", "/v1/admin/users", Some(ADMIN), Some(&user)).0, 201);

    // A gateway with the sidecar's CA follows it, and its tokens open sockets.
    let gw = start(gateway_config(&s, Some(&cert))).await.unwrap();
    assert!(ready_within(&gw, Duration::from_secs(10)).await, "the gateway follows the sidecar over TLS");
    let login = json!({"email": "t@example.com", "password": "pass-word-9"});
    let (_, tokens) = https(s.addr, &cert, "POST", "/v1/auth/login", None, Some(&login));
    let token = tokens["access_token"].as_str().unwrap();
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", gw.http_addr)).await.is_ok()
    );

    // A gateway trusting another CA never takes this sidecar's keys: an impostor
    // presenting some other certificate would get nowhere either.
    let other = TestCert::new("other-ca");
    let fooled = start(gateway_config(&s, Some(&other))).await.unwrap();
    assert!(
        !ready_within(&fooled, Duration::from_secs(3)).await,
        "trusted a certificate its CA did not sign"
    );
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", fooled.http_addr)).await;
    assert!(refused.is_err(), "no keys, no connection");

    // https without a CA file, and plain http to a host that is not loopback, do not
    // start at all.
    let no_ca = start(gateway_config(&s, None)).await.expect_err("https without a CA file");
    assert!(no_ca.to_string().contains("accounts_ca_file"), "{no_ca}");
    let mut plain = gateway_config(&s, None);
    plain.auth.accounts_url = Some("http://accounts.internal:8081".into());
    let err = start(plain.clone()).await.expect_err("plain http beyond loopback");
    assert!(err.to_string().contains("not loopback"), "{err}");
    plain.auth.accounts_insecure_plain_http = true;
    assert!(start(plain).await.is_ok(), "unless explicitly allowed");
}

#[test]
fn the_sidecar_refuses_plain_http_beyond_loopback_without_an_explicit_opt_in() {
    let db = Postgres::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
        .args(["serve", "--listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db.url())
        .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN)
        .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY)
        .env("SIGNALCAST_ACCOUNTS_KEK", KEK)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not loopback") && err.contains("--tls-cert"), "{err}");
}

/// Runs `signalcast-accounts serve` on `db_url` with `args` until it exits or `wait`
/// passes; the exit and what it printed, or None if it was still running (then killed).
fn run_sidecar(db_url: &str, args: &[&str], wait: Duration) -> Option<(bool, String)> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .args(args)
        .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db_url)
        .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN)
        .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY)
        .env("SIGNALCAST_ACCOUNTS_KEK", KEK)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Some((status.success(), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn the_sidecar_reaches_postgresql_over_verified_tls() {
    let cert = TestCert::new("pg");
    let db = Postgres::start_tls(&cert.pair.cert.pem(), &cert.pair.signing_key.serialize_pem());
    let ca = cert.cert().display().to_string();
    // With the CA that signed the server's certificate: it serves, and every query of
    // a cluster that refuses anything but TLS works.
    let s = Sidecar::start_with(&db, free_port(), &["--database-ca-file", &ca]);
    let plan = json!({"id": "basic", "name": "basic", "tier": "basic"});
    assert_eq!(http(s.admin_addr, "POST", "/v1/admin/plans", Some(ADMIN), Some(&plan)).0, 201);
    assert_eq!(http(s.addr, "GET", "/health/ready", None, None).0, 200);
    drop(s);
    // Trusting another CA, it refuses the server (the chain is verified), and says so.
    let other = TestCert::new("pg-other");
    let other_ca = other.cert().display().to_string();
    let (ok, err) = run_sidecar(&db.url(), &["--database-ca-file", &other_ca], Duration::from_secs(20))
        .expect("a sidecar that cannot verify its database stops");
    assert!(!ok && err.contains("certificate"), "{err}");
    // Without a CA file it speaks in clear, which this cluster refuses.
    let (ok, err) =
        run_sidecar(&db.url(), &[], Duration::from_secs(20)).expect("a sidecar the database refuses stops");
    assert!(!ok && err.to_lowercase().contains("database"), "{err}");
}
