//! The commands of README.md, docs/accounts.md and docs/deploy.md, run as written.
//!
//! The convention (README.md, "About the commands on these pages"): every fenced block
//! whose info string starts with `sh` is run, in page order, from the repository root,
//! by bash with `-euo pipefail`; what one block exports, the next ones see (one shell per
//! page). `sh background ready=TEXT` starts a server that keeps running until the page
//! ends; the page goes on once TEXT appears in its output. `sh skip: REASON` is shown
//! and not run; REASON is one of [`SKIP_REASONS`]. Blocks in other languages (`text`,
//! `json`, `toml`) are not commands.
//!
//! Running a block proves that it exits 0; what it is said to do is checked after it by
//! the check whose key the block contains. Every check must be used, and every
//! runnable block must have a check, so a page edit that drops or changes a command
//! fails here rather than on a newcomer's machine.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
#[path = "../../accounts/tests/common/pg.rs"]
mod pg;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Client;
use serde_json::{Value, json};

/// Why a block may not be run here. Short on purpose: anything else must run.
const SKIP_REASONS: &[&str] = &[
    "interactive",      // a transcript typed by hand; the test makes the same exchange itself
    "this-test",        // the test command, which runs this test
    "needs-kafka",      // a broker named kafka:9092 (gateway-ws/tests/kafka.rs runs the roles)
    "needs-docker",     // no Docker engine on the build machines
    "needs-kubernetes", // no cluster on the build machines
];

/// The most skipped blocks over the three pages: a growing skip list is a smell.
const MAX_SKIPPED: usize = 7;

/// The ports the pages' commands use as written.
const PORTS: &[u16] = &[8080, 7000, 8081, 8082];

/// One fenced shell block of a page.
#[derive(Debug, Clone)]
struct Block {
    line: usize,
    info: String,
    code: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Run,
    Background { ready: String },
    Skip(String),
}

impl Block {
    fn kind(&self) -> Kind {
        let rest = self.info.trim_start_matches("sh").trim();
        if let Some(reason) = rest.strip_prefix("skip:") {
            return Kind::Skip(reason.trim().to_owned());
        }
        if let Some(r) = rest.strip_prefix("background") {
            let ready = r
                .trim()
                .strip_prefix("ready=")
                .unwrap_or_else(|| panic!("line {}: `sh background` needs ready=\"TEXT\"", self.line));
            return Kind::Background { ready: ready.trim_matches('"').to_owned() };
        }
        assert!(rest.is_empty(), "line {}: unknown fence attributes {rest:?}", self.line);
        Kind::Run
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `sh` blocks of a page.
fn blocks(page: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(root().join(page)).unwrap();
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) if info == "sh" || info.starts_with("sh ") => {
                open = Some(Block { line: n + 1, info: info.to_owned(), code: String::new() });
            }
            (None, Some(info)) if !info.is_empty() => {
                // Another language: skip to its end.
                open = Some(Block { line: 0, info: info.to_owned(), code: String::new() });
            }
            (None, Some(_)) => open = Some(Block { line: 0, info: String::new(), code: String::new() }),
            (Some(_), Some("")) => {
                let b = open.take().unwrap();
                if b.line > 0 {
                    out.push(b);
                }
            }
            (Some(b), _) => {
                b.code.push_str(line);
                b.code.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{page}: a fence is not closed");
    out
}

/// A server a page started; its output collected as it comes.
struct Background {
    child: Child,
    output: Arc<Mutex<String>>,
    what: String,
}

impl Background {
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The block runs in its own process group: stop all of it (bash, cargo, server).
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-INT", "--", &pgid]).status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.child.wait();
        println!("stopped {} (killed)", self.what);
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // Last started, first stopped: a gateway goes before the sidecar it follows.
        while let Some(server) = self.servers.pop() {
            drop(server);
        }
        let _ = std::fs::remove_file(&self.exports);
    }
}

/// One page's shell: the environment a newcomer has (no SIGNALCAST_* variables), the
/// exports of earlier blocks, the servers it started.
struct Page {
    name: &'static str,
    exports: PathBuf,
    env: Vec<(String, String)>,
    servers: Vec<Background>,
    skipped: Vec<String>,
}

impl Page {
    fn new(name: &'static str) -> Self {
        let exports = std::env::temp_dir().join(format!(
            "signalcast-readme-{}-{}.sh",
            std::process::id(),
            name.replace('/', "-")
        ));
        let _ = std::fs::remove_file(&exports);
        Self { name, exports, env: Vec::new(), servers: Vec::new(), skipped: Vec::new() }
    }

    fn command(&self, code: &str, save_exports: bool) -> Command {
        let mut script = format!("[ -f '{0}' ] && source '{0}'\n{code}", self.exports.display());
        if save_exports {
            script.push_str(&format!("\nexport -p > '{}'\n", self.exports.display()));
        }
        let mut c = Command::new("bash");
        c.args(["-euo", "pipefail", "-c", &script]).current_dir(root());
        for (k, _) in std::env::vars() {
            if k.starts_with("SIGNALCAST_") {
                c.env_remove(k);
            }
        }
        c.env("SIGNALCAST_LOG", "info");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Spawns a block in its own process group, its output collected as it comes.
    fn spawn(&self, b: &Block, background: bool) -> (Child, Arc<Mutex<String>>) {
        println!("{}:{} $ {}{}", self.name, b.line, b.code.trim(), if background { " &" } else { "" });
        let mut child = self
            .command(&b.code, !background)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let output = collect(&mut child);
        (child, output)
    }

    /// Runs a block to its end (builds included: 30 minutes at most); its output.
    fn run(&mut self, b: &Block) -> String {
        let (mut child, output) = self.spawn(b, false);
        let until = Instant::now() + Duration::from_secs(1800);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "{}:{}: still running after 30 min", self.name, b.line);
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(50)); // the readers catch up
        let out = output.lock().unwrap().clone();
        assert!(status.success(), "{}:{} exited {status}:\n{}\n{out}", self.name, b.line, b.code);
        out
    }

    /// Starts a background block and waits (30 minutes at most, builds included) for
    /// its ready text.
    fn start(&mut self, b: &Block, ready: &str) -> usize {
        let (child, output) = self.spawn(b, true);
        let mut server = Background { child, output, what: b.code.trim().to_owned() };
        let until = Instant::now() + Duration::from_secs(1800);
        while !server.output().contains(ready) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{}:{}: exited {status} before {ready:?}:\n{}", self.name, b.line, server.output());
            }
            assert!(Instant::now() < until, "{}:{}: no {ready:?} in 30 min", self.name, b.line);
            std::thread::sleep(Duration::from_millis(100));
        }
        self.servers.push(server);
        self.servers.len() - 1
    }
}

/// Collects a child's stdout and stderr into one string, as they come.
fn collect(child: &mut Child) -> Arc<Mutex<String>> {
    let output = Arc::new(Mutex::new(String::new()));
    let readers: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ];
    for mut r in readers {
        let output = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    output
}

/// The pages' commands use fixed ports; say clearly when something else holds one.
fn ports_free() {
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok(),
            "port {port} is taken: the README's commands use it as written; stop what holds it"
        );
    }
}

/// One test at a time owns the fixed ports.
static PORTS_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a page: each block in order, each check after the block that contains its key.
async fn run_page(page: &mut Page, mut checks: Vec<(&'static str, Check)>) {
    let mut used = BTreeSet::new();
    for b in blocks(page.name) {
        let out = match b.kind() {
            Kind::Skip(reason) => {
                assert!(
                    SKIP_REASONS.contains(&reason.as_str()),
                    "{}:{}: skip reason {reason:?} is not one of {SKIP_REASONS:?}",
                    page.name,
                    b.line
                );
                page.skipped.push(format!("{}:{} ({reason})", page.name, b.line));
                continue;
            }
            Kind::Background { ready } => {
                let i = page.start(&b, &ready);
                page.servers[i].output()
            }
            Kind::Run => page.run(&b),
        };
        let mut checked = false;
        for (k, (key, check)) in checks.iter_mut().enumerate() {
            if b.code.contains(*key) {
                check(out.clone()).await;
                used.insert(k);
                checked = true;
            }
        }
        assert!(checked, "{}:{}: no check says what this block should do:\n{}", page.name, b.line, b.code);
    }
    for (k, (key, _)) in checks.iter().enumerate() {
        assert!(used.contains(&k), "{}: no block contains {key:?} any more", page.name);
    }
}

type Check = Box<dyn FnMut(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

fn check<F, Fut>(f: F) -> Check
where
    F: FnMut(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut f = f;
    Box::new(move |out| Box::pin(f(out)))
}

/// A check that also gets the URL an earlier check kept (the first command's printed
/// premium URL).
fn check_with_url<F, Fut>(url: &Arc<Mutex<String>>, mut f: F) -> Check
where
    F: FnMut(String, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let url = Arc::clone(url);
    check(move |out| {
        let now = url.lock().unwrap().clone();
        f(out, now)
    })
}

/// A ws:// URL the server printed for `tier`.
fn printed_url(output: &str, tier: &str) -> String {
    output
        .lines()
        .find(|l| l.starts_with(tier) && l.contains("ws://"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no {tier} URL printed:\n{output}"))
        .to_owned()
}

async fn http_get(path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:8080").await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await.unwrap().unwrap();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Waits for a SIGNAL_UPDATE matching `pred` (other messages skipped).
async fn signal_where(c: &mut Client, wait: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match c.try_next(left).await {
            Some(v) if v["type"] == "SIGNAL_UPDATE" && pred(&v) => return v,
            Some(_) => {}
            None => panic!("no matching SIGNAL_UPDATE within {wait:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_commands_run_as_written() {
    let _ports = PORTS_LOCK.lock().await;
    ports_free();
    let mut page = Page::new("README.md");
    // A fresh machine has no store yet: the checks below expect the README's fixed ids
    // to be new (a second run on the same store would answer them `duplicate`).
    let _ = std::fs::remove_dir_all(root().join("signalcast-data"));
    let premium_url = Arc::new(Mutex::new(String::new()));
    let checks: Vec<(&'static str, Check)> = vec![
        // The first command: serves on loopback, prints a URL per tier, signals flow.
        ("cargo run --release\n", {
            let premium_url = Arc::clone(&premium_url);
            check(move |out| {
                let premium_url = Arc::clone(&premium_url);
                async move {
                    for tier in ["free", "basic", "premium", "enterprise"] {
                        assert!(printed_url(&out, tier).starts_with("ws://127.0.0.1:8080/ws?token="));
                    }
                    assert!(out.contains("http://127.0.0.1:8080"), "{out}");
                    let store = root().join("signalcast-data").join("signals.db");
                    assert!(out.contains(&format!("signal store: {}", store.display())), "{out}");
                    assert!(store.exists(), "the store is where the server said");
                    let url = printed_url(&out, "premium");
                    *premium_url.lock().unwrap() = url.clone();
                    let mut c = Client::connect(&url).await;
                    let sub = c.subscribe("signals_premium").await;
                    assert_eq!(sub["type"], "SUBSCRIBED", "{sub}");
                    // The tour's transcript (step 2), made here: a signal with its market
                    // snapshot, a channel above the tier refused, a resume recovered.
                    let m = signal_where(&mut c, Duration::from_secs(30), |_| true).await;
                    assert!(m["data"]["market"].is_object() || m["data"]["market"].is_null(), "{m}");
                    let refused = c.subscribe("signals_enterprise").await;
                    assert_eq!(
                        (refused["type"].as_str(), refused["code"].as_str()),
                        (Some("ERROR"), Some("forbidden"))
                    );
                    let seq = m["seq"].as_u64().unwrap();
                    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium",
                                  "since": seq - 1, "epoch": sub["epoch"]}))
                        .await;
                    let again = c.next_of(&["SUBSCRIBED"]).await;
                    assert_eq!(again["recovered"], true, "{again}");
                    let (status, page) = http_get("/").await;
                    assert_eq!(status, 200, "the dashboard");
                    assert!(page.contains("<html") || page.contains("<!doctype"), "{page}");
                }
            })
        }),
        // Step 3: 1,000 signals produced and acknowledged, and the demo still flows.
        ("produce --rate 200 --count 1000", {
            check_with_url(&premium_url, |out, url| {
                async move {
                    assert!(out.contains("done: 1000 signals"), "{out}");
                    assert!(out.contains("all acknowledged"), "{out}");
                    let mut c = Client::connect(&url).await;
                    assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
                    // `produce` has exited: what arrives now is the built-in demo's.
                    signal_where(&mut c, Duration::from_secs(20), |_| true).await;
                }
            })
        }),
        // HTTP ingest: stored, then routed to premium (88.00).
        ("http://127.0.0.1:8080/v1/signals --data", {
            check(|out| async move {
                let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}"));
                assert_eq!(v["results"][0]["status"], "accepted", "{v}");
                assert_eq!(v["results"][0]["id"], "7c0f9a51-2b3d-4e6f-8a9b-0c1d2e3f4a5b");
            })
        }),
        // History: the signal just posted, with its premium seq.
        ("/v1/signals/history?symbol=HTTPDEMO", {
            check(|out| async move {
                let json = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{out}"));
                let v: Value = serde_json::from_str(json).unwrap();
                let item = &v["items"][0];
                assert_eq!(item["id"], "7c0f9a51-2b3d-4e6f-8a9b-0c1d2e3f4a5b", "{v}");
                assert_eq!(item["signal_type"], "sell");
                assert!(item["channels"]["signals_premium"].as_u64().is_some_and(|s| s > 0), "{v}");
                assert!(item["channels"].get("signals_enterprise").is_none(), "{v}");
            })
        }),
        // Step 5: two ticks close the HTTPDEMO sell at its target; history and the
        // scoreboard show it.
        ("http://127.0.0.1:8080/v1/ticks --data-binary", {
            check(|out| async move {
                let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{out}"));
                let statuses: Vec<&str> =
                    v["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
                assert_eq!(statuses, ["accepted", "accepted"], "{v}");
            })
        }),
        ("/v1/signals/history?status=target_hit&symbol=HTTPDEMO", {
            check(|out| async move {
                let json = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{out}"));
                let v: Value = serde_json::from_str(json).unwrap();
                let item = &v["items"][0];
                assert_eq!(item["id"], "7c0f9a51-2b3d-4e6f-8a9b-0c1d2e3f4a5b", "{v}");
                assert_eq!(item["status"], "target_hit", "{v}");
                assert_eq!(item["outcome"]["entry_price"], "250.0000", "{v}");
                assert_eq!(item["outcome"]["exit_price"], "239.5000", "{v}");
                assert_eq!(item["outcome"]["return_pct"], "4.2000", "{v}");
            })
        }),
        ("127.0.0.1:8080/v1/sources", {
            check(|out| async move {
                let json = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("{out}"));
                let v: Value = serde_json::from_str(json).unwrap();
                let source = v["sources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["source_id"] == "5eacdd1d-446b-4985-8de0-f44da0e8f005")
                    .unwrap_or_else(|| panic!("{v}"));
                assert!(source["windows"]["all"]["target_hit"].as_u64().is_some_and(|n| n >= 1), "{source}");
            })
        }),
        // A file of a tick and a signal: the signal is routed with that tick's snapshot.
        ("--file /tmp/signalcast-example.jsonl", {
            check_with_url(&premium_url, |out, url| {
                async move {
                    assert!(out.contains("done: 1 signals"), "{out}");
                    let mut c = Client::connect(&url).await;
                    let sub = c.subscribe("signals_premium").await;
                    // It was routed before this client came: resume from the start of the ring.
                    let head = sub["seq"].as_u64().unwrap();
                    c.send(json!({"type": "SUBSCRIBE", "channel": "signals_premium",
                                  "since": head.saturating_sub(500), "epoch": sub["epoch"]}))
                        .await;
                    let m =
                        signal_where(&mut c, Duration::from_secs(10), |v| v["data"]["symbol"] == "EXAMPLE")
                            .await;
                    assert_eq!(m["data"]["market"]["last"], "101.2500", "{m}");
                    assert_eq!(m["data"]["market"]["bid"], "101.2000", "{m}");
                }
            })
        }),
        // The Python package installs, and its model publishes over HTTP ingest.
        (
            "examples/publish_model.py --count 5",
            check(|out| async move {
                let accepted = out
                    .lines()
                    .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("/5 accepted "))
                    .count();
                assert_eq!(accepted, 5, "{out}");
            }),
        ),
        // Its bot follows the watchlist: the subscription, then five signals.
        (
            "examples/follow_watchlist.py --snapshot 5 --count 5",
            check(|out| async move {
                assert!(out.contains("following RELIANCE, TCS, INFY"), "{out}");
                let signals = out.lines().filter(|l| l.starts_with('#')).count();
                assert_eq!(signals, 5, "{out}");
            }),
        ),
        (
            "/metrics",
            check(|out| async move {
                assert!(out.contains("signalcast_delivery_latency_seconds_bucket"), "{out}");
            }),
        ),
        (
            "/health/ready",
            check(|out| async move {
                assert!(out.trim_end().ends_with("ready"), "{out}");
            }),
        ),
        (
            "token --user u-free-1",
            check(|out| async move {
                let token =
                    out.lines().rev().find(|l| l.starts_with("eyJ")).unwrap_or_else(|| panic!("{out}"));
                let mut c = Client::connect(&format!("ws://127.0.0.1:8080/ws?token={}", token.trim())).await;
                assert_eq!(c.subscribe("signals_free").await["type"], "SUBSCRIBED");
                assert_eq!(c.subscribe("signals_basic").await["code"], "forbidden");
            }),
        ),
    ];
    run_page(&mut page, checks).await;
    println!("skipped: {:?}", page.skipped);
    skipped_total(page.skipped.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_page_runs_as_written() {
    let _ports = PORTS_LOCK.lock().await;
    ports_free();
    let db = pg::Postgres::start();
    let mut page = Page::new("docs/accounts.md");
    // "PGPORT: where your PostgreSQL listens" — here, the throwaway cluster.
    page.env.push(("PGPORT".into(), db.port.to_string()));
    let checks: Vec<(&'static str, Check)> = vec![
        (
            "-- seed --file fixtures/accounts.toml",
            check(|out| async move {
                assert!(out.contains("seeded"), "{out}");
            }),
        ),
        (
            "cargo run --release -p signalcast-accounts\n",
            check(|out| async move {
                assert!(out.contains("127.0.0.1:8081") && out.contains("127.0.0.1:8082"), "{out}");
            }),
        ),
        (
            "--accounts-url http://127.0.0.1:8081",
            check(|_| async move {
                // The gateway follows the sidecar: ready once it has its keys and snapshot.
                let until = Instant::now() + Duration::from_secs(20);
                loop {
                    let (status, body) = http_get("/health/ready").await;
                    if status == 200 {
                        assert!(body.trim_end().ends_with("ready"), "{body}");
                        break;
                    }
                    assert!(Instant::now() < until, "gateway never ready: {body}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }),
        ),
        (
            "/v1/auth/login",
            check(|out| async move {
                let v: Value =
                    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or(Value::Null);
                let token = v["access_token"].as_str().unwrap_or_else(|| panic!("{out}"));
                let mut c = Client::connect(&format!("ws://127.0.0.1:8080/ws?token={token}")).await;
                assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
            }),
        ),
        // Bootstrap: the printed user logs in and the printed producer key publishes.
        ("-- bootstrap", check(|out| async move { bootstrap_works(&out).await })),
    ];
    run_page(&mut page, checks).await;
    skipped_total(page.skipped.len());
}

async fn bootstrap_works(out: &str) {
    let field = |prefix: &str, after: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split(after).nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {prefix} line:\n{out}"))
    };
    let password = field("user", "password: ");
    let key = field("producer", "key: ");
    let login = json!({"email": "first@example.com", "password": password});
    let token = sidecar_login(&login).await;
    let mut c = Client::connect(&format!("ws://127.0.0.1:8080/ws?token={token}")).await;
    assert_eq!(c.subscribe("signals_premium").await["type"], "SUBSCRIBED");
    let p = engine::feed::Producer::connect(engine::feed::ProducerConfig::new(
        "127.0.0.1:7000",
        "first-model",
        key,
    ))
    .await
    .unwrap();
    let mut s = common::signal(0xB007, 9_000, engine::model::Category::Equity);
    s.id = uuid::Uuid::from_u128(engine::model::UnixNanos::now().0 as u128);
    // The source bootstrap bound the producer to (`--source`).
    s.source_id = uuid::Uuid::parse_str("5eacdd1d-446b-4985-8de0-f44da0e8f005").unwrap();
    p.send_signal(&s).await.unwrap();
    p.flush().await.unwrap();
    let id = s.id.to_string();
    signal_where(&mut c, Duration::from_secs(10), |v| v["data"]["id"] == id.as_str()).await;
}

async fn sidecar_login(body: &Value) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect("127.0.0.1:8081").await.unwrap();
    let req = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{text}"));
    v["access_token"].as_str().unwrap_or_else(|| panic!("{text}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_page_runs_as_written() {
    let _ports = PORTS_LOCK.lock().await;
    let mut page = Page::new("docs/deploy.md");
    let checks: Vec<(&'static str, Check)> = vec![(
        "cargo build --release --locked -p signalcast-gateway -p signalcast-accounts",
        check(|_| async move {
            for bin in ["signalcast", "signalcast-accounts"] {
                assert!(root().join("target/release").join(bin).exists(), "{bin} not built");
            }
        }),
    )];
    run_page(&mut page, checks).await;
    skipped_total(page.skipped.len());
}

/// Skips are counted over the three pages (each test adds its page's).
fn skipped_total(n: usize) {
    static TOTAL: Mutex<usize> = Mutex::new(0);
    let mut t = TOTAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *t += n;
    assert!(*t <= MAX_SKIPPED, "{} blocks skipped over the pages; at most {MAX_SKIPPED}", *t);
}

#[test]
fn the_convention_reads_fences_as_documented() {
    let b = |info: &str| Block { line: 1, info: info.into(), code: String::new() };
    assert_eq!(b("sh").kind(), Kind::Run);
    assert_eq!(
        b("sh background ready=\"on http://\"").kind(),
        Kind::Background { ready: "on http://".into() }
    );
    assert_eq!(b("sh skip: needs-kafka").kind(), Kind::Skip("needs-kafka".into()));
    assert!(std::panic::catch_unwind(|| b("sh background").kind()).is_err());
    assert!(std::panic::catch_unwind(|| b("sh sometimes").kind()).is_err());
    // The pages use the convention, and it finds their commands.
    let readme = blocks("README.md");
    assert!(
        readme
            .iter()
            .any(|b| b.code == "cargo run --release\n" && matches!(b.kind(), Kind::Background { .. }))
    );
    assert!(
        readme
            .iter()
            .any(|b| b.code.contains("scripts/test.sh") && b.kind() == Kind::Skip("this-test".into()))
    );
    let all: Vec<Block> =
        ["README.md", "docs/accounts.md", "docs/deploy.md"].into_iter().flat_map(blocks).collect();
    let skipped = all.iter().filter(|b| matches!(b.kind(), Kind::Skip(_))).count();
    assert!(skipped <= MAX_SKIPPED, "{skipped} skipped blocks");
    for b in &all {
        if let Kind::Skip(reason) = b.kind() {
            assert!(SKIP_REASONS.contains(&reason.as_str()), "line {}: {reason}", b.line);
        }
    }
}

/// Files of the repository as git knows them (what a fresh clone has).
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git").args(["ls-files"]).current_dir(root()).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().map(|l| root().join(l)).collect()
}

/// A path relative to `dir`, resolved without touching the disk; `None` when it climbs
/// out of the repository.
fn resolve_in_repo(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<&str> = dir.strip_prefix(root()).ok()?.iter().filter_map(|c| c.to_str()).collect();
    for c in rel.split('/') {
        match c {
            ".." => {
                parts.pop()?;
            }
            "." | "" => {}
            c => parts.push(c),
        }
    }
    Some(parts.iter().collect())
}

#[test]
fn nothing_in_the_repository_cites_a_file_outside_it() {
    // Two ways a file could lean on something a clone does not have: a relative path that
    // climbs out of the repository, or a Markdown document that no file of the
    // repository is. What the code relies on is said in docs/ instead.
    let files = tracked_files();
    let names: BTreeSet<String> =
        files.iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
    let mut found = Vec::new();
    for path in &files {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let dir = path.parent().unwrap_or(path);
        for (n, line) in text.lines().enumerate() {
            let tokens = line.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)));
            for token in tokens.map(|t| t.trim_end_matches(['.', '/'])) {
                let outside = token.contains("../") && resolve_in_repo(dir, token).is_none();
                let md = token.rsplit('/').next().filter(|b| b.len() > 3 && b.ends_with(".md"));
                if outside || md.is_some_and(|b| !names.contains(b)) {
                    found.push(format!("{}:{}: {token}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "citations of files outside the repository:\n{}", found.join("\n"));
    // The rule finds what it is for (the climbing path is built here, so that this file
    // does not itself cite one).
    let climbing = ["..", "..", "elsewhere", "notes"].join("/");
    assert!(resolve_in_repo(&root().join("docs"), &climbing).is_none());
    assert!(resolve_in_repo(&root().join("docs"), "../README.md").is_some());
}

#[test]
fn architecture_quotes_only_figures_that_performance_reports() {
    let arch = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let perf = std::fs::read_to_string(root().join("docs/PERFORMANCE.md")).unwrap();
    // A measured figure in ARCHITECTURE.md is a decimal number on a line that says
    // "measured"; each must be one PERFORMANCE.md reports.
    for line in arch.lines().filter(|l| l.contains("measured")) {
        for word in line.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
            let word = word.trim_matches('.');
            if word.contains('.') && word.chars().any(|c| c.is_ascii_digit()) && !word.starts_with("0.0") {
                assert!(
                    perf.contains(word),
                    "ARCHITECTURE.md quotes {word}, which PERFORMANCE.md does not report: {line}"
                );
            }
        }
    }
}
