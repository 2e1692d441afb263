//! Starter templates: seeded when the server starts, idempotent on every later start, a new
//! version when a shipped definition changes, and people's templates never touched.

use crate::common;

use chrono::{SubsecRound, Utc};
use common::{TestApp, meanwhile::Meanwhile};
use ensemble::service::templates::{
    body,
    starters::{self, SeedReport},
};
use entity::{
    states::{TemplateKind, TemplateVisibility},
    template_categories, template_versions, templates,
};
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, Set};

const SHIPPED: &str = concat!("Shipped with Ensemble ", env!("CARGO_PKG_VERSION"));
const UPDATED: &str = concat!("Updated in Ensemble ", env!("CARGO_PKG_VERSION"));

async fn template(db: &DatabaseConnection, slug: &str) -> templates::Model {
    let row = templates::Entity::find().filter(templates::Column::Slug.eq(slug)).one(db).await.unwrap();
    row.unwrap_or_else(|| panic!("no template `{slug}`"))
}

async fn version(db: &DatabaseConnection, template_id: &str, version: i32) -> template_versions::Model {
    template_versions::Entity::find_by_id((template_id.to_string(), version)).one(db).await.unwrap().unwrap()
}

async fn version_count(db: &DatabaseConnection) -> u64 {
    template_versions::Entity::find().count(db).await.unwrap()
}

fn all_unchanged() -> SeedReport {
    SeedReport { created: 0, updated: 0, unchanged: starters::all().len() }
}

#[tokio::test]
async fn every_starter_is_public_at_version_one_once_the_server_has_started() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    for category in starters::categories() {
        let row = template_categories::Entity::find()
            .filter(template_categories::Column::Slug.eq(&category.slug))
            .one(db)
            .await
            .unwrap();
        assert_eq!(row.map(|c| c.name), Some(category.name.clone()));
    }
    for starter in starters::all() {
        let row = template(db, &starter.slug).await;
        assert!(row.is_starter && row.owner_id.is_none() && row.team_id.is_none(), "{row:?}");
        assert_eq!((row.kind, row.visibility, row.version), (starter.kind, TemplateVisibility::Public, 1));
        assert_eq!((&row.name, row.starter_digest.as_ref()), (&starter.name, Some(&starter.digest)));
        let category = template_categories::Entity::find_by_id(row.category_id.clone().unwrap()).one(db).await;
        assert_eq!(category.unwrap().unwrap().slug, starter.category);
        let first = version(db, &row.id, 1).await;
        let canonical = body::check(starter.kind, &starter.body, &starter.variables, &Default::default()).unwrap();
        assert_eq!(first.body, canonical.body, "{}: the canonical body is stored", starter.slug);
        assert_eq!((first.changelog.as_deref(), first.author_id), (Some(SHIPPED), None));
    }
    let stored = templates::Entity::find().filter(templates::Column::IsStarter.eq(true)).count(db).await.unwrap();
    assert_eq!(stored as usize, starters::all().len());
}

#[tokio::test]
async fn seeding_again_changes_nothing_and_keeps_admins_edits_to_categories() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let category = template_categories::Entity::find().one(db).await.unwrap().unwrap();
    let mut renamed: template_categories::ActiveModel = category.clone().into();
    renamed.name = Set("Renamed by an admin".into());
    renamed.position = Set(99);
    renamed.update(db).await.unwrap();
    let versions = version_count(db).await;
    let categories = template_categories::Entity::find().count(db).await.unwrap();

    assert_eq!(starters::seed(db, app.state.writer.as_ref()).await.unwrap(), all_unchanged());

    assert_eq!(version_count(db).await, versions, "no version added");
    assert_eq!(template_categories::Entity::find().count(db).await.unwrap(), categories);
    let kept = template_categories::Entity::find_by_id(category.id).one(db).await.unwrap().unwrap();
    assert_eq!((kept.name.as_str(), kept.position), ("Renamed by an admin", 99));
}

#[tokio::test]
async fn a_changed_shipped_definition_becomes_the_next_version() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let shipped = starters::all().iter().find(|s| s.slug == "classify").unwrap();
    let before = template(db, "classify").await;
    // As if the starter was seeded from an older definition by an earlier release.
    let mut older: templates::ActiveModel = before.clone().into();
    older.starter_digest = Set(Some("0".repeat(64)));
    older.name = Set("Classify (old name)".into());
    older.update(db).await.unwrap();

    let report = starters::seed(db, app.state.writer.as_ref()).await.unwrap();

    assert_eq!(report, SeedReport { created: 0, updated: 1, unchanged: starters::all().len() - 1 });
    let after = template(db, "classify").await;
    assert_eq!((after.id.as_str(), after.version, after.name.as_str()), (before.id.as_str(), 2, "Classify"));
    assert_eq!(after.starter_digest.as_ref(), Some(&shipped.digest));
    let second = version(db, &after.id, 2).await;
    assert_eq!(second.changelog.as_deref(), Some(UPDATED));
    assert_eq!(second.body, version(db, &after.id, 1).await.body);
    assert_eq!(starters::seed(db, app.state.writer.as_ref()).await.unwrap(), all_unchanged(), "and only once");
}

#[tokio::test]
async fn a_persons_template_keeps_its_slug_and_the_starter_is_seeded_beside_it() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    // A person's template took the slug before this starter shipped.
    templates::Entity::delete_many().filter(templates::Column::Slug.eq("translate")).exec(db).await.unwrap();
    let now = Utc::now().trunc_subsecs(6);
    templates::ActiveModel {
        id: Set("tpl_persons".into()),
        owner_id: Set(Some("user_alice".into())),
        team_id: Set(None),
        kind: Set(TemplateKind::Query),
        category_id: Set(None),
        name: Set("My translation prompt".into()),
        slug: Set("translate".into()),
        description: Set(None),
        visibility: Set(TemplateVisibility::Private),
        version: Set(3),
        is_starter: Set(false),
        starter_digest: Set(None),
        forked_from_id: Set(None),
        forked_from_version: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
    let persons = template(db, "translate").await;

    let report = starters::seed(db, app.state.writer.as_ref()).await.unwrap();

    assert_eq!(report, SeedReport { created: 1, updated: 0, unchanged: starters::all().len() - 1 });
    assert_eq!(template(db, "translate").await, persons, "the person's template is untouched");
    let starter = template(db, "translate-starter").await;
    assert!(starter.is_starter && starter.version == 1, "{starter:?}");
    assert_eq!(
        starters::seed(db, app.state.writer.as_ref()).await.unwrap(),
        all_unchanged(),
        "found under its new slug on the next start"
    );
    assert_eq!(template(db, "translate").await, persons);
}

#[tokio::test]
async fn a_starter_whose_slug_a_person_takes_meanwhile_is_seeded_beside_it() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    templates::Entity::delete_many().filter(templates::Column::Slug.eq("translate")).exec(db).await.unwrap();
    // A person's template takes the slug between the seed's read and its batch.
    let persons = persons_template("translate");
    let take = {
        let (db, persons) = (db.clone(), persons.clone());
        async move {
            templates::ActiveModel::from(persons).insert(&db).await.unwrap();
        }
    };
    let writer = Meanwhile::new(&app.state, take);

    let report = starters::seed(db, &writer).await.unwrap();

    assert_eq!(report, SeedReport { created: 1, updated: 0, unchanged: starters::all().len() - 1 });
    assert_eq!(template(db, "translate").await, persons, "the person's template is untouched");
    let starter = template(db, "translate-starter").await;
    assert!(starter.is_starter && starter.version == 1, "{starter:?}");
    assert_eq!(version(db, &starter.id, 1).await.changelog.as_deref(), Some(SHIPPED));
}

/// A person's QUERY template under `slug`.
fn persons_template(slug: &str) -> templates::Model {
    let now = Utc::now().trunc_subsecs(6);
    templates::Model {
        id: format!("tpl_persons_{slug}"),
        owner_id: Some("user_alice".into()),
        team_id: None,
        kind: TemplateKind::Query,
        category_id: None,
        name: "My prompt".into(),
        slug: slug.into(),
        description: None,
        visibility: TemplateVisibility::Private,
        version: 3,
        is_starter: false,
        starter_digest: None,
        forked_from_id: None,
        forked_from_version: None,
        created_at: now,
        updated_at: now,
    }
}
