//! The live dashboard at `/`: static files compiled into the binary (no build server,
//! nothing read from disk at run time) and the dev token picker of the embedded
//! default.
//!
//! The page (`assets/dashboard/`) talks to the gateway like any client, through the
//! TypeScript client (`assets/sdk/`, the build of `clients/typescript` copied by its
//! `npm run embed`; its tests fail when the copy is stale), and charts `/metrics`.

use std::time::Duration;

use serde_json::json;

use crate::auth::DevAuth;

/// A file of the dashboard: its body and content type.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: &[(&str, &str, &str)] = &[
    ("/", HTML, include_str!("../assets/dashboard/index.html")),
    ("/assets/dashboard/dashboard.js", JS, include_str!("../assets/dashboard/dashboard.js")),
    ("/assets/dashboard/dashboard.css", CSS, include_str!("../assets/dashboard/dashboard.css")),
    ("/assets/sdk/index.js", JS, include_str!("../assets/sdk/index.js")),
    ("/assets/sdk/client.js", JS, include_str!("../assets/sdk/client.js")),
    ("/assets/sdk/api.js", JS, include_str!("../assets/sdk/api.js")),
    ("/assets/sdk/backoff.js", JS, include_str!("../assets/sdk/backoff.js")),
    ("/assets/sdk/messages.js", JS, include_str!("../assets/sdk/messages.js")),
];

/// The page's own scripts and styles only; sockets and fetches to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn asset(path: &str) -> Option<Asset> {
    ASSETS.iter().find(|(p, _, _)| *p == path).map(|(_, content_type, body)| Asset { content_type, body })
}

/// `[{"user","tier","token"}]` for every account that may connect: what the page's
/// picker offers. Served only when the gateway signs with the public dev secret, whose
/// tokens anyone can mint anyway (`signalcast token`); never with the accounts sidecar
/// or an operator's own secret.
pub fn dev_tokens(auth: &DevAuth, ttl: Duration) -> String {
    let list: Vec<_> = auth
        .accounts()
        .iter()
        .filter(|a| !a.suspended)
        .filter_map(|a| {
            let token = auth.mint(&a.id, ttl).ok()?;
            Some(json!({"user": a.id, "tier": a.tier.as_str(), "token": token}))
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_embedded() {
        let page = asset("/").unwrap().body;
        for path in ["/assets/dashboard/dashboard.css", "/assets/dashboard/dashboard.js"] {
            assert!(page.contains(path), "{path}");
            assert!(asset(path).is_some(), "{path}");
        }
        // Every relative import of the client resolves to an embedded file.
        for (path, _, body) in ASSETS.iter().filter(|(p, _, _)| p.starts_with("/assets/sdk/")) {
            for import in body.split("from \"./").skip(1) {
                let file = import.split('"').next().unwrap_or_default();
                assert!(asset(&format!("/assets/sdk/{file}")).is_some(), "{path} imports {file}");
            }
        }
        assert!(asset("/assets/dashboard/dashboard.js").unwrap().body.contains("/assets/sdk/index.js"));
        assert!(asset("/nope").is_none());
    }
}
