//! What became of each signal, end to end with the real `signalcast` process: signals
//! and ticks over HTTP ingest, the close on a client's socket, in history and in the
//! scoreboard, and an open signal that survives a SIGKILL and closes after the restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use engine::model::{Category, Price};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request: (status, JSON body).
async fn http(addr: SocketAddr, method: &str, path: &str, auth: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|_| panic!("{head}\n{body}")))
}

fn producer_auth() -> String {
    use base64::Engine as _;
    let (id, key) = common::PRODUCER;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}")))
}

async fn tick(addr: SocketAddr, last: &str) {
    let t = json!({"symbol": "RELIANCE", "exchange": "NSE", "bid": last, "ask": last, "last": last,
                   "volume": 100, "ts": engine::model::UnixNanos::now().as_micros()});
    let (status, v) = http(addr, "POST", "/v1/ticks", &producer_auth(), &t.to_string()).await;
    assert_eq!((status, &v["results"][0]["status"]), (200, &json!("accepted")), "{v}");
}

/// A buy of RELIANCE at 95.00 (every tier) with its own target and stop.
fn buy(n: u128, target: &str, stop: &str) -> engine::model::Signal {
    let mut s = common::signal(n, 9_500, Category::Equity);
    s.target_price = target.parse::<Price>().unwrap();
    s.stop_loss = stop.parse::<Price>().unwrap();
    s
}

/// Publishes over HTTP ingest: each item's result.
async fn publish(addr: SocketAddr, signals: &[engine::model::Signal]) -> Vec<Value> {
    let body: Vec<String> = signals.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
    let (status, v) = http(addr, "POST", "/v1/signals", &producer_auth(), &body.join("\n")).await;
    assert_eq!(status, 200, "{v}");
    v["results"].as_array().unwrap().clone()
}

async fn get(addr: SocketAddr, user: &str, path: &str) -> Value {
    let url = common::dev_url(addr, user);
    let token = url.split("token=").nth(1).unwrap();
    let (status, v) = http(addr, "GET", path, &format!("Bearer {token}"), "").await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// The next SIGNAL_UPDATE of `id` on the client's socket.
async fn update_of(c: &mut common::Client, id: u128) -> Value {
    loop {
        let v = c.next_of(&["SIGNAL_UPDATE"]).await;
        if common::id_of(&v) == id {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_reaches_the_socket_history_and_scoreboard_and_an_open_signal_survives_a_crash() {
    let http_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let feed: SocketAddr = format!("127.0.0.1:{}", common::free_port()).parse().unwrap();
    let data = common::data_dir();
    let server = common::Server::start(http_addr, feed, &data).await;
    let mut client = common::Client::connect(&common::dev_url(http_addr, "u-premium-1")).await;
    assert_eq!(client.subscribe("signals_premium").await["type"], "SUBSCRIBED");

    tick(http_addr, "2456.75").await;
    let mut foreign = buy(3, "2520", "2420");
    foreign.source_id = uuid::Uuid::from_u128(0xbad);
    let results = publish(http_addr, &[buy(1, "2520", "2420"), foreign]).await;
    assert_eq!(results[0]["status"], "accepted", "{results:?}");
    assert_eq!(
        (&results[1]["status"], &results[1]["error"]),
        (&json!("refused"), &json!("foreign_source")),
        "a source the producer is not bound to: {results:?}"
    );
    let open = update_of(&mut client, 1).await;
    assert_eq!(open["data"]["status"], "open");

    // A tick past the target closes it: a new SIGNAL_UPDATE on the same channel.
    tick(http_addr, "2530").await;
    let close = update_of(&mut client, 1).await;
    assert!(close["seq"].as_u64() > open["seq"].as_u64(), "{close}");
    assert_eq!(close["data"]["status"], "target_hit");
    let outcome = &close["data"]["outcome"];
    assert_eq!(
        (&outcome["entry_price"], &outcome["exit_price"], &outcome["return_pct"]),
        (&json!("2456.7500"), &json!("2530.0000"), &json!("2.9816")),
        "{close}"
    );

    // Routed with the 2530 snapshot as its entry; then the server dies without a word.
    let mut second = buy(2, "2600", "2500");
    second.entry_price = "2530".parse().unwrap();
    assert_eq!(publish(http_addr, &[second]).await[0]["status"], "accepted");
    update_of(&mut client, 2).await;
    server.stop("-KILL").await;
    let server = common::Server::start(http_addr, feed, &data).await;
    let mut client = common::Client::connect(&common::dev_url(http_addr, "u-premium-1")).await;
    assert_eq!(client.subscribe("signals_premium").await["type"], "SUBSCRIBED");
    tick(http_addr, "2490").await;
    let close = update_of(&mut client, 2).await;
    assert_eq!(close["data"]["status"], "stop_hit", "tracked again after the restart: {close}");
    assert_eq!(close["data"]["outcome"]["entry_price"], "2530.0000");
    assert_eq!(close["data"]["outcome"]["return_pct"], "-1.5810");

    // History shows each signal as it ended; `status` filters on it.
    let page = get(http_addr, "u-premium-1", "/v1/signals/history").await;
    let statuses: Vec<&str> =
        page["items"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["stop_hit", "target_hit"], "{page}");
    let hits = get(http_addr, "u-premium-1", "/v1/signals/history?status=target_hit").await;
    assert_eq!(hits["items"].as_array().unwrap().len(), 1);

    // The scoreboard, for any signed-in user (a free one here).
    let board = get(http_addr, "u-free-1", "/v1/sources").await;
    let source = &board["sources"][0];
    assert_eq!(
        source["source_id"],
        engine::testkit::signal(1, 9_500, Category::Equity).source_id.to_string()
    );
    let day = &source["windows"]["day"];
    assert_eq!(
        (day["signals"].as_u64(), day["target_hit"].as_u64(), day["stop_hit"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(day["hit_rate"], "0.5000");
    assert_eq!(day["mean_return_pct"], "0.7003"); // (2.9816 - 1.5810) / 2
    assert_eq!(source["categories"]["equity"]["all"]["signals"], 2);
    let stats = get(http_addr, "u-free-1", "/v1/signals/stats?symbol=RELIANCE&exchange=NSE").await;
    assert_eq!(
        (stats["signals"].as_u64(), stats["by_type"]["buy"]["target_hit"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(stats["mean_confidence"], "95.00");

    // A call still open counts only for whoever has been shown it: a premium user (real
    // time) at once, a free one (30 s delay) not yet; its closed ones count for both.
    assert_eq!(publish(http_addr, &[buy(4, "2600", "2400")]).await[0]["status"], "accepted");
    let path = "/v1/signals/stats?symbol=RELIANCE&exchange=NSE";
    let counts = |v: &Value| (v["signals"].as_u64(), v["open"].as_u64());
    assert_eq!(counts(&get(http_addr, "u-premium-1", path).await), (Some(3), Some(1)));
    assert_eq!(counts(&get(http_addr, "u-free-1", path).await), (Some(2), Some(0)));
    let board = get(http_addr, "u-free-1", "/v1/sources").await;
    assert_eq!(counts(&board["sources"][0]["windows"]["day"]), (Some(2), Some(0)));
    drop(server);
}
