//! The workspace's `rust-version` is what the code needs: no dependency asks for more.
//! (The code's own needs are held by clippy's `incompatible_msrv`, which reads the
//! same field, by let-chains, which need 1.88, and by `File::try_lock`, 1.89.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn rust_version_covers_every_dependency() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This platform's packages only: a fresh machine has downloaded no others (the
    // Windows-only ones, say), and offline metadata for all would fail there.
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = version(env!("CARGO_PKG_RUST_VERSION"));
    assert!(ours >= (1, 89, 0), "let-chains need 1.88, the store's directory lock 1.89");
    let mut needs: Vec<((u64, u64, u64), String)> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?.to_owned())))
        .collect();
    needs.sort();
    let (most, who) = needs.last().cloned().unwrap();
    assert!(most <= ours, "{who} needs Rust {most:?}, the workspace says {ours:?}");
}
