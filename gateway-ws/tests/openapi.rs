//! docs/gateway-openapi.yaml and the gateway's API router describe the same API: every
//! route served under /v1 is documented with its method, and every documented operation
//! is served (`api::ROUTES` is the table the router dispatches on), and the router
//! answers each documented route (not 404).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use yaml_rust2::YamlLoader;

fn documented() -> BTreeSet<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/gateway-openapi.yaml");
    let doc = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap().remove(0);
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    doc["paths"]
        .as_hash()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            let path = path.as_str().unwrap().to_owned();
            ops.as_hash()
                .unwrap()
                .keys()
                .filter_map(|m| m.as_str().filter(|m| methods.contains(m)))
                .map(move |m| (m.to_owned(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_have_the_same_routes() {
    let documented = documented();
    let served: BTreeSet<(String, String)> =
        gateway::api::ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(served.len(), gateway::api::ROUTES.len(), "no route twice");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in docs/gateway-openapi.yaml: {undocumented:?}");
    assert!(unserved.is_empty(), "in docs/gateway-openapi.yaml but not served: {unserved:?}");

    // And the running server answers each of them (without credentials: 401, never 404).
    let server = common::start(common::config()).await;
    for (method, path) in &documented {
        let req = format!(
            "{} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            method.to_uppercase()
        );
        let answer = raw(server.http_addr, &req).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{method} {path}: {answer}");
        assert!(answer.contains("\"error\":\"unauthorized\""), "{answer}");
    }
    let answer =
        raw(server.http_addr, "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    server.shutdown().await;
}

async fn raw(addr: std::net::SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
