//! `ensemble healthcheck`: asks a running server's `/readyz` whether it is ready, for a
//! container's `HEALTHCHECK` (a slim image has no curl). Exit 0 on a 200, 1 otherwise.

use std::{
    error::Error as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use clap::Args;

use super::CommandError;
use crate::config::{DEFAULT_LISTEN, parse_listen};

/// How long the server has to answer: a ready server answers in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args)]
pub struct HealthcheckArgs {
    /// The URL to ask (default: `/readyz` at the address the server listens on).
    #[arg(long)]
    url: Option<String>,
    /// The address the server listens on; 0.0.0.0 and [::] are asked on loopback.
    #[arg(long, env = "ENSEMBLE_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
}

pub async fn run(args: HealthcheckArgs) -> Result<(), CommandError> {
    let url = match args.url {
        Some(url) => checked(url)?,
        // Read only here: with `--url`, the server's setting does not matter.
        None => readyz_at(parse_listen(&args.listen).map_err(|e| format!("ENSEMBLE_LISTEN (or --listen): {e}"))?)?,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let response = client.get(&url).send().await.map_err(|e| unanswered(&url, &e))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::OK {
        println!("{}", summary(&body));
        return Ok(());
    }
    Err(format!("{url} answered {status}: {}", summary(&body)).into())
}

/// `/readyz` at `listen`, asked on loopback when the server listens on every address.
fn readyz_at(listen: SocketAddr) -> Result<String, String> {
    if listen.port() == 0 {
        return Err("ENSEMBLE_LISTEN has port 0 (a port chosen at start): pass --url http://HOST:PORT/readyz".into());
    }
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}/readyz", SocketAddr::new(host, listen.port())))
}

fn checked(url: String) -> Result<String, String> {
    match url::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url),
        _ => Err(format!("--url `{url}` is not an http:// or https:// URL")),
    }
}

/// Why no answer came, in words: refused, timed out, or what the connection said.
fn unanswered(url: &str, err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("{url} did not answer within {} s", TIMEOUT.as_secs());
    }
    let mut cause = err.source();
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return format!("{url}: connection refused (is the server running and listening there?)");
            }
            return format!("{url}: {io}");
        }
        cause = inner.source();
    }
    format!("{url}: {err}")
}

/// The answer's `status` (and `reason`) when it is the JSON of `/readyz`, else its first line.
fn summary(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) if json["status"].is_string() => match json["reason"].as_str() {
            Some(reason) => format!("{} ({reason})", json["status"].as_str().unwrap_or_default()),
            None => json["status"].as_str().unwrap_or_default().to_string(),
        },
        _ => body.lines().next().unwrap_or_default().chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_address_is_asked_on_loopback() {
        assert_eq!(readyz_at("0.0.0.0:8080".parse().unwrap()).unwrap(), "http://127.0.0.1:8080/readyz");
        assert_eq!(readyz_at("[::]:9000".parse().unwrap()).unwrap(), "http://[::1]:9000/readyz");
        assert_eq!(readyz_at("10.0.0.5:80".parse().unwrap()).unwrap(), "http://10.0.0.5:80/readyz");
        assert!(readyz_at("127.0.0.1:0".parse().unwrap()).is_err());
    }
}
