//! deploy/: no Docker engine or cluster runs on the build machines, so what can be
//! checked without one is checked here: every manifest parses, the objects refer to each
//! other correctly, and every setting given to a `signalcast` container is a real
//! configuration key with a valid value (the gateway refuses unknown keys at start).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::Serialized;
use gateway::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str().unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// Applies YAML merge keys (`<<: *anchor`), which the parser leaves as plain keys.
fn merged(y: &Yaml) -> Yaml {
    match y {
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(Yaml::Hash(base)) = h.get(&Yaml::String("<<".into())) {
                for (k, v) in base {
                    out.insert(k.clone(), merged(v));
                }
            }
            for (k, v) in h {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.iter().map(merged).collect()),
        other => other.clone(),
    }
}

/// A `SIGNALCAST_*` variable given to the `signalcast` binary must be a key of
/// signalcast.toml (`__` separates tables) whose value parses, or one the binary reads
/// itself.
fn check_setting(name: &str, value: &str) {
    let key =
        name.strip_prefix("SIGNALCAST_").unwrap_or_else(|| panic!("{name}: not a SIGNALCAST_ variable"));
    if matches!(key, "CONFIG" | "LOG") {
        return;
    }
    let key = key.to_lowercase().replace("__", ".");
    let value: figment::value::Value = value.parse().unwrap();
    Figment::new()
        .merge(Serialized::default(&key, value))
        .extract::<Config>()
        .unwrap_or_else(|e| panic!("{name} is not a valid signalcast setting: {e}"));
}

/// `signalcast serve` arguments as the manifests give them.
fn check_serve_args(args: &[&str]) {
    assert_eq!(args.first(), Some(&"serve"), "{args:?}");
    let role = args.iter().position(|a| *a == "--role").map(|i| args[i + 1]);
    assert!(matches!(role, Some("engine" | "gateway")), "scale-out nodes name their role: {args:?}");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(["--role", "--kafka-brokers", "--accounts-url"].contains(a), "unknown flag {a}");
    }
}

fn strings(y: &Yaml) -> Vec<&str> {
    y.as_vec().map(|v| v.iter().map(|x| s(x, "argument")).collect()).unwrap_or_default()
}

fn labels(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| h.iter().map(|(k, v)| (s(k, "label").to_owned(), s(v, "label value").to_owned())).collect())
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_parse_and_fit_together() {
    let dir = deploy().join("k8s");
    let kustomization = load(&dir.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> =
        strings(&kustomization["resources"]).into_iter().map(str::to_owned).collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization lists every manifest");

    let docs: Vec<Yaml> = files.iter().flat_map(|f| load(&dir.join(f))).collect();
    let mut by_kind: BTreeMap<String, Vec<&Yaml>> = BTreeMap::new();
    for d in &docs {
        s(&d["apiVersion"], "apiVersion");
        s(&d["metadata"]["name"], "metadata.name");
        by_kind.entry(s(&d["kind"], "kind").to_owned()).or_default().push(d);
    }
    for kind in
        ["Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    {
        assert!(by_kind.contains_key(kind), "a {kind}");
    }

    // Deployments: selectors match their pods; signalcast containers get real settings.
    let mut pods: BTreeMap<String, (BTreeMap<String, String>, BTreeSet<String>)> = BTreeMap::new();
    let mut roles = BTreeSet::new();
    for d in &by_kind["Deployment"] {
        let name = s(&d["metadata"]["name"], "name").to_owned();
        let pod_labels = labels(&d["spec"]["template"]["metadata"]["labels"]);
        for (k, v) in labels(&d["spec"]["selector"]["matchLabels"]) {
            assert_eq!(pod_labels.get(&k), Some(&v), "{name}: selector {k}={v} matches its pods");
        }
        let mut ports = BTreeSet::new();
        for c in d["spec"]["template"]["spec"]["containers"].as_vec().unwrap() {
            assert_eq!(s(&c["image"], "image"), IMAGE.as_str(), "{name}: the image compose builds");
            for p in c["ports"].as_vec().into_iter().flatten() {
                ports.insert(s(&p["name"], "port name").to_owned());
            }
            if strings(&c["command"]).first() == Some(&"signalcast-accounts") {
                continue;
            }
            let args = strings(&c["args"]);
            if args.first() == Some(&"archive") {
                // `signalcast archive`: its database from a secret, [kafka] from the file.
                let env: BTreeSet<&str> =
                    c["env"].as_vec().unwrap().iter().map(|e| s(&e["name"], "env name")).collect();
                assert!(env.contains("SIGNALCAST_ARCHIVE_DATABASE_URL") && env.contains("SIGNALCAST_CONFIG"));
                roles.insert("archive".to_owned());
                continue;
            }
            check_serve_args(&args);
            roles.insert(args[args.iter().position(|a| *a == "--role").unwrap() + 1].to_owned());
            for e in c["env"].as_vec().into_iter().flatten() {
                let env_name = s(&e["name"], "env name");
                match e["value"].as_str() {
                    Some(v) => check_setting(env_name, v),
                    // From a secret: the key must exist; any string is a valid value.
                    None => check_setting(env_name, "secret"),
                }
            }
        }
        pods.insert(name, (pod_labels, ports));
    }
    assert_eq!(roles, BTreeSet::from(["archive".to_owned(), "engine".to_owned(), "gateway".to_owned()]));

    // NetworkPolicies: the sidecar's port and the feed are fenced off, each policy
    // selecting the pods of a Deployment here (or PostgreSQL, which runs elsewhere).
    let policies = by_kind.get("NetworkPolicy").expect("NetworkPolicies");
    let mut fenced = BTreeSet::new();
    for p in policies {
        let name = s(&p["metadata"]["name"], "name");
        let selected = labels(&p["spec"]["podSelector"]["matchLabels"]);
        let app = selected.get("app.kubernetes.io/name").unwrap_or_else(|| panic!("{name}: selects an app"));
        assert!(!p["spec"]["ingress"].as_vec().unwrap().is_empty(), "{name}: allows someone in");
        if app != "signalcast-postgres" {
            let pod = pods.values().find(|(l, _)| l.get("app.kubernetes.io/name") == Some(app));
            assert!(pod.is_some(), "{name}: {app} is a Deployment here");
        }
        fenced.insert(app.clone());
    }
    for app in ["signalcast-accounts", "signalcast-engine", "signalcast-postgres"] {
        assert!(fenced.contains(app), "a NetworkPolicy for {app}");
    }

    let selects = |selector: &BTreeMap<String, String>| -> Vec<&String> {
        pods.iter()
            .filter(|(_, (l, _))| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
            .map(|(n, _)| n)
            .collect()
    };
    for svc in &by_kind["Service"] {
        let targets = selects(&labels(&svc["spec"]["selector"]));
        assert_eq!(targets.len(), 1, "{:?} selects one Deployment", svc["metadata"]["name"]);
        let ports = &pods[targets[0]].1;
        for p in svc["spec"]["ports"].as_vec().unwrap() {
            assert!(ports.contains(s(&p["targetPort"], "targetPort")), "{:?} targets a named port", p);
        }
    }
    for pdb in &by_kind["PodDisruptionBudget"] {
        assert_eq!(
            selects(&labels(&pdb["spec"]["selector"]["matchLabels"])).len(),
            1,
            "PDB selects one Deployment"
        );
    }
    for hpa in &by_kind["HorizontalPodAutoscaler"] {
        let target = s(&hpa["spec"]["scaleTargetRef"]["name"], "scaleTargetRef");
        assert!(pods.contains_key(target), "HPA scales an existing Deployment");
        assert_eq!(target, "signalcast-gateway", "gateways scale on connections");
        let metric = s(&hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], "metric");
        assert!(exported_metrics().contains(metric), "HPA metric {metric} is exported on /metrics");
    }

    // The shared signalcast.toml is a valid configuration with Kafka on.
    let cm = by_kind["ConfigMap"]
        .iter()
        .find(|c| c["metadata"]["name"].as_str() == Some("signalcast-config"))
        .unwrap();
    let path = common::temp_file("signalcast.toml", s(&cm["data"]["signalcast.toml"], "signalcast.toml"));
    let config = Config::load(Some(&path)).unwrap();
    assert!(config.kafka.enabled() && config.auth.accounts_url.is_some());

    // Prometheus scrapes the metrics listener, not the client port: the ConfigMap gives
    // /metrics a port of its own, every scraped pod names it, no Service forwards it,
    // and only a rule naming who may come in opens it.
    let listen = config.metrics_listen.as_deref().expect("metrics_listen in the ConfigMap");
    let metrics_port = listen.rsplit(':').next().unwrap().parse::<i64>().unwrap();
    let mut scraped = BTreeSet::new();
    for d in &by_kind["Deployment"] {
        let name = s(&d["metadata"]["name"], "name");
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        if annotations["prometheus.io/scrape"].as_str() != Some("true") {
            continue;
        }
        let port = s(&annotations["prometheus.io/port"], "prometheus.io/port");
        assert_eq!(port, metrics_port.to_string(), "{name} is scraped on metrics_listen");
        let named = d["spec"]["template"]["spec"]["containers"]
            .as_vec()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_vec().cloned().unwrap_or_default())
            .any(|p| {
                p["name"].as_str() == Some("metrics") && p["containerPort"].as_i64() == Some(metrics_port)
            });
        assert!(named, "{name} declares its metrics port");
        scraped.insert(name.to_owned());
    }
    assert!(scraped.contains("signalcast-gateway") && scraped.contains("signalcast-engine"), "{scraped:?}");
    for svc in &by_kind["Service"] {
        for p in svc["spec"]["ports"].as_vec().unwrap() {
            assert_ne!(
                p["targetPort"].as_str(),
                Some("metrics"),
                "{:?} forwards the metrics port",
                svc["metadata"]
            );
        }
    }
    for p in policies {
        for rule in p["spec"]["ingress"].as_vec().unwrap() {
            let opens_metrics = rule["ports"]
                .as_vec()
                .into_iter()
                .flatten()
                .any(|x| x["port"].as_i64() == Some(metrics_port));
            assert!(
                !opens_metrics || !rule["from"].is_badvalue(),
                "{:?}: the metrics port from anywhere",
                p["metadata"]
            );
        }
    }
}

/// Metric names the gateway exports (rendered by a real server).
fn exported_metrics() -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let server = common::start(common::config()).await;
        let text = server.app.metrics();
        server.shutdown().await;
        // Series names as samples carry them (a counter's with its `_total`).
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect()
    })
}

#[test]
fn compose_file_parses_and_its_settings_are_real_keys() {
    let compose = merged(&load(&deploy().join("compose.yaml")).remove(0));
    let services = compose["services"].as_hash().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| s(k, "service")).collect();
    for needed in ["postgres", "accounts", "kafka", "engine", "gateway"] {
        assert!(names.contains(needed), "compose runs {needed}");
    }
    for (name, svc) in services {
        let name = s(name, "service");
        if let Some(deps) = svc["depends_on"].as_hash() {
            for d in deps.keys() {
                assert!(names.contains(s(d, "dependency")), "{name} depends on a service that exists");
            }
        }
        let is_signalcast = svc["image"].as_str() == Some(IMAGE.as_str()) && svc["entrypoint"].is_badvalue();
        if !is_signalcast {
            continue;
        }
        check_serve_args(&strings(&svc["command"]));
        for (k, v) in svc["environment"].as_hash().into_iter().flatten() {
            let value = v.as_str().map(str::to_owned).or_else(|| v.as_i64().map(|n| n.to_string())).unwrap();
            check_setting(s(k, "variable"), &value);
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_ships_both_binaries() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().filter(|l| l.starts_with("FROM ")).count() >= 2, "multi-stage");
    let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as non-root: {user}");
    for bin in ["signalcast", "signalcast-accounts"] {
        assert!(text.contains(&format!("target/release/{bin}")), "ships {bin}");
    }
    assert!(text.contains("-p signalcast-gateway") && text.contains("-p signalcast-accounts"));
    // ENV applies to every container of the image: only real settings.
    let env_block: String = text
        .split("ENV ")
        .skip(1)
        .map(|rest| rest.split("\nUSER").next().unwrap_or_default().replace("\\\n", " "))
        .collect();
    let mut image_env = Vec::new();
    for pair in env_block.split_whitespace().filter(|p| p.starts_with("SIGNALCAST_")) {
        let (k, v) = pair.split_once('=').unwrap();
        check_setting(k, v);
        image_env.push((k.to_owned(), v.to_owned()));
    }
    // The image's default command is not the dev mode: with the image's environment and
    // no credentials, `serve` refuses (before binding) and names what is missing.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signalcast"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SIGNALCAST_")) {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .arg("serve")
        .envs(image_env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("the image's default command started without credentials");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refusing to listen on 0.0.0.0:8080") && err.contains("SIGNALCAST_AUTH__ACCOUNTS_URL"),
        "{err}"
    );
}

/// The image compose builds and the manifests run: one name, the crate's version.
static IMAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("signalcast:{}", env!("CARGO_PKG_VERSION")));

#[test]
fn the_manifests_configuration_has_no_public_credential() {
    let dir = deploy().join("k8s");
    let cm = load(&dir.join("configmap.yaml")).remove(0);
    let path = common::temp_file("signalcast.toml", s(&cm["data"]["signalcast.toml"], "signalcast.toml"));
    let mut config = Config::load(Some(&path)).unwrap();
    // The gateway token comes from the Secret (SIGNALCAST_AUTH__ACCOUNTS_GATEWAY_TOKEN).
    config.auth.accounts_gateway_token = "from-the-secret-0123456789".into();
    assert!(config.public_dev_credentials().is_empty(), "{:?}", config.public_dev_credentials());
    assert!(config.check_secrets().is_ok());
}

/// The metric names an expression reads, and the labels it groups by.
fn promql_names_and_labels(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    for prefix in ["signalcast_", "process_"] {
        let mut rest = expr;
        while let Some(at) = rest.find(prefix) {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    let labels = expr
        .split("by (")
        .skip(1)
        .flat_map(|g| g.split(')').next().unwrap_or_default().split(','))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    (names, labels)
}

#[test]
fn the_grafana_dashboard_reads_only_metrics_and_labels_that_exist() {
    let text = std::fs::read_to_string(deploy().join("grafana/signalcast.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exposition = {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let server = common::start(common::config()).await;
            let text = server.app.metrics();
            server.shutdown().await;
            text
        })
    };
    let families: BTreeSet<&str> =
        exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let mut read = BTreeSet::new();
    let panels = dash["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let (names, labels) = promql_names_and_labels(expr);
            assert!(!names.is_empty(), "{expr}: reads no metric signalcast exports");
            for name in &names {
                let family = ["_bucket", "_sum", "_count", "_total"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                    .unwrap_or(name);
                assert!(families.contains(family), "{expr}: {name} is not exported");
                // Labels are checked on the samples a single node has (Kafka's lag has
                // none until a consumer reports).
                let samples: Vec<&str> = exposition
                    .lines()
                    .filter(|l| l.starts_with(name.as_str()) && l[name.len()..].starts_with(['{', ' ']))
                    .collect();
                // `instance` and `job` are added by Prometheus to whatever it scrapes.
                for label in labels.iter().filter(|l| !["le", "instance", "job"].contains(&l.as_str())) {
                    let has =
                        samples.is_empty() || samples.iter().any(|l| l.contains(&format!("{label}=\"")));
                    assert!(has, "{expr}: {name} has no label {label}");
                }
                read.insert(family.to_owned());
                read.insert(name.clone());
            }
        }
    }
    // What an operator looks at first is all there.
    for needed in [
        "signalcast_connections",
        "signalcast_delivery_latency_seconds",
        "signalcast_signals_delivered_total",
        "signalcast_drops_total",
        "signalcast_slow_consumer_closes_total",
        "signalcast_kafka_consumer_lag",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(read.contains(needed), "the dashboard shows {needed}");
    }
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}

/// The status line of an upgrade request with `origin` to a server at `addr`.
async fn upgrade_status(addr: std::net::SocketAddr, token: &str, origin: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_origins_do_not_block_the_gateways_own_dashboard() {
    let cm = load(&deploy().join("k8s/configmap.yaml")).remove(0);
    let path = common::temp_file("signalcast.toml", s(&cm["data"]["signalcast.toml"], "signalcast.toml"));
    let origins = Config::load(Some(&path)).unwrap().allowed_origins;
    assert!(!origins.is_empty(), "the ConfigMap restricts browser origins");
    let mut config = common::config();
    config.allowed_origins = origins.clone();
    let server = common::start(config).await;
    let token = common::token(&server, "u-premium-1");
    let own = format!("http://{}", server.http_addr);
    assert!(
        upgrade_status(server.http_addr, &token, &own).await.contains("101"),
        "the dashboard's own origin"
    );
    assert!(upgrade_status(server.http_addr, &token, &origins[0]).await.contains("101"), "the listed app");
    assert!(upgrade_status(server.http_addr, &token, "https://evil.example").await.contains("403"));
    server.shutdown().await;
}
