//! [3/10] 3: the sidecar's HTTP server facing the network — a connection cap, a
//! deadline for request heads and for handlers, a body cap — and the admin API on its
//! own listener, its token checked before any body is read, every action it takes kept
//! in `auth.admin_audit`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn slow_heads_are_cut_off_and_connections_past_the_cap_are_closed_at_once() {
    let db = Postgres::start();
    let s = Sidecar::start_with(&db, free_port(), &["--header-timeout-ms", "1000", "--max-connections", "8"]);
    // A client that trickles its head is cut off after the header timeout.
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
    let began = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(5)), "a slow head is cut off");
    assert!(began.elapsed() < Duration::from_secs(3), "within the header timeout: {:?}", began.elapsed());

    // Eight connections hold every place; the ninth is closed without an answer; when
    // one goes, a new connection is served again.
    let mut held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut ninth = TcpStream::connect(s.addr).unwrap();
    let _ = ninth.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_within(&mut ninth, Duration::from_secs(2)), "past the cap: closed");
    held.pop();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(http(s.addr, "GET", "/health/live", None, None).0, 200, "a place came back");
    // The admin listener has its own cap: the public one being full does not lock out
    // the operator.
    assert_eq!(http(s.admin_addr, "GET", "/v1/admin/users/nobody", Some(ADMIN), None).0, 404);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_have_a_deadline_bodies_a_cap_and_admin_calls_a_token_check_first_and_an_audit_row() {
    let db = Postgres::start();
    let s = Sidecar::start_with(&db, free_port(), &["--request-timeout-ms", "1000"]);
    let (admin_addr, addr) = (s.admin_addr, s.addr);
    let call =
        move |a, m: &'static str, p: &'static str, t: Option<&'static str>, b: Option<serde_json::Value>| {
            tokio::task::spawn_blocking(move || http(a, m, p, t, b.as_ref()))
        };

    // Without the admin token, a body is never read: 401, whatever it holds.
    let raw = |body: &str| {
        let mut c = TcpStream::connect(admin_addr).unwrap();
        let req = format!(
            "POST /v1/admin/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out.split(' ').nth(1).unwrap_or("").to_owned()
    };
    assert_eq!(raw("not json at all"), "401");
    assert_eq!(raw(&format!("{{\"id\": \"{}\"}}", "x".repeat(200_000))), "401");
    // With it, a body past 64 KiB is refused before it is parsed.
    let big = json!({"email": "x".repeat(100_000), "password": "y"});
    assert_eq!(call(addr, "POST", "/v1/auth/login", None, Some(big)).await.unwrap().0, 413);

    // Admin actions leave a row each: actor, action, target, status.
    let plan = json!({"id": "premium", "name": "premium", "tier": "premium"});
    assert_eq!(call(admin_addr, "POST", "/v1/admin/plans", Some(ADMIN), Some(plan)).await.unwrap().0, 201);
    let user = json!({"id": "u-a", "email": "a@example.com", "password": "pass-word-9", "plan": "premium"});
    assert_eq!(call(admin_addr, "POST", "/v1/admin/users", Some(ADMIN), Some(user)).await.unwrap().0, 201);
    assert_eq!(
        call(admin_addr, "POST", "/v1/admin/users/u-a/suspend", Some(ADMIN), None).await.unwrap().0,
        200
    );
    assert_eq!(call(admin_addr, "GET", "/v1/admin/users/u-zz", Some(ADMIN), None).await.unwrap().0, 404);
    let (client, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT actor, action, target, status FROM auth.admin_audit ORDER BY id", &[])
        .await
        .unwrap();
    let audit: Vec<(String, String, String, i32)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let actor = "admin-token@127.0.0.1".to_owned();
    assert_eq!(
        audit,
        [
            (actor.clone(), "POST /v1/admin/plans".into(), "premium".into(), 201),
            (actor.clone(), "POST /v1/admin/users".into(), "u-a".into(), 201),
            (actor.clone(), "POST /v1/admin/users/{id}/suspend".into(), "u-a".into(), 200),
            (actor, "GET /v1/admin/users/{id}".into(), "u-zz".into(), 404),
        ],
        "the refused calls without a token are not actions"
    );

    // A handler stuck on a locked table answers 503 `timeout` at the deadline, and the
    // server goes on serving.
    client.batch_execute("BEGIN; LOCK TABLE user_management.users IN ACCESS EXCLUSIVE MODE;").await.unwrap();
    let began = Instant::now();
    let (status, body) = call(admin_addr, "GET", "/v1/admin/users/u-a", Some(ADMIN), None).await.unwrap();
    assert_eq!((status, body["error"].as_str()), (503, Some("timeout")), "{body}");
    assert!(began.elapsed() < Duration::from_secs(4), "{:?}", began.elapsed());
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(call(addr, "GET", "/health/ready", None, None).await.unwrap().0, 200);
}

#[test]
fn sigterm_ends_the_sidecar_within_the_grace_period_even_with_a_change_stream_open() {
    let db = Postgres::start();
    let mut s = Sidecar::start(&db);
    let mut stream = Events::open(s.addr, "/v1/gateway/changes?after=0", GATEWAY);
    // The stream is open (a first event or a keep-alive may or may not come first).
    let _ = stream.next(Duration::from_millis(300));
    let took = s.terminate(Duration::from_secs(10)).expect("exited within 10 s of SIGTERM");
    assert!(took < Duration::from_secs(7), "5 s of grace, then out: {took:?}");
}
