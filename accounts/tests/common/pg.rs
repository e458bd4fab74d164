//! A throwaway PostgreSQL cluster: initdb + pg_ctl on a free loopback port, removed on
//! drop. Shared by the accounts tests, the README and Kafka tests (gateway-ws/tests) and the
//! store tests (store/tests), which include this file by path.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists()).unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses
/// to run as root).
fn pg(tool: &str, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(tool)).args(args);
        c
    } else {
        let mut c = Command::new(pg_bin(tool));
        c.args(args);
        c
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster that accepts TCP connections over TLS only (`ssl = on`, and `pg_hba`
    /// refusing anything else), presenting `cert` with `key` (PEM).
    pub fn start_tls(cert: &str, key: &str) -> Self {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let dir = std::env::temp_dir().join(format!("signalcast-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let st = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().unwrap();
            assert!(st.success());
        }
        let data = dir.join("data");
        let d = data.to_str().unwrap();
        let out = pg("initdb", &["-D", d, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        if let Some((cert, key)) = tls {
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            let mut conf =
                std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
            std::io::Write::write_all(&mut conf, b"ssl = on\n").unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            if is_root() {
                for f in ["server.crt", "server.key", "pg_hba.conf"] {
                    let st =
                        Command::new("chown").args(["postgres:postgres"]).arg(data.join(f)).status().unwrap();
                    assert!(st.success());
                }
            }
        }
        let port = free_port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
        let log = dir.join("log").display().to_string();
        let st = pg("pg_ctl", &["-D", d, "-o", &opts, "-l", &log, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "pg_ctl start failed: {}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        Self { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn stop(&self) {
        let _ = pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }

    pub fn restart(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("log").display().to_string();
        let st = pg("pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
