//! The D1 bridge's HTTP client: signed `POST /query` and `POST /batch` (d1-bridge/README.md),
//! the bridge's error answers as [`Error`], and bounded retries of reads that D1 or the network
//! report as transient. Writes are sent once: the caller decides whether to send them again.

use std::{fmt, time::Duration};

use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sha2::Sha256;

/// How long a request may take: D1 allows a query 30 s, the rest is the way there and back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a read that failed transiently (1 + 4 retries), sleeping a random 0–`RETRY_BASE
/// × 2^n` between them (full jitter, at most 1.5 s in all).
const READ_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(100);
/// The bridge refuses shorter secrets (d1-bridge/src/index.js, MIN_SECRET_LENGTH).
pub const MIN_SECRET_LENGTH: usize = 32;

/// `ENSEMBLE_D1_SECRET`: never shown, in `Debug` or anywhere else.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Result<Self, String> {
        if secret.chars().count() < MIN_SECRET_LENGTH {
            return Err(format!(
                "ENSEMBLE_D1_SECRET is too short: the bridge accepts only secrets of at least \
                 {MIN_SECRET_LENGTH} characters (`openssl rand -hex 32` makes one)"
            ));
        }
        Ok(Self(secret))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a request to the bridge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not sent: the statement is over one of D1's limits, or a value has no JSON form.
    #[error("{0}")]
    Refused(String),
    /// No answer from the bridge: connection refused, DNS, TLS, timeout, or the Worker's host
    /// answering a bare 502–504 for it (the request may have arrived and been applied).
    #[error("cannot reach the D1 bridge at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// `401`: the signature does not match (a wrong `ENSEMBLE_D1_SECRET`) or the clocks differ.
    #[error(
        "the D1 bridge at {url} refused the request's signature ({message}): ENSEMBLE_D1_SECRET is \
         not the secret the bridge was given, or this machine's clock is off by over 5 minutes"
    )]
    Unauthorized { url: String, message: String },
    /// The bridge's own `503` OVERLOADED or UNAVAILABLE: D1 did not run it; worth another attempt.
    #[error("D1 is unavailable ({code}): {message}")]
    Transient { code: String, message: String },
    /// Any other error the bridge answered (`SQL`, `CONSTRAINT`, `BAD_REQUEST`, `INTERNAL`…).
    #[error("D1 refused the statement ({code}): {message}")]
    Bridge { code: String, message: String, index: Option<usize> },
    /// An answer that is not the bridge's (a proxy's error page, a different service).
    #[error("the D1 bridge at {url} answered something else than the bridge's protocol: {detail}")]
    Protocol { url: String, detail: String },
}

impl Error {
    /// Worth sending the same read again.
    fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Unreachable { .. })
    }
}

/// A result set of `/query`: the column names in order, and the rows' values in that order.
#[derive(Debug, Deserialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Json>>,
}

/// The answer to a `/batch`: one result per statement, or none for a replay whose first answer
/// was not kept (applied once, results unknown).
#[derive(Debug, Deserialize)]
pub struct Batched {
    pub results: Option<Vec<BatchStep>>,
    #[serde(default)]
    pub replayed: bool,
}

/// One statement of a `/batch`: the rows it answered (`RETURNING`, a query), each with its
/// columns in order, and what it changed.
#[derive(Debug, Default, Deserialize)]
pub struct BatchStep {
    #[serde(default)]
    pub results: Vec<NamedRow>,
    #[serde(default)]
    pub meta: Meta,
}

/// A row of a `/batch` result: D1 answers objects; their keys keep the order D1 gave them.
#[derive(Debug, Default)]
pub struct NamedRow(pub Vec<(String, Json)>);

impl<'de> Deserialize<'de> for NamedRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = NamedRow;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row as an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NamedRow, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, Json>()? {
                    fields.push(field);
                }
                Ok(NamedRow(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// What one statement of a `/batch` changed.
#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub changes: u64,
    #[serde(default)]
    pub last_row_id: i64,
}

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `http(s)://host[:port][/path]`: where the bridge answers, with no trailing `/`.
    base: String,
    secret: Secret,
}

impl Client {
    /// A client of the bridge at `url` (`d1+http://…` or `d1+https://…`), at the root of its host or
    /// under a path when the Worker is mounted on a route (`d1+https://example.com/ensemble-d1`).
    pub fn new(url: &str, secret: Secret) -> Result<Self, String> {
        let http_url = url.strip_prefix("d1+").filter(|u| u.starts_with("http://") || u.starts_with("https://"));
        let parsed = http_url
            .and_then(|u| reqwest::Url::parse(u).ok())
            .filter(|u| u.host_str().is_some())
            .ok_or_else(|| format!("`{url}` is not a D1 bridge URL like d1+https://bridge.example.workers.dev"))?;
        if parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(format!(
                "`{url}` has a query or credentials: the bridge is named by its URL alone \
                 (d1+https://<host>[/path]), and signs with ENSEMBLE_D1_SECRET"
            ));
        }
        let base = parsed.as_str().trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the D1 bridge's HTTP client: {e}"))?;
        Ok(Self { http, base, secret })
    }

    /// The bridge's URL as written in messages (it holds no secret).
    pub fn url(&self) -> String {
        format!("d1+{}", self.base)
    }

    /// Runs one statement with `POST /query`; a transient failure of a read (`read`) is retried.
    pub async fn query(&self, sql: &str, params: Vec<Json>, read: bool) -> Result<Rows, Error> {
        let body =
            serde_json::to_vec(&json!({"sql": sql, "params": params})).map_err(|e| Error::Refused(e.to_string()))?;
        let mut attempt = 1;
        loop {
            match self.post("/query", &body).await {
                Ok(answer) => return self.parse(answer),
                Err(err) if read && err.is_transient() && attempt < READ_ATTEMPTS => {
                    let pause = rand::thread_rng().gen_range(Duration::ZERO..=RETRY_BASE * 2_u32.pow(attempt - 1));
                    tracing::warn!(attempt, error = %err, "D1 read failed; trying again in {} ms", pause.as_millis());
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Runs statements as one D1 batch (all or nothing) with `POST /batch`, once.
    /// `idempotency_key` makes a batch sent again by the caller apply at most once.
    pub async fn batch(&self, statements: &[(&str, Vec<Json>)], idempotency_key: &str) -> Result<Batched, Error> {
        let statements: Vec<Json> =
            statements.iter().map(|(sql, params)| json!({"sql": sql, "params": params})).collect();
        let body = json!({"statements": statements, "idempotencyKey": idempotency_key});
        let body = serde_json::to_vec(&body).map_err(|e| Error::Refused(e.to_string()))?;
        self.parse(self.post("/batch", &body).await?)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, answer: Json) -> Result<T, Error> {
        serde_json::from_value(answer).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    fn protocol(&self, detail: String) -> Error {
        Error::Protocol { url: self.url(), detail }
    }

    /// One signed request to the bridge's `endpoint` (`/query`, `/batch`); `200` answers its JSON,
    /// anything else an [`Error`]. The signature covers the whole path, route prefix included.
    async fn post(&self, endpoint: &str, body: &[u8]) -> Result<Json, Error> {
        let url = format!("{}{endpoint}", self.base);
        let path = reqwest::Url::parse(&url).map_err(|e| Error::Refused(e.to_string()))?.path().to_string();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-ensemble-timestamp", &timestamp)
            .header("x-ensemble-signature", self.sign(&path, &timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Error::Unreachable { url: self.url(), cause: cause(&e) })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| Error::Unreachable { url: self.url(), cause: cause(&e) })?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| self.protocol(format!("HTTP {status}, not JSON: {e}")));
        }
        #[derive(Deserialize)]
        struct Failure {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            message: String,
            index: Option<usize>,
        }
        let Ok(Failure { error }) = serde_json::from_str::<Failure>(&text) else {
            // The host's own 502/503/504 page (Cloudflare's, wrangler dev's) instead of the
            // Worker's answer: the Worker may have run the request, as when an answer is lost.
            if matches!(status.as_u16(), 502..=504) {
                return Err(Error::Unreachable {
                    url: self.url(),
                    cause: format!("HTTP {status} from the Worker's host, without the bridge's answer"),
                });
            }
            let start: String = text.chars().take(200).collect();
            return Err(self.protocol(format!("HTTP {status}: {start}")));
        };
        Err(match error.code.as_str() {
            "UNAUTHORIZED" => Error::Unauthorized { url: self.url(), message: error.message },
            "OVERLOADED" | "UNAVAILABLE" => Error::Transient { code: error.code, message: error.message },
            _ => Error::Bridge { code: error.code, message: error.message, index: error.index },
        })
    }

    /// HMAC-SHA256(secret, METHOD "\n" PATH "\n" TIMESTAMP "\n" BODY), hex (d1-bridge/README.md).
    fn sign(&self, path: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.0.as_bytes()).expect("HMAC takes a key of any length");
        mac.update(format!("POST\n{path}\n{timestamp}\n").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Why a request got no answer, from reqwest's chain of causes ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)"), without the URL it repeats.
fn cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {} s", REQUEST_TIMEOUT.as_secs());
    }
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        causes.push(inner.to_string());
        source = inner.source();
    }
    causes.dedup();
    if causes.is_empty() { err.to_string() } else { causes.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("test-secret-0123456789abcdef-0123456789abcdef".into()).unwrap()
    }

    #[test]
    fn requests_are_signed_as_the_bridge_readme_says() {
        // The value Node's createHmac gives for the same key and message (bridge.test.mjs's sign()).
        let client = Client::new("d1+http://127.0.0.1:8787", secret()).unwrap();
        let signature = client.sign("/query", "1765094400", br#"{"sql":"SELECT 1","params":[]}"#);
        assert_eq!(signature, "c742dccb2ed7fc8ad7d06164104fd2361f68991ae59180342aa473c6a26a5168");
    }

    #[test]
    fn the_secret_is_never_shown() {
        let shown = format!("{:?}", Client::new("d1+https://bridge.example.dev", secret()).unwrap());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(Secret::new("short".into()).unwrap_err().contains("at least 32 characters"));
    }

    #[test]
    fn a_bridge_is_named_by_its_host_and_an_optional_route_path() {
        for bad in ["d1://h", "d1+ftp://h", "d1+https://", "d1+https://u:p@h", "d1+https://h?x=1", "http://h"] {
            assert!(Client::new(bad, secret()).is_err(), "{bad}");
        }
        assert_eq!(Client::new("d1+https://h.dev/", secret()).unwrap().url(), "d1+https://h.dev");
        assert_eq!(Client::new("d1+http://127.0.0.1:8787", secret()).unwrap().url(), "d1+http://127.0.0.1:8787");
        assert_eq!(
            Client::new("d1+https://h.dev/ensemble/d1/", secret()).unwrap().url(),
            "d1+https://h.dev/ensemble/d1"
        );
    }
}
