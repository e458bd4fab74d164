//! What checking a connection's token costs, before the upgrade (figures go to
//! docs/PERFORMANCE.md).
//!
//! ```text
//! cargo bench -p signalcast-gateway --bench tokens
//! ```
//!
//! - `hs256`: a token of the embedded default (HS256 with the dev secret), checked by
//!   `DevAuth`, as every connection of the `connect` benchmark is.
//! - `eddsa`: a token as the accounts sidecar signs them (Ed25519), checked with the
//!   validation the gateway's sidecar link uses (audience, `exp`, `nbf`, 5 s leeway).
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use gateway::auth::{Authenticator, Claims, DevAuth};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn tokens(c: &mut Criterion) {
    let auth = gateway::server::dev_auth(&gateway::Config::default()).unwrap();
    let account = auth.accounts().get("u-premium-1").unwrap();
    let now = engine::model::UnixNanos::now().0 / 1_000_000_000;
    let claims = DevAuth::claims_for(account, now, Duration::from_secs(3600));
    let mut g = c.benchmark_group("token");
    let hs256 = auth.sign(&claims).unwrap();
    g.bench_function("hs256", |b| b.iter(|| auth.authenticate(std::hint::black_box(&hs256)).unwrap()));

    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let signing = EncodingKey::from_ed_der(&pair.serialize_der());
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
    let verifying = DecodingKey::from_ed_components(&x).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("bench".into());
    let eddsa = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[gateway::auth::AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 5;
    validation.validate_nbf = true;
    g.bench_function("eddsa", |b| {
        b.iter(|| {
            let token = std::hint::black_box(&eddsa);
            let header = jsonwebtoken::decode_header(token).unwrap();
            assert_eq!(header.kid.as_deref(), Some("bench"));
            jsonwebtoken::decode::<Claims>(token, &verifying, &validation).unwrap().claims
        })
    });
    g.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
