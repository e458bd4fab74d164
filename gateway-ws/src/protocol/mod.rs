//! The client protocol (docs/protocol.md): JSON text messages both ways.
//!
//! Parsing what clients send and writing the replies; the signal and price updates
//! themselves are encoded by the engine, once per channel.

mod server;

pub use server::{Notice, SERVER, ServerMessage, SystemEvent, UnsubscribeReason, UserRights};

pub mod filter;

use serde::Deserialize;

use engine::channels::{ChannelName, Epoch, Resume};

/// ERROR `code` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    UnknownChannel,
    Forbidden,
    RateLimited,
    TooManySubscriptions,
    QuotaExhausted,
    Internal,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::UnknownChannel => "unknown_channel",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::QuotaExhausted => "quota_exhausted",
            Self::Internal => "internal",
        }
    }
}

/// A refusal to send back as ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub channel: Option<String>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), channel: None }
    }

    #[must_use]
    pub fn on(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }
}

/// A SUBSCRIBE's `since` and `epoch`, as the client sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeAsk {
    pub since: u64,
    /// `None`: a string that is no epoch this server writes (not 16 hex digits). It is
    /// still a well-formed request, answered SUBSCRIBED with `recovered: false`, like
    /// any other epoch that is not the channel's.
    pub epoch: Option<Epoch>,
}

impl ResumeAsk {
    /// The resume to ask a log whose epoch is `current` for: an unparseable epoch
    /// becomes one that cannot match it.
    pub fn against(self, current: Epoch) -> Resume {
        Resume { since: self.since, epoch: self.epoch.unwrap_or(Epoch(!current.0)) }
    }
}

/// The rates a `prices_general` subscriber may ask for (`max_frequency`), in updates
/// per second per symbol. The highest is one update per price turn (20 ms).
pub const PRICE_RATES: [u32; 6] = [1, 2, 5, 10, 25, 50];

/// The index in [`PRICE_RATES`] of the highest rate not above `asked` (at least the
/// lowest).
pub fn price_rate_index(asked: f64) -> usize {
    PRICE_RATES.iter().rposition(|r| f64::from(*r) <= asked).unwrap_or(0)
}

/// What a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// `filter`: the SUBSCRIBE's `filter` object as sent, checked by the hub (which
    /// knows the user's limits and categories).
    Subscribe {
        channel: ChannelName,
        resume: Option<ResumeAsk>,
        filter: Option<serde_json::Value>,
        /// The last N matching messages, sent before live ones.
        snapshot: Option<u32>,
        /// `prices_general`: the index in [`PRICE_RATES`] of the rate asked for.
        max_frequency: Option<usize>,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    Ping,
    Refresh {
        token: String,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    token: Option<String>,
    filter: Option<serde_json::Value>,
    snapshot: Option<u32>,
    max_frequency: Option<f64>,
}

/// Parses one client message. Unknown fields are ignored (clients may add their own,
/// such as a request id); missing or mistyped ones are `bad_request`.
pub fn parse(text: &str) -> Result<ClientMessage, Refusal> {
    let raw: Raw = serde_json::from_str(text)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("malformed message: {e}")))?;
    let channel = |raw: &Raw| -> Result<ChannelName, Refusal> {
        let name = raw
            .channel
            .as_deref()
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, format!("{} needs a channel", raw.kind)))?;
        name.parse().map_err(|e: engine::channels::ChannelNameError| {
            Refusal::new(ErrorCode::UnknownChannel, e.to_string())
                .on(name.chars().take(64).collect::<String>())
        })
    };
    match raw.kind.as_str() {
        "SUBSCRIBE" => {
            let ch = channel(&raw)?;
            let resume = match (raw.since, raw.epoch.as_deref()) {
                (None, None) => None,
                (Some(since), Some(e)) => Some(ResumeAsk { since, epoch: epoch_as_written(e) }),
                _ => {
                    return Err(
                        Refusal::new(ErrorCode::BadRequest, "since and epoch go together").on(ch.to_string())
                    );
                }
            };
            if raw.filter.is_some() && matches!(ch, ChannelName::User(_)) {
                return Err(
                    Refusal::new(ErrorCode::BadRequest, "user channels take no filter").on(ch.to_string())
                );
            }
            let max_frequency = match raw.max_frequency {
                None => None,
                Some(_) if ch != ChannelName::Prices => {
                    let r = Refusal::new(ErrorCode::BadRequest, "only prices_general has a max_frequency");
                    return Err(r.on(ch.to_string()));
                }
                Some(f) if f.is_finite() && f > 0.0 => Some(price_rate_index(f)),
                Some(f) => {
                    let r = Refusal::new(
                        ErrorCode::BadRequest,
                        format!("max_frequency is updates per second, more than 0 (got {f})"),
                    );
                    return Err(r.on(ch.to_string()));
                }
            };
            if raw.snapshot.is_some() && !matches!(ch, ChannelName::Signals(_)) {
                let r = Refusal::new(ErrorCode::BadRequest, "only signal channels have a snapshot");
                return Err(r.on(ch.to_string()));
            }
            if raw.snapshot.is_some() && resume.is_some() {
                let r = Refusal::new(ErrorCode::BadRequest, "snapshot and since do not go together");
                return Err(r.on(ch.to_string()));
            }
            Ok(ClientMessage::Subscribe {
                channel: ch,
                resume,
                filter: raw.filter,
                snapshot: raw.snapshot,
                max_frequency,
            })
        }
        "UNSUBSCRIBE" => Ok(ClientMessage::Unsubscribe { channel: channel(&raw)? }),
        "PING" => Ok(ClientMessage::Ping),
        "REFRESH" => raw
            .token
            .map(|token| ClientMessage::Refresh { token })
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "REFRESH needs a token")),
        other => {
            Err(Refusal::new(ErrorCode::UnknownType, format!("unknown message type {:?}", truncate(other))))
        }
    }
}

/// The epoch an epoch string names, if it is one as the server writes them (16
/// lowercase hex digits); any other string is no channel's epoch.
fn epoch_as_written(s: &str) -> Option<Epoch> {
    let canonical = s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    canonical.then(|| s.parse().ok()).flatten()
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

pub fn error(r: &Refusal) -> Vec<u8> {
    ServerMessage::Error { code: r.code.as_str(), message: &r.message, channel: r.channel.as_deref() }
        .to_json()
}

/// SUBSCRIBED for a signal channel (with epoch and head seq).
pub fn subscribed_signals(
    channel: &ChannelName,
    epoch: Epoch,
    head: u64,
    recovered: Option<bool>,
    filter: Option<&filter::Filter>,
) -> Vec<u8> {
    let channel = channel.to_string();
    ServerMessage::Subscribed {
        channel: &channel,
        epoch: Some(epoch.to_string()),
        seq: Some(head),
        recovered,
        filter: filter.map(filter::Filter::to_json),
        max_frequency: None,
    }
    .to_json()
}

/// SUBSCRIBED for a channel without seq; a resume request cannot be honoured there.
pub fn subscribed_plain(channel: &ChannelName, resume_asked: bool) -> Vec<u8> {
    let channel = channel.to_string();
    let recovered = resume_asked.then_some(false);
    ServerMessage::Subscribed {
        channel: &channel,
        epoch: None,
        seq: None,
        recovered,
        filter: None,
        max_frequency: None,
    }
    .to_json()
}

/// SUBSCRIBED for `prices_general`: the watchlist (none: every symbol) and the rate.
pub fn subscribed_prices(resume_asked: bool, watch: Option<&filter::Filter>, rate: u32) -> Vec<u8> {
    ServerMessage::Subscribed {
        channel: "prices_general",
        epoch: None,
        seq: None,
        recovered: resume_asked.then_some(false),
        filter: watch.map(filter::Filter::to_json),
        max_frequency: Some(rate),
    }
    .to_json()
}

pub fn unsubscribed(channel: &ChannelName, reason: UnsubscribeReason) -> Vec<u8> {
    ServerMessage::Unsubscribed { channel: &channel.to_string(), reason }.to_json()
}

pub const PONG: &[u8] = br#"{"type":"PONG"}"#;

pub fn system(data: SystemEvent<'_>) -> Vec<u8> {
    ServerMessage::System { data }.to_json()
}

/// A USER_UPDATE on `user_<id>`: the entitlements now in force.
pub fn user_update(user: &str, data: UserRights) -> Vec<u8> {
    ServerMessage::UserUpdate { channel: format!("user_{user}"), data }.to_json()
}

/// A NOTIFICATION on `user_<id>`.
pub fn notification(user: &str, data: Notice) -> Vec<u8> {
    ServerMessage::Notification { channel: format!("user_{user}"), data }.to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::model::Tier;

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            parse(
                r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":41,"epoch":"00000000000000ff","id":7}"#
            ),
            Ok(ClientMessage::Subscribe {
                filter: None,
                snapshot: None,
                max_frequency: None,
                channel: ChannelName::Signals(Tier::Premium),
                resume: Some(ResumeAsk { since: 41, epoch: Some(Epoch(255)) })
            })
        );
        // Any other string is an epoch that is not the channel's: not a bad request.
        for epoch in
            ["", "yesterday", "00000000000000fff", "zzzzzzzzzzzzzzzz", "00000000000000FF", "+00000000000000f"]
        {
            let text =
                format!(r#"{{"type":"SUBSCRIBE","channel":"signals_free","since":3,"epoch":"{epoch}"}}"#);
            let Ok(ClientMessage::Subscribe { resume: Some(ask), .. }) = parse(&text) else {
                panic!("{text} refused")
            };
            assert_eq!(ask.epoch, None, "{text}");
            assert_ne!(ask.against(Epoch(7)).epoch, Epoch(7), "never matches the channel's epoch");
        }
        assert_eq!(
            parse(r#"{"type":"SUBSCRIBE","channel":"prices_general"}"#),
            Ok(ClientMessage::Subscribe {
                channel: ChannelName::Prices,
                resume: None,
                filter: None,
                snapshot: None,
                max_frequency: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"UNSUBSCRIBE","channel":"user_u1"}"#),
            Ok(ClientMessage::Unsubscribe { channel: ChannelName::User("u1".into()) })
        );
        assert_eq!(parse(r#"{"type":"PING"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(r#"{"type":"REFRESH","token":"t"}"#),
            Ok(ClientMessage::Refresh { token: "t".into() })
        );
    }

    #[test]
    fn pong_is_the_typed_pong() {
        assert_eq!(PONG, ServerMessage::Pong.to_json().as_slice());
    }

    #[test]
    fn refusals_carry_the_right_code() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::BadRequest);
        assert_eq!(code("[]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"channel":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"SUBSCRIBE"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":4}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":-1,"epoch":"0"}"#),
            ErrorCode::BadRequest
        );
        // Wrong JSON types stay bad requests.
        assert_eq!(
            code(r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":4,"epoch":17}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(
                r#"{"type":"SUBSCRIBE","channel":"signals_premium","since":"4","epoch":"00000000000000ff"}"#
            ),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"type":"SUBSCRIBE","channel":"signals_gold"}"#), ErrorCode::UnknownChannel);
        assert_eq!(code(r#"{"type":"DANCE"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"REFRESH"}"#), ErrorCode::BadRequest);
        let e: serde_json::Value =
            serde_json::from_slice(&error(&parse(r#"{"type":"SUBSCRIBE","channel":"nope"}"#).unwrap_err()))
                .unwrap();
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["channel"].as_str()),
            (Some("ERROR"), Some("unknown_channel"), Some("nope"))
        );
    }
}
