//! `POST /webhooks/clerk`: Clerk's user events, signed the Svix way — HMAC-SHA256 over
//! `svix-id.svix-timestamp.body` with the base64 key after `whsec_`, any of several `v1,`
//! signatures, a 5-minute window, a constant-time compare. A replayed `svix-id` does nothing.

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{http::HttpState, service::users};

const TOLERANCE_SECS: i64 = 300;

/// Why a delivery was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    BadSecret,
    Stale,
    BadSignature,
}

/// Checks a delivery's signature against `secret` (`whsec_…`) at time `now` (unix seconds).
pub fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8], now: i64) -> Result<(), Refused> {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).map_err(|_| Refused::BadSecret)?;
    let sent: i64 = timestamp.parse().map_err(|_| Refused::Stale)?;
    if (now - sent).abs() > TOLERANCE_SECS {
        return Err(Refused::Stale);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| Refused::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let matches = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|candidate| bool::from(candidate.as_slice().ct_eq(&expected[..])));
    if matches { Ok(()) } else { Err(Refused::BadSignature) }
}

pub async fn receive(State(http): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &http.state.config.auth.clerk_webhook_secret else {
        return (StatusCode::NOT_FOUND, "Clerk webhooks are not configured (CLERK_WEBHOOK_SECRET).").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) =
        (header("svix-id"), header("svix-timestamp"), header("svix-signature"))
    else {
        return reply(StatusCode::BAD_REQUEST, "svix-id, svix-timestamp and svix-signature are required");
    };
    if let Err(refused) = verify(secret, id, timestamp, signatures, &body, chrono::Utc::now().timestamp()) {
        tracing::warn!(?refused, svix_id = id, "refused a Clerk webhook");
        return match refused {
            Refused::BadSecret => reply(StatusCode::INTERNAL_SERVER_ERROR, "the webhook secret is not a whsec_ key"),
            Refused::Stale => reply(StatusCode::UNAUTHORIZED, "the timestamp is outside the 5-minute window"),
            Refused::BadSignature => reply(StatusCode::UNAUTHORIZED, "the signature does not verify"),
        };
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    match users::apply_clerk_event(&http.state.db, &http.state.audit, &http.state.caches, id, &event).await {
        Ok(outcome) => (StatusCode::OK, axum::Json(json!({"status": outcome}))).into_response(),
        Err(err) => {
            tracing::error!(error = %err, svix_id = id, "cannot apply a Clerk webhook");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "the event could not be applied; Clerk will retry")
        }
    }
}

fn reply(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], id: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn svix_signatures_verify_with_the_right_key_only() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", STANDARD.encode(key));
        let body = br#"{"type":"user.created"}"#;
        let good = sign(key, "msg_1", "1000", body);
        assert_eq!(verify(&secret, "msg_1", "1000", &good, body, 1000), Ok(()));
        assert_eq!(verify(&secret, "msg_1", "1000", &format!("v1,AAAA {good}"), body, 1100), Ok(()), "any of several");
        assert_eq!(verify(&secret, "msg_1", "1000", &good, b"{}", 1000), Err(Refused::BadSignature), "tampered");
        assert_eq!(verify(&secret, "msg_1", "1000", &good, body, 1000 + 301), Err(Refused::Stale));
        let other = format!("whsec_{}", STANDARD.encode(b"another key, another key, anoth"));
        assert_eq!(verify(&other, "msg_1", "1000", &good, body, 1000), Err(Refused::BadSignature));
    }
}
