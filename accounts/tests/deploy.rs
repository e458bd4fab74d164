//! The sidecar as the deployment files run it (deploy/k8s/accounts.yaml and the compose
//! file's `accounts` service): its command line is one the binary accepts, and every
//! variable it is given is one the binary reads. (The gateway's side of the same check
//! is gateway-ws/tests/deploy.rs.)
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn load(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// The variables the binary reads: its `env = "…"` attributes.
fn read_by_binary() -> Vec<String> {
    let src = std::fs::read_to_string(root().join("accounts/src/main.rs")).unwrap();
    src.split("env = \"").skip(1).map(|p| p.split('"').next().unwrap().to_owned()).collect()
}

/// Runs the binary with `args` plus `--help`: clap accepts the command line or says why.
fn accepts(args: &[String]) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_signalcast-accounts")).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "signalcast-accounts {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_manifests_run_the_sidecar_with_flags_and_variables_it_knows() {
    let known = read_by_binary();
    let mut seen = 0;
    for doc in load("deploy/k8s/accounts.yaml") {
        if doc["kind"].as_str() != Some("Deployment") {
            continue;
        }
        for c in doc["spec"]["template"]["spec"]["containers"].as_vec().unwrap() {
            assert_eq!(strings(&c["command"]), ["signalcast-accounts"]);
            accepts(&strings(&c["args"]));
            for e in c["env"].as_vec().into_iter().flatten() {
                let name = e["name"].as_str().unwrap();
                assert!(known.iter().any(|k| k == name), "{name} is not read by signalcast-accounts");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "one sidecar container");

    let compose = load("deploy/compose.yaml").remove(0);
    let svc = &compose["services"]["accounts"];
    assert_eq!(strings(&svc["entrypoint"]), ["signalcast-accounts"]);
    accepts(&strings(&svc["command"]));
    for (k, _) in svc["environment"].as_hash().unwrap() {
        let name = k.as_str().unwrap();
        assert!(known.iter().any(|k| k == name), "compose: {name} is not read by signalcast-accounts");
    }
}
