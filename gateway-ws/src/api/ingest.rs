//! `POST /v1/signals` and `POST /v1/ticks`: publishing without the Rust client or Kafka.
//!
//! The producer's id and API key come as HTTP Basic credentials, checked per request
//! against the producers file or the accounts sidecar (a revoked key stops working at
//! once). The body is one JSON object (`application/json`) or JSON lines
//! (`application/x-ndjson`), each decoded and validated as a Kafka JSON record is. The
//! valid ones go through the same pipeline as the TCP feed's (de-duplication by id,
//! confidence and expiry, routing), and the answer comes once they are stored: a result
//! per item, `accepted` (routed and stored), `duplicate` (an id already routed:
//! a retry that is safe to make), or `refused` with a code.

use std::sync::Arc;
use std::time::Instant;

use engine::kafka::value::{ContentType, decode_signal, decode_tick};
use engine::model::UnixNanos;
use engine::pipeline::{Done, DropReason, IngestItem, Origin, Outcome, SignalItem, Verdict};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use rkyv::util::AlignedVec;
use serde_json::{Value, json};

use super::{Body, error, json, too_many};
use crate::server::App;

/// What one posted item became.
enum Result_ {
    Pending(Option<String>, Arc<Verdict>),
    Tick,
    Refused { id: Option<String>, code: &'static str, message: String },
}

/// Serves one POST; `ticks` for `/v1/ticks`.
pub async fn serve(req: Request<Incoming>, app: &Arc<App>, ticks: bool) -> Response<Body> {
    let Some(ingest) = app.ingest.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "gateway_node",
            "this node runs the gateway role; publish to an engine node",
        );
    };
    let Some((producer, key)) = basic(req.headers().get(AUTHORIZATION)) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the producer's id and API key as HTTP Basic credentials (curl -u ID:KEY)",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"signalcast producers\""),
        );
        return r;
    };
    if !ingest.producers.verify(&producer, &key) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown producer or wrong key");
    }
    if ticks && !ingest.producers.may_send_ticks(&producer) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden_tick",
            &format!("producer {producer:?} may not send ticks"),
        );
    }
    let lines = match req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.starts_with("application/json") => false,
        Some(ct) if ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl") => true,
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type",
                &format!(
                    "content-type {other:?}: use application/json (one object) or application/x-ndjson (JSON lines)"
                ),
            );
        }
    };
    let limit = ingest.config.max_body_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("bodies are at most {limit} bytes"),
            );
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_body", "the body could not be read"),
    };
    let items: Vec<&[u8]> = if lines {
        body.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).collect()
    } else {
        vec![&body[..]]
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "empty", "no item in the body");
    }
    if items.len() > ingest.config.max_items {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_items",
            &format!("at most {} items per request", ingest.config.max_items),
        );
    }
    let per_sec = ingest.config.items_per_sec.max(1) as f64;
    if let Err(wait) = app.api_rates.take(
        &format!("producer:{producer}"),
        items.len() as f64,
        per_sec,
        per_sec,
        Instant::now(),
    ) {
        return too_many("rate_limited", &format!("at most {per_sec} items a second per producer"), wait);
    }
    let producer: Arc<str> = Arc::from(producer.as_str());
    let mut scratch = AlignedVec::new();
    let mut results = Vec::with_capacity(items.len());
    for raw in items {
        let now = UnixNanos::now();
        let result = if ticks {
            match decode_tick(raw, ContentType::Json, &mut scratch) {
                Ok(t) => {
                    if ingest.queue.send(IngestItem::Tick(t)).await.is_err() {
                        return stopped();
                    }
                    Result_::Tick
                }
                Err(e) => Result_::Refused { id: None, code: e.code(), message: e.to_string() },
            }
        } else {
            match decode_signal(raw, ContentType::Json, app.engine.config.max_analysis_bytes, &mut scratch) {
                Ok((signal, _)) if !ingest.producers.may_publish_as(&producer, &signal.source_id) => {
                    Result_::Refused {
                        id: Some(signal.id.hyphenated().to_string()),
                        code: "foreign_source",
                        message: format!(
                            "producer {producer:?} is not bound to source {} (the operator binds producers to their sources)",
                            signal.source_id
                        ),
                    }
                }
                Ok((signal, _)) => {
                    let id = signal.id.hyphenated().to_string();
                    let verdict = Verdict::new(Arc::clone(&producer));
                    let item = SignalItem {
                        origin: Origin::Local,
                        signal,
                        ingest_ts: now,
                        sent_ts: None,
                        verdict: Some(Arc::clone(&verdict)),
                    };
                    // Waits while the queue is full: a fast producer is slowed here too.
                    if ingest.queue.send(IngestItem::Signal(Box::new(item))).await.is_err() {
                        return stopped();
                    }
                    Result_::Pending(Some(id), verdict)
                }
                Err(e) => Result_::Refused { id: id_of(raw), code: e.code(), message: e.to_string() },
            }
        };
        results.push(result);
    }
    // The stage runs this once everything above is routed and stored.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let done = Done(Arc::new(move || {
        if let Some(tx) = tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = tx.send(());
        }
    }));
    if ingest.queue.send(IngestItem::Done(done)).await.is_err() || rx.await.is_err() {
        return stopped();
    }
    let out: Vec<Value> = results.into_iter().map(result_json).collect();
    json(StatusCode::OK, json!({ "results": out }).to_string())
}

fn result_json(r: Result_) -> Value {
    match r {
        Result_::Tick => json!({"status": "accepted"}),
        Result_::Refused { id, code, message } => {
            json!({"id": id, "status": "refused", "error": code, "message": message})
        }
        Result_::Pending(id, verdict) => match verdict.outcome() {
            Some(Outcome::Routed) => json!({"id": id, "status": "accepted"}),
            Some(Outcome::Dropped(DropReason::DuplicateId | DropReason::DuplicateSeq)) => {
                json!({"id": id, "status": "duplicate"})
            }
            Some(Outcome::Dropped(reason)) => json!({
                "id": id, "status": "refused", "error": reason.as_str(), "message": refusal(reason)
            }),
            None => {
                json!({"id": id, "status": "refused", "error": "internal", "message": "no decision was recorded"})
            }
        },
    }
}

/// What a producer reads for a signal the pipeline did not route.
fn refusal(reason: DropReason) -> &'static str {
    match reason {
        DropReason::BelowConfidence => "confidence at or below the global bar (docs/protocol.md, Tiers)",
        DropReason::Expired => "expires_at has passed",
        DropReason::NoTier => "no tier's channel takes this confidence",
        DropReason::MissingTick => "no market tick for this symbol yet (engine.missing_tick = \"drop\")",
        _ => "dropped by the pipeline",
    }
}

fn stopped() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "draining", "the engine is stopping; send again elsewhere")
}

/// The `id` of an item that failed to decode, when it has one (for its result).
fn id_of(raw: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    v.get("id")?.as_str().map(|s| s.chars().take(64).collect())
}

/// `Authorization: Basic base64(id:key)`.
fn basic(v: Option<&hyper::header::HeaderValue>) -> Option<(String, String)> {
    use base64::Engine as _;
    let b64 = v?.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()?;
    let (id, key) = text.split_once(':')?;
    (!id.is_empty() && !key.is_empty()).then(|| (id.to_owned(), key.to_owned()))
}
