//! A single-node Kafka-protocol broker (tansu, in-memory storage) on a free port, as in
//! gateway-ws/tests/kafka.rs (scripts/test.sh installs tansu).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("tansu")).find(|p| p.is_file()));
    if let Some(p) = on_path {
        return p;
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let candidate = home.join("bin/tansu");
    assert!(
        candidate.exists(),
        "the tansu broker is not installed ({}): run scripts/test.sh, or \
         cargo install tansu --locked --features dynostore,libsql",
        candidate.display()
    );
    candidate
}

pub struct Broker {
    child: Child,
    pub addr: String,
    _dir: TempDir,
}

impl Broker {
    pub fn start() -> Self {
        let addr = format!("127.0.0.1:{}", super::pg::free_port());
        // tansu reads .env from its working directory: give it an empty one.
        let dir = TempDir::new("tansu");
        let url = format!("tcp://{addr}");
        let child = Command::new(tansu_binary())
            .current_dir(&dir.0)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr, _dir: dir }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
