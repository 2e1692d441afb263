//! Templates: categories listed by anyone signed in and managed by admins, with the bad inputs an
//! admin screen will send.

use crate::common;

use common::{TestApp, first_code, problem_paths};
use ensemble::domain::GlobalRole;
use entity::{audit_logs, template_categories};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;

const CREATE: &str = "mutation($input: TemplateCategoryInput!) { createTemplateCategory(input: $input) { id slug name description position } }";
const UPDATE: &str = "mutation($id: ID!, $input: TemplateCategoryInput!) { updateTemplateCategory(id: $id, input: $input) { id slug name description position } }";
const DELETE: &str = "mutation($id: ID!) { deleteTemplateCategory(id: $id) { slug } }";
const LIST: &str = "{ templateCategories { slug name position } }";

#[tokio::test]
async fn admins_manage_categories_that_everyone_signed_in_lists_in_order() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let member = app.token("user_member", GlobalRole::Member);
    let (_, body) = app.gql_as(&admin, CREATE, json!({"input": {"name": "Customer Support", "position": 2}})).await;
    let support = body["data"]["createTemplateCategory"].clone();
    assert_eq!(support["slug"], "customer-support", "{body}");
    let (_, body) = app
        .gql_as(
            &admin,
            CREATE,
            json!({"input": {"name": "Research", "slug": "research", "description": "Reports", "position": 1}}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let (_, body) = app.gql_as(&member, LIST, json!({})).await;
    assert_eq!(body["data"]["templateCategories"][0]["slug"], "research", "ordered by position: {body}");
    assert_eq!(body["data"]["templateCategories"][1]["slug"], "customer-support");

    let (_, body) =
        app.gql_as(&admin, UPDATE, json!({"id": support["id"], "input": {"name": "Support", "position": 0}})).await;
    let updated = &body["data"]["updateTemplateCategory"];
    assert_eq!(
        (updated["name"].as_str(), updated["slug"].as_str(), updated["position"].as_i64()),
        (Some("Support"), Some("customer-support"), Some(0)),
        "{body}"
    );
    let (_, body) = app.gql_as(&admin, DELETE, json!({"id": support["id"]})).await;
    assert_eq!(body["data"]["deleteTemplateCategory"]["slug"], "customer-support", "{body}");
    let (_, body) = app.gql_as(&member, LIST, json!({})).await;
    let slugs: Vec<&str> =
        body["data"]["templateCategories"].as_array().unwrap().iter().map(|c| c["slug"].as_str().unwrap()).collect();
    assert!(slugs.contains(&"research") && !slugs.contains(&"customer-support"), "{body}");
    let audited = audit_logs::Entity::find()
        .filter(audit_logs::Column::ResourceType.eq("template_category"))
        .filter(audit_logs::Column::Result.eq("allowed"))
        .count(&app.state.db)
        .await
        .unwrap();
    assert_eq!(audited, 4, "two creates, an update and a delete");
}

#[tokio::test]
async fn bad_category_input_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let shipped = template_categories::Entity::find().count(&app.state.db).await.unwrap();
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (_, body) = app.gql_as(&admin, CREATE, json!({"input": {"name": "Research"}})).await;
    let research = body["data"]["createTemplateCategory"]["id"].clone();
    let (_, body) = app
        .gql_as(&admin, CREATE, json!({"input": {"name": " ", "slug": "Not A Slug", "description": "x".repeat(1001)}}))
        .await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(problem_paths(&body), ["input.name", "input.slug", "input.description"]);
    let (_, body) = app.gql_as(&admin, CREATE, json!({"input": {"name": "Research again", "slug": "research"}})).await;
    assert_eq!(first_code(&body), "CONFLICT", "{body}");
    let (_, body) = app.gql_as(&admin, CREATE, json!({"input": {"name": "Writing"}})).await;
    let writing = body["data"]["createTemplateCategory"]["id"].clone();
    let (_, body) = app.gql_as(&admin, UPDATE, json!({"id": writing, "input": {"slug": "research"}})).await;
    assert_eq!(first_code(&body), "CONFLICT", "{body}");
    for (query, variables) in
        [(UPDATE, json!({"id": "cat_nope", "input": {"name": "X"}})), (DELETE, json!({"id": "cat_nope"}))]
    {
        let (_, body) = app.gql_as(&admin, query, variables).await;
        assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    }
    let member = app.token("user_member", GlobalRole::Member);
    let (_, body) = app.gql_as(&member, DELETE, json!({"id": research})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    let body = app.gql(LIST, json!({})).await;
    assert_eq!(first_code(&body), "UNAUTHENTICATED", "{body}");
    let slugs: Vec<String> =
        template_categories::Entity::find().all(&app.state.db).await.unwrap().into_iter().map(|c| c.slug).collect();
    assert_eq!(slugs.len() as u64, shipped + 2, "{slugs:?}");
    assert!(slugs.contains(&"research".to_string()) && slugs.contains(&"writing".to_string()), "{slugs:?}");
}
