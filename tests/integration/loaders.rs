//! Nested lists load in batches: listing teams with their owners, members and members' users
//! runs the same few SQL statements for 5 teams as for 50.

use crate::common;

use common::TestApp;
use ensemble::{
    domain::{Caller, GlobalRole},
    service::teams,
};
use serde_json::json;

const LIST: &str = "{ teams(first: 50) { nodes { owner { id } members { role user { id displayName } } } } }";
const EVERYTHING: &str =
    "{ teams(first: 50) { nodes { owner { id } versionCount shareLinks { id } members { role user { id } } } } }";

async fn statements_for_listing(teams_count: usize) -> (u64, u64) {
    let app = TestApp::spawn_quiet().await;
    let token = app.token("user_many", GlobalRole::Member);
    let (_, me) = app.gql_as(&token, "{ me { id } }", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], "user_many");
    let helper = app.token("user_helper", GlobalRole::Member);
    app.gql_as(&helper, "{ me { id } }", json!({})).await;
    let caller = Caller { principal: app.state.auth.from_token(&token).await.unwrap(), meta: Default::default() };
    for i in 0..teams_count {
        let new = teams::NewTeam { name: format!("Team {i}"), description: None, visibility: None, spec: None };
        let team = teams::create(&app.state.db, &app.state.audit, &app.state.config.runs.providers, &caller, new)
            .await
            .unwrap();
        teams::add_member(
            &app.state.db,
            &app.state.audit,
            &caller,
            &team.id,
            "user_helper",
            ensemble::domain::TeamRole::Viewer,
        )
        .await
        .unwrap();
    }
    let mut counts = Vec::new();
    for query in [LIST, EVERYTHING] {
        let (count, body) = app.statements_for(&token, query, json!({})).await;
        counts.push(count);
        let nodes = body["data"]["teams"]["nodes"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert_eq!(nodes.len(), teams_count);
        assert_eq!(nodes[0]["members"].as_array().map(Vec::len), Some(2));
    }
    (counts[0], counts[1])
}

#[tokio::test]
async fn listing_teams_with_owners_and_members_is_a_bounded_number_of_statements() {
    let (five, five_everything) = statements_for_listing(5).await;
    let (fifty, fifty_everything) = statements_for_listing(50).await;
    assert!(five <= 5, "{five} statements for 5 teams");
    assert_eq!(five, fifty, "the same statements for 50 teams as for 5");
    assert_eq!(five_everything, fifty_everything, "with version counts and share links too");
}
