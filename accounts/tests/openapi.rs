//! docs/openapi.yaml and the sidecar's router describe the same API: every route the
//! router serves is documented, with its method, and every documented operation is
//! served. (`api::ROUTES` is the table the router is built from.)
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use yaml_rust2::YamlLoader;

#[test]
fn the_openapi_document_and_the_router_have_the_same_routes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let doc = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap().remove(0);
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    let documented: BTreeSet<(String, String)> = doc["paths"]
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
        .collect();
    let served: BTreeSet<(String, String)> =
        accounts::api::ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(served.len(), accounts::api::ROUTES.len(), "no route twice");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "served but not in docs/openapi.yaml: {undocumented:?}");
    assert!(unserved.is_empty(), "in docs/openapi.yaml but not served: {unserved:?}");
}
