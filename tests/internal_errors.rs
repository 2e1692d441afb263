//! An unreachable database during a request: the caller gets `INTERNAL` and a message saying so,
//! the log gets the cause and the request id. (Its own test binary: it installs the global
//! log subscriber.)

mod common;

use std::sync::{Arc, Mutex};

use common::{TestApp, first_code};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_internal_and_says_so_with_the_request_id_in_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();

    let app = TestApp::spawn().await;
    app.state.db.close_by_ref().await.unwrap();
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("x-request-id", "req-db-down-7")
        .json(&json!({"query": "{ serverInfo { version } }"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "INTERNAL", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    // Trying again later may work, so the answer says what happened (not how).
    assert_eq!(message, ensemble::error::UNAVAILABLE_MESSAGE);
    assert!(!body.to_string().to_lowercase().contains("pool"), "no internals: {body}");

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    // Background work (resuming workflows) may log the same outage first, without a request.
    let line = text
        .lines()
        .find(|l| l.contains("the database cannot be reached") && l.contains("req-db-down-7"))
        .unwrap_or_else(|| panic!("no log line with the request id:\n{text}"));
    assert!(line.to_lowercase().contains("closed"), "the cause is logged: {line}");
}
