//! [3/10] 4: signing keys sealed at rest under a key-encryption key the database never
//! sees, and retired by an admin call that gateways act on within a second.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The DER of Ed25519's algorithm id and the private key's octet string header: the
/// bytes every PKCS#8 Ed25519 private key carries in clear (RFC 8410).
const PKCS8_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

async fn db_client(db: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Every byte the signing-key table holds, per row.
async fn stored(client: &tokio_postgres::Client) -> Vec<(String, Vec<u8>)> {
    client
        .query(
            "SELECT kid, coalesce(pkcs8, ''::bytea) || coalesce(sealed, ''::bytea) || public_key FROM auth.signing_keys",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_are_sealed_at_rest_and_need_their_kek() {
    let db = Postgres::start();
    let mut s = Sidecar::start(&db);
    let (st, _) = http(s.admin_addr, "POST", "/v1/admin/signing-keys/rotate", Some(ADMIN), None);
    assert_eq!(st, 200);
    let client = db_client(&db).await;
    let rows = stored(&client).await;
    assert_eq!(rows.len(), 2);
    for (kid, bytes) in &rows {
        assert!(!contains(bytes, PKCS8_ED25519), "key {kid} is stored in clear");
    }
    s.kill();

    // A key stored in clear (as before keys were sealed) is sealed when the sidecar
    // starts, and its clear copy erased.
    let legacy: Vec<u8> =
        [&[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05][..], PKCS8_ED25519, &[7u8; 32]].concat();
    client
        .execute(
            "INSERT INTO auth.signing_keys (kid, pkcs8, public_key, created_at, retired_at)
             VALUES ('legacy', $1, $2, now() - interval '1 day', now())",
            &[&legacy, &vec![1u8; 32]],
        )
        .await
        .unwrap();
    let _s = Sidecar::start(&db);
    for (kid, bytes) in stored(&client).await {
        assert!(!contains(&bytes, PKCS8_ED25519), "key {kid} is still in clear after a start");
    }
    drop(_s);

    // Another KEK cannot open them: the sidecar refuses to start, and says why.
    let wrong = std::env::temp_dir().join(format!("kek-{}", std::process::id()));
    std::fs::write(&wrong, "another key-encryption key, 32 bytes or more\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--kek-file")
        .arg(&wrong)
        .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db.url())
        .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN)
        .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with the wrong KEK");
    assert!(err.contains("another key-encryption key"), "{err}");
    // And without any KEK it does not start either.
    let out = Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db.url())
        .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN)
        .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY)
        .env_remove("SIGNALCAST_ACCOUNTS_KEK")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key-encryption key is required"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_key_stops_opening_connections_within_a_second() {
    let db = Postgres::start();
    let s = Sidecar::start(&db);
    let admin =
        |m: &str, p: &str, b: Option<serde_json::Value>| http(s.admin_addr, m, p, Some(ADMIN), b.as_ref());
    admin("POST", "/v1/admin/plans", Some(json!({"id": "premium", "name": "premium", "tier": "premium"})));
    let user = json!({"id": "u-k", "email": "k@example.com", "password": "pass-word-9", "plan": "premium"});
    assert_eq!(admin("POST", "/v1/admin/users", Some(user)).0, 201);
    let login = || {
        let body = json!({"email": "k@example.com", "password": "pass-word-9"});
        http(s.addr, "POST", "/v1/auth/login", None, Some(&body)).1["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old_token = login();
    let old_kid = {
        use base64::Engine as _;
        let head = old_token.split('.').next().unwrap();
        let head: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head).unwrap())
                .unwrap();
        head["kid"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        admin("POST", &format!("/v1/admin/signing-keys/{old_kid}/retire"), None).0,
        409,
        "the only key"
    );
    assert_eq!(admin("POST", "/v1/admin/signing-keys/no-such-kid/retire", None).0, 404);
    assert_eq!(admin("POST", "/v1/admin/signing-keys/rotate", None).0, 200);
    let new_token = login();

    let gw = gateway_on(&s).await;
    let opens = |token: String| {
        let addr = gw.http_addr;
        async move { tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await.is_ok() }
    };
    assert!(opens(old_token.clone()).await, "before: the old key's token opens a connection");

    assert_eq!(admin("POST", &format!("/v1/admin/signing-keys/{old_kid}/retire"), None).0, 204);
    let retired = Instant::now();
    while opens(old_token.clone()).await {
        assert!(retired.elapsed() < Duration::from_secs(1), "the retired key's token still opens after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opens(new_token).await, "the new key's tokens still open");
    let (_, jwks) = http(s.addr, "GET", "/.well-known/jwks.json", None, None);
    assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k["kid"] != old_kid.as_str()), "{jwks}");
}
