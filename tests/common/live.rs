//! Waiting until websocket subscriptions are live. A `subscribe` has no acknowledgement, so a
//! test causes what the subscription must show (a run, an audit row) until every socket shows it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TestApp, WsClient};

/// How long the subscriptions may take to go live.
const PATIENCE: Duration = Duration::from_secs(15);
/// How long a round waits for a socket to show what was caused; a socket that has not shown it
/// yet is asked again in the next round.
const ROUND: Duration = Duration::from_millis(500);

/// Waits until each `(socket, id)` follows `team` with a `teamActivity` subscription (selecting
/// `runId` and `kind`) sent already: runs of the team are started as `token` until the end of
/// one reaches every socket. Each socket has then read up to that end, so the next event it
/// reads is of a later run.
pub async fn team_activity_live(app: &TestApp, token: &str, team: &str, sockets: &mut [(&mut WsClient, &str)]) {
    let run = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"probe\"}) { id status } }";
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let (_, answer) = app.gql_as(token, run, json!({"t": team})).await;
        assert_eq!(answer["data"]["runTeam"]["status"], "SUCCEEDED", "a probe run: {answer}");
        let probe = answer["data"]["runTeam"]["id"].clone();
        let mut live = 0;
        for (ws, id) in sockets.iter_mut() {
            let shown = until_message(ws, id, |message| {
                let event = &message["payload"]["data"]["teamActivity"];
                let terminal = matches!(event["kind"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"));
                event["runId"] == probe && terminal
            });
            live += usize::from(tokio::time::timeout(ROUND, shown).await.is_ok());
        }
        if live == sockets.len() {
            return;
        }
    }
    panic!("teamActivity was not live on every socket within {PATIENCE:?}");
}

/// Waits until each `(socket, id)` follows `team` with an `auditLogAdded` subscription (selecting
/// `changes`) sent already: `actor` changes the team's description until the change's row
/// reaches every socket. Each socket has then read up to that row.
pub async fn audit_rows_live(app: &TestApp, actor: &str, team: &str, sockets: &mut [(&mut WsClient, &str)]) {
    let change = "mutation($t: ID!, $d: String!) { updateTeam(id: $t, input: {description: $d}) { id } }";
    let deadline = Instant::now() + PATIENCE;
    for probe in 0.. {
        assert!(Instant::now() < deadline, "auditLogAdded was not live on every socket within {PATIENCE:?}");
        let description = format!("probe {probe}");
        let (_, answer) = app.gql_as(actor, change, json!({"t": team, "d": description})).await;
        assert!(answer.get("errors").is_none(), "a probe change: {answer}");
        let mut live = 0;
        for (ws, id) in sockets.iter_mut() {
            let shown = until_message(ws, id, |message| {
                message["payload"]["data"]["auditLogAdded"]["changes"]["description"] == description.as_str()
            });
            live += usize::from(tokio::time::timeout(ROUND, shown).await.is_ok());
        }
        if live == sockets.len() {
            return;
        }
    }
}

/// Reads `ws` until a result of operation `id` that `wanted` accepts; what comes before it
/// (results of earlier probes, other operations' messages) is skipped.
async fn until_message(ws: &mut WsClient, id: &str, wanted: impl Fn(&Value) -> bool) {
    loop {
        let message = ws.next_json().await;
        if message["id"] != id {
            continue;
        }
        assert!(matches!(message["type"].as_str(), Some("next" | "data")), "{message}");
        if wanted(&message) {
            return;
        }
    }
}
