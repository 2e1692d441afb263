//! Users: reading yourself and (as an admin) others, profiles, global roles.

use crate::common;

use common::{
    TestApp, first_code,
    meanwhile::{Meanwhile, sql},
};
use ensemble::{
    domain::{Caller, GlobalRole},
    service::users as service,
};
use entity::{audit_logs, users};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryTrait, sea_query::Expr};
use serde_json::json;

const USER: &str = "query($id: ID!) { user(id: $id) { id role displayName } }";
const USERS: &str = "query($first: Int, $after: String, $search: String) { users(first: $first, after: $after, search: $search) { nodes { id } pageInfo { hasNextPage endCursor } } }";

/// Signs the users in once so their rows exist; returns their tokens.
async fn sign_in(app: &TestApp, users: &[(&str, GlobalRole)]) -> Vec<String> {
    let mut tokens = Vec::new();
    for (user, role) in users {
        let token = app.token(user, *role);
        let (status, _) = app.gql_as(&token, "{ me { id } }", json!({})).await;
        assert_eq!(status, 200);
        tokens.push(token);
    }
    tokens
}

#[tokio::test]
async fn a_member_sees_only_themselves() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_a", GlobalRole::Member), ("user_b", GlobalRole::Member)]).await;
    let (_, body) = app.gql_as(&t[0], USER, json!({"id": "user_a"})).await;
    assert_eq!(body["data"]["user"]["id"], "user_a");
    let (_, body) = app.gql_as(&t[0], USER, json!({"id": "user_b"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = app.gql_as(&t[0], USER, json!({"id": "user_nobody"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "the same answer whether or not the user exists");
}

#[tokio::test]
async fn an_admin_lists_users_page_by_page_and_searches() {
    let app = TestApp::spawn().await;
    let t = sign_in(
        &app,
        &[("user_admin", GlobalRole::Admin), ("user_b", GlobalRole::Member), ("user_c", GlobalRole::Member)],
    )
    .await;
    let (_, page1) = app.gql_as(&t[0], USERS, json!({"first": 2})).await;
    let users = &page1["data"]["users"];
    assert_eq!(users["nodes"], json!([{"id": "user_admin"}, {"id": "user_b"}]), "{page1}");
    assert_eq!(users["pageInfo"]["hasNextPage"], true);
    let after = users["pageInfo"]["endCursor"].clone();
    let (_, page2) = app.gql_as(&t[0], USERS, json!({"first": 2, "after": after})).await;
    assert_eq!(page2["data"]["users"]["nodes"], json!([{"id": "user_c"}]));
    assert_eq!(page2["data"]["users"]["pageInfo"]["hasNextPage"], false);

    let (_, found) = app.gql_as(&t[0], USERS, json!({"search": "C@EXAMPLE"})).await;
    assert_eq!(found["data"]["users"]["nodes"], json!([{"id": "user_c"}]), "case-insensitive on every database");
}

#[tokio::test]
async fn listing_users_is_for_admins_and_pages_are_bounded() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_m", GlobalRole::Member), ("user_admin", GlobalRole::Admin)]).await;
    let (_, body) = app.gql_as(&t[0], USERS, json!({})).await;
    assert_eq!(first_code(&body), "FORBIDDEN");
    for first in [0, 101, -1] {
        let (_, body) = app.gql_as(&t[1], USERS, json!({"first": first})).await;
        assert_eq!(first_code(&body), "BAD_USER_INPUT", "first = {first}: {body}");
    }
    let (_, body) = app.gql_as(&t[1], USERS, json!({"after": "not a cursor!"})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
}

#[tokio::test]
async fn a_user_updates_their_profile() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_p", GlobalRole::Member)]).await;
    let update = "mutation($input: UpdateProfileInput!) { updateProfile(input: $input) { displayName avatarUrl } }";
    let (_, body) = app
        .gql_as(&t[0], update, json!({"input": {"displayName": " Pat ", "avatarUrl": "https://img.example/p.png"}}))
        .await;
    assert_eq!(body["data"]["updateProfile"], json!({"displayName": "Pat", "avatarUrl": "https://img.example/p.png"}));

    let (_, body) =
        app.gql_as(&t[0], update, json!({"input": {"displayName": "x".repeat(101), "avatarUrl": "ftp://x"}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    let problems = &body["errors"][0]["extensions"]["problems"];
    assert_eq!(problems.as_array().map(Vec::len), Some(2), "every problem listed: {body}");
    let (_, me) = app.gql_as(&t[0], "{ me { displayName } }", json!({})).await;
    assert_eq!(me["data"]["me"]["displayName"], "Pat", "nothing changed");

    let body = app.gql(update, json!({"input": {"displayName": "Anon"}})).await;
    assert_eq!(first_code(&body), "UNAUTHENTICATED");
}

#[tokio::test]
async fn only_an_admin_sets_global_roles() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_admin", GlobalRole::Admin), ("user_m", GlobalRole::Member)]).await;
    let set = "mutation($id: ID!, $role: GlobalRole!) { setUserRole(userId: $id, role: $role) { id role } }";
    let (_, body) = app.gql_as(&t[1], set, json!({"id": "user_m", "role": "ADMIN"})).await;
    assert_eq!(first_code(&body), "FORBIDDEN");
    let (_, body) = app.gql_as(&t[0], set, json!({"id": "user_ghost", "role": "ADMIN"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
    let (_, body) = app.gql_as(&t[0], set, json!({"id": "user_m", "role": "ADMIN"})).await;
    assert_eq!(body["data"]["setUserRole"], json!({"id": "user_m", "role": "ADMIN"}));
    // The stored role now makes their member token an admin's.
    let (_, body) = app.gql_as(&t[1], "{ me { role } }", json!({})).await;
    assert_eq!(body["data"]["me"]["role"], "ADMIN");
}

/// The caller of `token`, for calling services directly.
async fn caller(app: &TestApp, token: &str) -> Caller {
    Caller { principal: app.state.auth.from_token(token).await.unwrap(), meta: Default::default() }
}

/// The `changes` of every allowed audit row of `action`.
async fn audited(app: &TestApp, action: &str) -> Vec<serde_json::Value> {
    let rows = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq(action)).all(&app.state.db);
    rows.await.unwrap().into_iter().map(|row| row.changes.unwrap_or_default()).collect()
}

#[tokio::test]
async fn a_role_changed_by_another_admin_meanwhile_is_read_again_and_recorded_from_it() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_admin", GlobalRole::Admin), ("user_b", GlobalRole::Member)]).await;
    // Another instance makes user_b an admin after this one read user_b's role.
    let promote = users::Entity::update_many()
        .col_expr(users::Column::Role, Expr::value("admin"))
        .filter(users::Column::Id.eq("user_b"))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &promote)]);

    let admin = caller(&app, &t[0]).await;
    let row = service::set_role(&app.state.db, &chain, &app.state.caches, &admin, "user_b", GlobalRole::Member)
        .await
        .unwrap();

    assert_eq!(row.role, GlobalRole::Member);
    assert_eq!(audited(&app, "user.role.set").await, [json!({"role": {"from": "admin", "to": "member"}})]);
}

#[tokio::test]
async fn a_profile_edited_while_its_user_is_deleted_is_not_found_and_not_recorded() {
    let app = TestApp::spawn().await;
    let t = sign_in(&app, &[("user_a", GlobalRole::Member)]).await;
    let me = caller(&app, &t[0]).await;
    let delete = users::Entity::update_many()
        .col_expr(users::Column::DeletedAt, Expr::value(chrono::Utc::now()))
        .filter(users::Column::Id.eq("user_a"))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &delete)]);

    let changes = service::ProfileChanges { display_name: Some("Ada".into()), avatar_url: None };
    let err = service::update_profile(&app.state.db, &chain, &app.state.caches, &me, changes).await.unwrap_err();

    assert_eq!(err.code(), "NOT_FOUND");
    assert_eq!(audited(&app, "user.profile.update").await, Vec::<serde_json::Value>::new());
    let row = service::find(&app.state.db, "user_a").await.unwrap().unwrap();
    assert_eq!(row.display_name, None, "nothing written to the deleted row");
}
