//! `--accounts`: signalcast on the accounts sidecar, as a deployment runs it. A
//! throwaway PostgreSQL cluster (initdb on a free loopback port), `signalcast-accounts`
//! on it with the fixture users, and an access token from a real login: an EdDSA token
//! the gateway verifies against the sidecar's JWKS on every connection, where the
//! embedded default's are HS256.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Secrets of this throwaway deployment only (loopback, removed with it).
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const GATEWAY_TOKEN: &str = "bench-gateway-token-0123456789";
const KEK: &str = "bench-key-encryption-key-0123456789";

/// The database, the sidecar, and a premium user's access token.
#[derive(Debug)]
pub struct Accounts {
    pg_data: PathBuf,
    dir: PathBuf,
    sidecar: Option<Child>,
    url: String,
    /// An access token of the fixture user `premium1@example.com` (EdDSA).
    pub token: String,
}

impl Accounts {
    /// Starts PostgreSQL and the sidecar (`signalcast-accounts` beside `exe`), seeds the
    /// fixture users and logs one in.
    pub async fn start(exe: &Path) -> anyhow::Result<Self> {
        let sidecar_exe = exe.with_file_name("signalcast-accounts");
        if !sidecar_exe.is_file() {
            bail!(
                "--accounts needs the sidecar beside {}: cargo build --release -p signalcast-accounts",
                exe.display()
            );
        }
        sweep_stale().await;
        let dir = std::env::temp_dir().join(format!("{PG_DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut me =
            Self { pg_data: dir.join("data"), dir, sidecar: None, url: String::new(), token: String::new() };
        let port = free_port()?;
        // A password, not trust: other local users must not get a superuser here.
        let password = {
            let mut bytes = [0u8; 16];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        me.start_postgres(port, &password).await?;
        let database = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres");
        let sidecar = |args: &[&str]| {
            let mut c = Command::new(&sidecar_exe);
            c.args(args)
                .env("SIGNALCAST_ACCOUNTS_DATABASE_URL", &database)
                .env("SIGNALCAST_ACCOUNTS_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("SIGNALCAST_ACCOUNTS_GATEWAY_TOKEN", GATEWAY_TOKEN)
                .env("SIGNALCAST_ACCOUNTS_KEK", KEK)
                .env("SIGNALCAST_LOG", "warn")
                .stdout(Stdio::null());
            c
        };
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/accounts.toml");
        let seeded = sidecar(&["seed", "--file", &fixtures.display().to_string()]).status().await?;
        anyhow::ensure!(seeded.success(), "signalcast-accounts seed failed");
        let (api, admin) = (local(free_port()?), local(free_port()?));
        me.sidecar = Some(
            sidecar(&["serve", "--listen", &api.to_string(), "--admin-listen", &admin.to_string()])
                .kill_on_drop(true)
                .spawn()?,
        );
        let until = Instant::now() + Duration::from_secs(30);
        while request(api, "GET", "/health/live", "").await.map(|(s, _)| s).unwrap_or(0) != 200 {
            anyhow::ensure!(Instant::now() < until, "the accounts sidecar did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let login = r#"{"email":"premium1@example.com","password":"signalcast-dev-password"}"#;
        let (status, body) = request(api, "POST", "/v1/auth/login", login).await?;
        anyhow::ensure!(status == 200, "login: {status} {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        me.token = v["access_token"].as_str().context("login answer without access_token")?.to_owned();
        me.url = format!("http://{api}");
        Ok(me)
    }

    /// What the measured gateway is started with to take the sidecar's tokens.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        vec![
            ("SIGNALCAST_AUTH__ACCOUNTS_URL".into(), self.url.clone()),
            ("SIGNALCAST_AUTH__ACCOUNTS_GATEWAY_TOKEN".into(), GATEWAY_TOKEN.into()),
        ]
    }

    async fn start_postgres(&self, port: u16, password: &str) -> anyhow::Result<()> {
        let pwfile = self.dir.join("pw");
        std::fs::write(&pwfile, password)?;
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&self.dir).status().await?;
            anyhow::ensure!(ok.success(), "chown of the PostgreSQL folder failed");
        }
        let data = self.pg_data.display().to_string();
        let pwfile = format!("--pwfile={}", pwfile.display());
        let auth = ["--auth=scram-sha-256", pwfile.as_str()];
        let out = pg("initdb", &["-D", &data, "-U", "postgres", auth[0], auth[1], "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", self.dir.display());
        let log = self.dir.join("log").display().to_string();
        let ok = pg("pg_ctl", &["-D", &data, "-o", &opts, "-l", &log, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(ok.success(), "pg_ctl start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        Ok(())
    }

    /// Waits until the gateway at `addr` holds the sidecar's keys (ready).
    pub async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        while request(addr, "GET", "/health/ready", "").await.map(|(s, _)| s).unwrap_or(0) != 200 {
            anyhow::ensure!(Instant::now() < until, "the gateway did not get the sidecar's keys in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.start_kill();
        }
        let data = self.pg_data.display().to_string();
        // Blocking: a drop cannot wait on tokio, and this is the end of a run.
        let mut stop = pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        let _ = stop.as_std_mut().stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a run keeps its cluster: `<prefix><pid>` under the temporary folder.
const PG_DIR_PREFIX: &str = "signalcast-bench-pg-";

/// Stops and removes the clusters of runs that ended without cleaning up (interrupted:
/// `pg_ctl` starts the server in a session of its own, which outlives the bench).
async fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PG_DIR_PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a run still going
        }
        let data = e.path().join("data").display().to_string();
        let _ = pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .await;
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// The newest installed PostgreSQL's `tool`, run as `postgres` when this is root
/// (the server refuses to run as root).
fn pg(tool: &str, args: &[&str]) -> Command {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    let bin =
        dirs.into_iter().rev().map(|d| d.join(tool)).find(|p| p.exists()).unwrap_or_else(|| tool.into());
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP/1.1 request with a JSON body; the status and the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}
