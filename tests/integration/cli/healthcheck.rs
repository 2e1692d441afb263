//! `ensemble healthcheck`, what a container's `HEALTHCHECK` runs: exit 0 when `/readyz`
//! answers 200, else exit 1 with one line on stderr saying why.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    cli::process::{Ran, Server, closed_port, finish_within, serving},
    common,
};

/// `ensemble healthcheck ARGS` with `ENSEMBLE_LISTEN=listen`, run off the test's runtime so
/// that a stub served on it keeps answering.
async fn healthcheck(listen: &str, args: &[&str]) -> Ran {
    let mut command = common::ensemble();
    command.arg("healthcheck").args(args).env("ENSEMBLE_LISTEN", listen);
    tokio::task::spawn_blocking(move || finish_within(command, Duration::from_secs(30))).await.unwrap()
}

/// Exit 1 and one line on stderr that says `why`.
fn failed(ran: &Ran, why: &str) {
    assert_eq!(ran.status.code(), Some(1), "{}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(ran.stderr.starts_with("error: ") && ran.stderr.contains(why), "{}", ran.stderr);
}

#[tokio::test]
async fn a_ready_server_passes_at_its_listen_address_or_an_explicit_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let _server = Server::ready(serving(dir.path(), &format!("127.0.0.1:{port}")), port).await;

    // A server listening on every address is asked on loopback; a proxy in the environment
    // (usual in containers) is not used for it.
    let mut command = common::ensemble();
    command
        .arg("healthcheck")
        .env("ENSEMBLE_LISTEN", format!("0.0.0.0:{port}"))
        .env("HTTP_PROXY", "http://127.0.0.1:9");
    let ran = tokio::task::spawn_blocking(move || finish_within(command, Duration::from_secs(30))).await.unwrap();
    assert!(ran.status.success(), "{}", ran.stderr);
    assert_eq!(ran.stdout, "ready\n");

    let explicit = healthcheck("foo", &["--url", &format!("http://127.0.0.1:{port}/readyz")]).await;
    assert!(explicit.status.success(), "--url wins over ENSEMBLE_LISTEN: {}", explicit.stderr);

    let missing = healthcheck("127.0.0.1:1", &["--url", &format!("http://127.0.0.1:{port}/nope")]).await;
    failed(&missing, "answered 404");
}

#[tokio::test]
async fn nothing_listening_is_connection_refused() {
    let port = closed_port();
    failed(&healthcheck(&format!("127.0.0.1:{port}"), &[]).await, "connection refused");
}

#[tokio::test]
async fn a_server_that_is_not_ready_fails_with_its_reason() {
    let stub = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stub.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = stub.accept().await {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let body = r#"{"status":"unavailable","reason":"the database does not answer"}"#;
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
        }
    });
    let ran = healthcheck(&addr.to_string(), &[]).await;
    failed(&ran, "answered 503 Service Unavailable: unavailable (the database does not answer)");
}

#[tokio::test]
async fn a_server_that_does_not_answer_fails_within_seconds() {
    let stub = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stub.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = stub.accept().await {
            open.push(socket);
        }
    });
    let started = Instant::now();
    let ran = healthcheck(&addr.to_string(), &[]).await;
    failed(&ran, "did not answer within 3 s");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn a_url_that_is_not_http_is_refused() {
    failed(
        &healthcheck("127.0.0.1:8080", &["--url", "localhost:8080/readyz"]).await,
        "is not an http:// or https:// URL",
    );
}

#[tokio::test]
async fn a_listen_address_that_is_not_one_names_its_variable() {
    failed(&healthcheck("foo", &[]).await, "ENSEMBLE_LISTEN (or --listen): `foo` is not an address like");
}
