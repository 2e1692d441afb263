//! The words of the two subprotocols: `graphql-transport-ws` and the legacy `graphql-ws`
//! (Apollo's subscriptions-transport-ws). The connection loop reads every client message as an
//! [`Incoming`] and asks [`Protocol`] how to word what it sends; the rules are the same for both
//! (docs/transport.md).

use serde::Deserialize;
use serde_json::{Value, json};

pub const TRANSPORT_WS: &str = "graphql-transport-ws";
pub const LEGACY_WS: &str = "graphql-ws";

/// The subprotocol a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `graphql-transport-ws`.
    Transport,
    /// The legacy `graphql-ws`.
    Legacy,
}

/// A client message, in either protocol.
pub enum Incoming {
    Init(Option<Value>),
    /// `graphql-transport-ws` only.
    Ping(Option<Value>),
    Pong,
    /// `subscribe`; the legacy `start`.
    Subscribe {
        id: String,
        payload: SubscribePayload,
    },
    /// `complete`; the legacy `stop`.
    Complete {
        id: String,
    },
    /// The legacy `connection_terminate`.
    Terminate,
}

/// What an operation asks for.
#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct SubscribePayload {
    pub query: String,
    #[serde(default)]
    pub operation_name: Option<String>,
    #[serde(default)]
    pub variables: Option<Value>,
    #[serde(default)]
    pub extensions: Option<Value>,
}

/// A `graphql-transport-ws` client message.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TransportMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: SubscribePayload,
    },
    Complete {
        id: String,
    },
}

/// A legacy `graphql-ws` client message.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LegacyMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Start {
        id: String,
        payload: SubscribePayload,
    },
    Stop {
        id: String,
    },
    ConnectionTerminate,
}

impl Protocol {
    /// The protocol of a `Sec-WebSocket-Protocol` name.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            TRANSPORT_WS => Some(Self::Transport),
            LEGACY_WS => Some(Self::Legacy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Transport => TRANSPORT_WS,
            Self::Legacy => LEGACY_WS,
        }
    }

    /// The type of the message that carries a response: `next`, or the legacy `data`.
    pub fn result_type(self) -> &'static str {
        match self {
            Self::Transport => "next",
            Self::Legacy => "data",
        }
    }

    /// The server's keepalive: a `ping`, or the legacy `ka`.
    pub fn keepalive(self) -> Value {
        match self {
            Self::Transport => json!({"type": "ping"}),
            Self::Legacy => json!({"type": "ka"}),
        }
    }

    /// Reads a client message; `None` when it is not one of this protocol's.
    pub fn read(self, text: &str) -> Option<Incoming> {
        Some(match self {
            Self::Transport => match serde_json::from_str(text).ok()? {
                TransportMessage::ConnectionInit { payload } => Incoming::Init(payload),
                TransportMessage::Ping { payload } => Incoming::Ping(payload),
                TransportMessage::Pong { .. } => Incoming::Pong,
                TransportMessage::Subscribe { id, payload } => Incoming::Subscribe { id, payload },
                TransportMessage::Complete { id } => Incoming::Complete { id },
            },
            Self::Legacy => match serde_json::from_str(text).ok()? {
                LegacyMessage::ConnectionInit { payload } => Incoming::Init(payload),
                LegacyMessage::Start { id, payload } => Incoming::Subscribe { id, payload },
                LegacyMessage::Stop { id } => Incoming::Complete { id },
                LegacyMessage::ConnectionTerminate => Incoming::Terminate,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Incoming, Protocol};

    #[test]
    fn each_protocol_reads_its_own_words_only() {
        let start = r#"{"type": "start", "id": "1", "payload": {"query": "{ a }"}}"#;
        let subscribe = r#"{"type": "subscribe", "id": "1", "payload": {"query": "{ a }"}}"#;
        assert!(matches!(Protocol::Legacy.read(start), Some(Incoming::Subscribe { id, .. }) if id == "1"));
        assert!(Protocol::Transport.read(start).is_none());
        assert!(matches!(Protocol::Transport.read(subscribe), Some(Incoming::Subscribe { .. })));
        assert!(Protocol::Legacy.read(subscribe).is_none());
        assert!(matches!(Protocol::Legacy.read(r#"{"type": "stop", "id": "1"}"#), Some(Incoming::Complete { .. })));
        assert!(matches!(Protocol::Legacy.read(r#"{"type": "connection_terminate"}"#), Some(Incoming::Terminate)));
        assert!(Protocol::Legacy.read(r#"{"type": "ping"}"#).is_none());
        let no_query = r#"{"type": "start", "id": "1", "payload": {"variables": {}}}"#;
        assert!(Protocol::Legacy.read(no_query).is_none());
    }
}
