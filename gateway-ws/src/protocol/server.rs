//! What the server sends, as one typed set of messages (docs/protocol.md,
//! docs/asyncapi.yaml). Every reply and notice the hub writes is a [`ServerMessage`]
//! serialized here; the hot-path SIGNAL_UPDATE and PRICE_UPDATE are written by hand in
//! `engine::pipeline::encode` and tested there against their serde model.
//!
//! Adding a message type: a variant here (and, for a SYSTEM_MESSAGE or NOTIFICATION, a
//! variant of [`SystemEvent`] or [`Notice`]), its schema in docs/asyncapi.yaml, and a
//! line in `every_message_is_in_the_asyncapi_document` below.

use engine::model::{Category, Tier};
use serde::Serialize;

/// A server-to-client message (the `type` field names the variant).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ServerMessage<'a> {
    #[serde(rename = "SUBSCRIBED")]
    Subscribed {
        channel: &'a str,
        /// Signal channels only.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Present when the SUBSCRIBE asked to resume.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The subscription's filter, normalized (signal channels with one, and
        /// `prices_general` with a watchlist).
        #[serde(skip_serializing_if = "Option::is_none")]
        filter: Option<serde_json::Value>,
        /// `prices_general`: updates per second per symbol.
        #[serde(skip_serializing_if = "Option::is_none")]
        max_frequency: Option<u32>,
    },
    #[serde(rename = "UNSUBSCRIBED")]
    Unsubscribed { channel: &'a str, reason: UnsubscribeReason },
    #[serde(rename = "PONG")]
    Pong,
    #[serde(rename = "SYSTEM_MESSAGE")]
    System { data: SystemEvent<'a> },
    #[serde(rename = "NOTIFICATION")]
    Notification { channel: String, data: Notice },
    #[serde(rename = "USER_UPDATE")]
    UserUpdate { channel: String, data: UserRights },
    #[serde(rename = "ERROR")]
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    },
}

/// Why a subscription ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// The client asked.
    Client,
    /// The user's rights no longer cover the channel.
    Entitlement,
}

/// The `data` of a SYSTEM_MESSAGE.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SystemEvent<'a> {
    /// On open.
    Welcome {
        user: &'a str,
        tier: Tier,
        real_time: bool,
        token_expires_at: i64,
        heartbeat_interval_s: u64,
        server: &'static str,
    },
    /// Sixty seconds (by default) before the token's `exp`.
    TokenExpiring { token_expires_at: i64 },
    /// A REFRESH was accepted.
    TokenRefreshed { token_expires_at: i64 },
    /// The accounts feed changed the user's rights.
    EntitlementsChanged { tier: Tier },
    /// The account was suspended; close 4003 follows.
    Suspended { message: &'static str },
    /// The server is shutting down; close 1001 follows.
    Drain { message: &'static str },
}

/// The `data` of a NOTIFICATION on `user_<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    QuotaExhausted { message: &'static str },
}

/// The `data` of a USER_UPDATE: the rights now in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserRights {
    pub tier: Tier,
    pub categories: Vec<Category>,
    pub real_time: bool,
    pub max_signals_per_day: Option<u32>,
}

/// The server's name in the welcome.
pub const SERVER: &str = concat!("signalcast ", env!("CARGO_PKG_VERSION"));

impl ServerMessage<'_> {
    /// The JSON text of the message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::ErrorCode;
    use super::*;

    /// One of each message and event, as the server writes them.
    fn every_message() -> Vec<ServerMessage<'static>> {
        let rights = UserRights {
            tier: Tier::Basic,
            categories: vec![Category::Equity],
            real_time: false,
            max_signals_per_day: Some(200),
        };
        vec![
            ServerMessage::Subscribed {
                channel: "signals_premium",
                epoch: Some("d096268f9b799e7f".into()),
                seq: Some(15),
                recovered: Some(true),
                filter: None,
                max_frequency: None,
            },
            ServerMessage::Subscribed {
                channel: "prices_general",
                epoch: None,
                seq: None,
                recovered: None,
                filter: None,
                max_frequency: Some(50),
            },
            ServerMessage::Unsubscribed {
                channel: "signals_premium",
                reason: UnsubscribeReason::Entitlement,
            },
            ServerMessage::Pong,
            ServerMessage::System {
                data: SystemEvent::Welcome {
                    user: "u-premium-1",
                    tier: Tier::Premium,
                    real_time: true,
                    token_expires_at: 1_795_503_260,
                    heartbeat_interval_s: 30,
                    server: SERVER,
                },
            },
            ServerMessage::System { data: SystemEvent::TokenExpiring { token_expires_at: 1 } },
            ServerMessage::System { data: SystemEvent::TokenRefreshed { token_expires_at: 2 } },
            ServerMessage::System { data: SystemEvent::EntitlementsChanged { tier: Tier::Basic } },
            ServerMessage::System { data: SystemEvent::Suspended { message: "account suspended" } },
            ServerMessage::System { data: SystemEvent::Drain { message: "bye" } },
            ServerMessage::Notification {
                channel: "user_u1".into(),
                data: Notice::QuotaExhausted { message: "used up" },
            },
            ServerMessage::UserUpdate { channel: "user_u1".into(), data: rights },
            ServerMessage::Error {
                code: ErrorCode::Forbidden.as_str(),
                message: "no",
                channel: Some("signals_enterprise"),
            },
            ServerMessage::Error {
                code: ErrorCode::BadRequest.as_str(),
                message: "malformed",
                channel: None,
            },
        ]
    }

    #[test]
    fn the_wire_form_is_the_documented_one() {
        let j = |m: &ServerMessage<'_>| String::from_utf8(m.to_json()).unwrap();
        let all = every_message();
        assert_eq!(
            j(&all[0]),
            r#"{"type":"SUBSCRIBED","channel":"signals_premium","epoch":"d096268f9b799e7f","seq":15,"recovered":true}"#
        );
        assert_eq!(j(&all[1]), r#"{"type":"SUBSCRIBED","channel":"prices_general","max_frequency":50}"#);
        assert_eq!(
            j(&all[2]),
            r#"{"type":"UNSUBSCRIBED","channel":"signals_premium","reason":"entitlement"}"#
        );
        assert_eq!(j(&all[3]), r#"{"type":"PONG"}"#);
        assert_eq!(
            j(&all[4]),
            format!(
                r#"{{"type":"SYSTEM_MESSAGE","data":{{"event":"welcome","user":"u-premium-1","tier":"premium","real_time":true,"token_expires_at":1795503260,"heartbeat_interval_s":30,"server":"{SERVER}"}}}}"#
            )
        );
        assert_eq!(
            j(&all[11]),
            r#"{"type":"USER_UPDATE","channel":"user_u1","data":{"tier":"basic","categories":["equity"],"real_time":false,"max_signals_per_day":200}}"#
        );
        assert_eq!(j(&all[13]), r#"{"type":"ERROR","code":"bad_request","message":"malformed"}"#);
    }

    #[test]
    fn every_message_is_in_the_asyncapi_document() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml")).unwrap();
        for m in every_message() {
            let v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
            let kind = v["type"].as_str().unwrap();
            assert!(doc.contains(kind), "{kind} is not in docs/asyncapi.yaml");
            if let Some(event) = v["data"]["event"].as_str() {
                assert!(doc.contains(event), "event {event} ({kind}) is not in docs/asyncapi.yaml");
            }
            for field in
                v.as_object().unwrap().keys().chain(v["data"].as_object().into_iter().flat_map(|o| o.keys()))
            {
                assert!(
                    doc.contains(&format!("{field}:")),
                    "field {field} of {kind} is not in docs/asyncapi.yaml"
                );
            }
        }
    }
}
