//! The sidecar against a real PostgreSQL: login, refresh rotation and reuse detection,
//! logout, privacy, SQL injection as data, the change feed, and surviving a database
//! restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn admin(s: &Sidecar, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http(s.admin_addr, method, path, Some(ADMIN), body.as_ref())
}

fn setup_plans(s: &Sidecar) {
    for tier in ["free", "basic", "premium", "enterprise"] {
        let (st, _) =
            admin(s, "POST", "/v1/admin/plans", Some(json!({"id": tier, "name": tier, "tier": tier})));
        assert!(st == 201 || st == 409, "plan {tier}: {st}");
    }
}

fn login(s: &Sidecar, email: &str, password: &str) -> (u16, Value) {
    http(s.addr, "POST", "/v1/auth/login", None, Some(&json!({"email": email, "password": password})))
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

#[test]
fn login_refresh_rotation_reuse_and_logout() {
    let db = Postgres::start();
    let s = Sidecar::start(&db);
    setup_plans(&s);
    let (st, _) = admin(
        &s,
        "POST",
        "/v1/admin/users",
        Some(json!({"id": "u-1", "email": "one@example.com", "password": "pass-word-1", "plan": "premium",
                    "categories": ["crypto", "forex"], "max_signals_per_day": 500})),
    );
    assert_eq!(st, 201);

    let (st, tokens) = login(&s, "one@example.com", "pass-word-1");
    assert_eq!(st, 200, "{tokens}");
    let c = claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(
        (c["sub"].as_str(), c["tier"].as_str(), c["aud"].as_str()),
        (Some("u-1"), Some("premium"), Some("signalcast"))
    );
    assert_eq!(c["categories"], json!(["crypto", "forex"]));
    assert_eq!(c["max_signals_per_day"], 500);
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 900, "access tokens live 15 min");

    // The JWKS publishes the key that signed it.
    let (st, jwks) = http(s.addr, "GET", "/.well-known/jwks.json", None, None);
    assert_eq!(st, 200);
    let header: Value = {
        use base64::Engine as _;
        let h = tokens["access_token"].as_str().unwrap().split('.').next().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
    };
    assert_eq!(header["alg"], "EdDSA");
    assert!(
        jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == header["kid"] && k["crv"] == "Ed25519")
    );

    // Wrong password and unknown user look alike.
    let wrong = login(&s, "one@example.com", "pass-word-2");
    let unknown = login(&s, "nobody@example.com", "pass-word-1");
    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);

    // Refresh rotates.
    let r1 = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (st, t2) = http(s.addr, "POST", "/v1/auth/refresh", None, Some(&json!({"refresh_token": r1})));
    assert_eq!(st, 200);
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    // Replaying the rotated token is refused and revokes the whole login.
    let (st, _) = http(s.addr, "POST", "/v1/auth/refresh", None, Some(&json!({"refresh_token": r1})));
    assert_eq!(st, 401);
    let (st, _) = http(s.addr, "POST", "/v1/auth/refresh", None, Some(&json!({"refresh_token": r2})));
    assert_eq!(st, 401, "the thief's fresh token dies with the family");

    // Logout revokes.
    let (_, t3) = login(&s, "one@example.com", "pass-word-1");
    let r3 = t3["refresh_token"].as_str().unwrap();
    let (st, _) = http(s.addr, "POST", "/v1/auth/logout", None, Some(&json!({"refresh_token": r3})));
    assert_eq!(st, 204);
    let (st, _) = http(s.addr, "POST", "/v1/auth/refresh", None, Some(&json!({"refresh_token": r3})));
    assert_eq!(st, 401);

    // Suspension: no login, no refresh.
    let (_, t4) = login(&s, "one@example.com", "pass-word-1");
    assert_eq!(admin(&s, "POST", "/v1/admin/users/u-1/suspend", None).0, 200);
    assert_eq!(login(&s, "one@example.com", "pass-word-1").0, 403);
    let (st, _) =
        http(s.addr, "POST", "/v1/auth/refresh", None, Some(&json!({"refresh_token": t4["refresh_token"]})));
    assert_eq!(st, 401);
}

#[test]
fn injection_attempts_are_data_and_nobody_reads_anyone_else() {
    let db = Postgres::start();
    let s = Sidecar::start(&db);
    setup_plans(&s);
    let evil = [
        "x'; DROP TABLE user_management.users; --",
        "' OR '1'='1",
        "\"; SELECT pg_sleep(5); --",
        "Robert'); DELETE FROM auth.refresh_tokens;--",
    ];
    for (i, e) in evil.iter().enumerate() {
        let id = format!("{e}{i}");
        let email = format!("{e}@{i}.example");
        let (st, body) = admin(
            &s,
            "POST",
            "/v1/admin/users",
            Some(json!({"id": id, "email": email, "password": format!("{e}-password"), "plan": "basic"})),
        );
        assert_eq!(st, 201, "{body}");
        let path = format!("/v1/admin/users/{}", urlencode(&id));
        let (st, got) = admin(&s, "GET", &path, None);
        assert_eq!(st, 200);
        assert_eq!(
            (got["id"].as_str(), got["email"].as_str()),
            (Some(id.as_str()), Some(email.as_str())),
            "stored as typed"
        );
        let (st, t) = login(&s, &email, &format!("{e}-password"));
        assert_eq!(st, 200);
        let (st, me) = http(s.addr, "GET", "/v1/me", t["access_token"].as_str(), None);
        assert_eq!(st, 200);
        assert_eq!(me["id"].as_str(), Some(id.as_str()), "/v1/me is the caller's own record");
        // A login with the injection as the password of someone else gets nothing.
        assert_eq!(login(&s, &email, "' OR '1'='1").0, 401);
    }
    // Every other string field: plan id and name, producer id, categories.
    let plan = json!({"id": evil[0], "name": evil[3], "tier": "premium"});
    assert_eq!(admin(&s, "POST", "/v1/admin/plans", Some(plan)).0, 201);
    let (st, sub) = admin(
        &s,
        "POST",
        "/v1/admin/subscriptions",
        Some(json!({"user_id": format!("{}1", evil[1]), "plan_id": evil[0]})),
    );
    assert_eq!((st, sub["tier"].as_str()), (200, Some("premium")), "{sub}");
    let (st, key) = admin(&s, "POST", "/v1/admin/producer-keys", Some(json!({"producer_id": evil[2]})));
    assert_eq!((st, key["producer_id"].as_str()), (201, Some(evil[2])));
    let (_, snap) = http(s.addr, "GET", "/v1/gateway/snapshot", Some(GATEWAY), None);
    assert!(snap["keys"].as_array().unwrap().iter().any(|k| k["producer_id"] == evil[2]));
    let bad = json!({"categories": [evil[1]], "real_time_access": true});
    let path = format!("/v1/admin/users/{}/signal-subscription", urlencode(&format!("{}1", evil[1])));
    assert_eq!(admin(&s, "PUT", &path, Some(bad)).0, 400, "an unknown category is refused");
    // An unknown plan or category is a clear error, not a crash.
    let (st, _) =
        admin(&s, "POST", "/v1/admin/plans", Some(json!({"id": "p", "name": "p", "tier": "platinum"})));
    assert_eq!(st, 400);
    let (st, _) = admin(
        &s,
        "POST",
        "/v1/admin/subscriptions",
        Some(json!({"user_id": "' OR '1'='1", "plan_id": "nope"})),
    );
    assert_eq!(st, 404);
    // Admin and gateway endpoints refuse without their tokens (and with each other's).
    assert_eq!(http(s.admin_addr, "GET", "/v1/admin/users/x", None, None).0, 401);
    assert_eq!(http(s.admin_addr, "GET", "/v1/admin/users/x", Some(GATEWAY), None).0, 401);
    assert_eq!(http(s.addr, "GET", "/v1/gateway/snapshot", Some(ADMIN), None).0, 401);
    // The admin API is not on the public listener at all, token or not.
    assert_eq!(http(s.addr, "GET", "/v1/admin/users/x", Some(ADMIN), None).0, 404);
    // The table is still there.
    let first = format!("/v1/admin/users/{}", urlencode(&format!("{}0", evil[0])));
    assert_eq!(admin(&s, "GET", &first, None).0, 200);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_change_feed_streams_upgrades_and_producer_keys_and_survives_a_database_restart() {
    let db = Postgres::start();
    let s = Sidecar::start(&db);
    setup_plans(&s);
    admin(
        &s,
        "POST",
        "/v1/admin/users",
        Some(json!({"id": "u-2", "email": "two@example.com", "password": "pass-word-2", "plan": "basic"})),
    );
    let (_, keys) = http(s.addr, "GET", "/v1/gateway/snapshot", Some(GATEWAY), None);
    let after = keys["position"].as_i64().unwrap();
    let mut feed = Events::open(s.addr, &format!("/v1/gateway/changes?after={after}"), GATEWAY);

    admin(&s, "POST", "/v1/admin/subscriptions", Some(json!({"user_id": "u-2", "plan_id": "enterprise"})));
    let mut tiers = Vec::new();
    while let Some(ev) = feed.next(Duration::from_secs(1)) {
        assert!(ev["position"].as_i64().unwrap() > after);
        tiers.push(ev["user"]["tier"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        tiers.last().map(String::as_str),
        Some("enterprise"),
        "the upgrade arrives within a second: {tiers:?}"
    );

    let (st, k) = admin(&s, "POST", "/v1/admin/producer-keys", Some(json!({"producer_id": "model-x"})));
    assert_eq!(st, 201);
    let ev = feed.next(Duration::from_secs(1)).expect("key issue on the feed");
    assert_eq!((ev["kind"].as_str(), ev["keys"].as_array().unwrap().len()), (Some("producer"), 1));
    assert_eq!(admin(&s, "DELETE", &format!("/v1/admin/producer-keys/{}", k["id"]), None).0, 204);
    let ev = feed.next(Duration::from_secs(1)).expect("revocation on the feed");
    assert!(ev["keys"].as_array().unwrap().is_empty(), "revoked keys leave the list");

    // PostgreSQL goes away: readiness says so, the sidecar stays up; changes made after
    // it is back reach a stream resumed from the last position seen.
    let last = ev["position"].as_i64().unwrap();
    db.stop();
    assert_eq!(http(s.addr, "GET", "/health/ready", None, None).0, 503);
    assert_eq!(http(s.addr, "GET", "/health/live", None, None).0, 200);
    db.restart();
    let mut up = false;
    for _ in 0..100 {
        if admin(&s, "POST", "/v1/admin/users/u-2/suspend", None).0 == 200 {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "the pool reconnects after PostgreSQL returns");
    let mut resumed = Events::open(s.addr, &format!("/v1/gateway/changes?after={last}"), GATEWAY);
    let ev = resumed.next(Duration::from_secs(5)).expect("the suspension after the restart");
    assert_eq!((ev["user_id"].as_str(), ev["user"]["status"].as_str()), (Some("u-2"), Some("suspended")));
}

#[test]
fn seed_loads_the_fixture_accounts() {
    let db = Postgres::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast-accounts"))
        .args(["seed", "--file"])
        .arg(repo_file("fixtures/accounts.toml"))
        .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Sidecar::start(&db);
    let (st, t) = login(&s, "premium1@example.com", "signalcast-dev-password");
    assert_eq!(st, 200);
    assert_eq!(claims(t["access_token"].as_str().unwrap())["tier"], "premium");
    assert_eq!(login(&s, "suspended@example.com", "signalcast-dev-password").0, 403);
}

#[test]
fn an_applied_migration_that_was_edited_stops_the_start_with_its_version() {
    let db = Postgres::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool =
            accounts::db::pool(&db.url(), 2, std::time::Duration::from_secs(5), &accounts::db::DbTls::Plain)
                .unwrap();
        let v1 = "CREATE TABLE public.t1 (id INT)";
        let first = [(1, "first", v1)];
        assert_eq!(accounts::db::migrate_these(&pool, &first).await.unwrap(), 1);
        assert_eq!(accounts::db::migrate_these(&pool, &first).await.unwrap(), 0, "applied once");
        // A new migration after it applies; the first, unchanged, passes its check.
        let both = [(1, "first", v1), (2, "second", "CREATE TABLE public.t2 (id INT)")];
        assert_eq!(accounts::db::migrate_these(&pool, &both).await.unwrap(), 1);
        // Someone edits V1 after it shipped: refused, naming it.
        let edited = [(1, "first", "CREATE TABLE public.t1 (id BIGINT)"), both[1]];
        let e = accounts::db::migrate_these(&pool, &edited).await.unwrap_err().to_string();
        assert!(e.contains("V1__first") && e.contains("must not be edited"), "{e}");
        // The real migrations on a fresh database, twice.
        let db2 = Postgres::start();
        let pool2 =
            accounts::db::pool(&db2.url(), 2, std::time::Duration::from_secs(5), &accounts::db::DbTls::Plain)
                .unwrap();
        assert!(accounts::db::migrate(&pool2).await.unwrap() >= 1);
        assert_eq!(accounts::db::migrate(&pool2).await.unwrap(), 0);
    });
}
