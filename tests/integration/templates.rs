//! Templates: categories listed by anyone signed in and managed by admins, with the bad inputs an
//! admin screen will send, and the changes that land between an admin's read and write.

use crate::common;

use common::{TestApp, first_code, problem_paths};
use ensemble::{
    domain::GlobalRole,
    service::template_categories::{self as categories, CategoryInput},
};
use entity::{audit_logs, template_categories};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
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

/// A category's input with a name only.
fn named(name: &str) -> CategoryInput {
    CategoryInput { name: Some(name.into()), ..Default::default() }
}

#[tokio::test]
async fn a_category_slug_taken_meanwhile_is_conflict_on_create_and_on_update() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let caller = app.caller(&admin).await;
    let writing = app.must(&admin, CREATE, json!({"input": {"name": "Writing"}})).await["createTemplateCategory"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let first = app.later(&admin, CREATE, json!({"input": {"name": "Research"}}));
    let refused = categories::create(&app.meanwhile(first).templates, &caller, named("Research")).await.err().unwrap();
    assert_eq!(refused.to_string(), "A template category with the slug `research` already exists.");
    let taken = app.later(&admin, CREATE, json!({"input": {"name": "Essays"}}));
    let input = CategoryInput { slug: Some("essays".into()), ..Default::default() };
    let refused = categories::update(&app.meanwhile(taken).templates, &caller, &writing, input).await.err().unwrap();
    assert_eq!(refused.to_string(), "A template category with the slug `essays` already exists.");

    let slugs = |slug: &'static str| {
        template_categories::Entity::find().filter(template_categories::Column::Slug.eq(slug)).count(&app.state.db)
    };
    assert_eq!((slugs("research").await.unwrap(), slugs("essays").await.unwrap()), (1, 1));
    assert_eq!(slugs("writing").await.unwrap(), 1, "the refused update changed nothing");
    let rows = audit_logs::Entity::find().filter(audit_logs::Column::ResourceType.eq("template_category"));
    assert_eq!(rows.count(&app.state.db).await.unwrap(), 3, "the three creates that landed");
}

#[tokio::test]
async fn a_category_changed_meanwhile_is_read_again_and_keeps_that_change() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let caller = app.caller(&admin).await;
    let created = app.must(&admin, CREATE, json!({"input": {"name": "Support", "position": 1}})).await;
    let id = created["createTemplateCategory"]["id"].as_str().unwrap().to_string();

    let rename = app.later(&admin, UPDATE, json!({"id": id, "input": {"name": "Customer Support"}}));
    let input = CategoryInput { position: Some(5), ..Default::default() };
    let after = categories::update(&app.meanwhile(rename).templates, &caller, &id, input).await.unwrap();

    assert_eq!((after.name.as_str(), after.position), ("Customer Support", 5));
    let stored = template_categories::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(stored, after, "the answer is the row stored");
    let last = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("template_category.update"))
        .order_by_desc(audit_logs::Column::Seq)
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    let changes = last.changes.unwrap();
    assert_eq!(changes["name"], json!({"from": "Customer Support", "to": "Customer Support"}), "{changes}");
    assert_eq!(changes["position"], json!({"from": 1, "to": 5}), "{changes}");
}

#[tokio::test]
async fn a_category_filed_under_or_deleted_meanwhile_is_not_deleted_again() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let caller = app.caller(&admin).await;
    let create = |name: &str| app.must(&admin, CREATE, json!({"input": {"name": name}}));
    let filed = create("Filed").await["createTemplateCategory"]["id"].as_str().unwrap().to_string();
    let gone = create("Gone").await["createTemplateCategory"]["id"].as_str().unwrap().to_string();

    let template =
        json!({"input": {"kind": "QUERY", "name": "Filed away", "category": "filed", "body": {"prompt": "Hi"}}});
    let file = app.later(&admin, "mutation($input: TemplateInput!) { createTemplate(input: $input) { id } }", template);
    let refused = categories::delete(&app.meanwhile(file).templates, &caller, &filed).await.err().unwrap();
    assert_eq!(
        refused.to_string(),
        "1 template(s) are filed under `filed`; move them to another category first.",
        "{refused:?}"
    );
    let delete = app.later(&admin, DELETE, json!({"id": gone}));
    let refused = categories::delete(&app.meanwhile(delete).templates, &caller, &gone).await.err().unwrap();
    assert_eq!(refused.to_string(), "No such template category.", "{refused:?}");

    let left = template_categories::Entity::find().filter(template_categories::Column::Id.is_in([&filed, &gone]));
    assert_eq!(left.all(&app.state.db).await.unwrap().len(), 1, "the one in use is kept");
    let deletes = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("template_category.delete"));
    assert_eq!(deletes.count(&app.state.db).await.unwrap(), 1, "the deletion made meanwhile only");
}
