//! Starter templates shipped inside the binary (`starters/`), seeded idempotently at start.
//! Each file is `starters/<kind>/<slug>.json`; `starters/categories.json` lists their categories.

use std::{collections::HashMap, sync::LazyLock};

use chrono::{DateTime, SubsecRound, Utc};
use entity::{template_categories, template_versions, templates};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryTrait, Set,
    sea_query::{InsertStatement, OnConflict},
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::body::{self, Kind};
use crate::{
    db::{
        self,
        batch::{Batch, BatchWriter, Expect, OnGuard},
    },
    error::{AppError, Problem},
};

/// Embeds each `starters/<path>` as `(path, text)`.
macro_rules! shipped {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../starters/", $path)))),*]
    };
}

/// Every starter, by its path under `starters/`.
const FILES: &[(&str, &str)] = shipped![
    "team/router-specialists.json",
    "team/research-pipeline.json",
    "team/critic-loop.json",
    "team/support-triage.json",
    "team/code-review-team.json",
    "query/summarise.json",
    "query/classify.json",
    "query/extract-json.json",
    "query/translate.json",
    "query/rewrite-tone.json",
    "workflow/research-report.json",
    "workflow/code-review.json",
    "workflow/customer-reply.json",
    "workflow/meeting-actions.json",
    "workflow/draft-critique-revise.json",
    "demo/support-desk.json",
    "demo/research-assistant.json",
    "demo/pull-request-reviewer.json",
    "demo/travel-planner.json",
];

const CATEGORIES: &str = include_str!("../../../starters/categories.json");

/// The version the changelogs of seeded versions name.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A starter as shipped.
#[derive(Clone, Debug)]
pub struct Starter {
    pub slug: String,
    pub kind: Kind,
    pub name: String,
    pub description: String,
    /// The slug of its category.
    pub category: String,
    /// The variable declarations, as written in the file.
    pub variables: Value,
    /// The body, as written in the file.
    pub body: Value,
    pub example: Example,
    /// Hex SHA-256 of the whole definition in canonical JSON (sorted keys, no whitespace), so
    /// reformatting a file changes nothing and any other edit gives the starter a new version.
    pub digest: String,
}

/// How to try a starter.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Valid values for the starter's variables.
    #[serde(default)]
    pub variables: Value,
    /// A message to send to the team a TEAM or DEMO starter makes.
    pub input: Option<String>,
    /// For a WORKFLOW, the slug of the TEAM starter whose agents its steps name.
    pub team: Option<String>,
}

/// A category the starters are filed under.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub slug: String,
    pub name: String,
    pub description: String,
    pub position: i32,
}

/// The fields of a starter file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    slug: String,
    kind: String,
    name: String,
    description: String,
    category: String,
    #[serde(default)]
    variables: Value,
    body: Value,
    example: Example,
}

static STARTERS: LazyLock<Vec<Starter>> =
    LazyLock::new(|| parse_all().expect("the shipped starters parse (a unit test guards this)"));

static CATEGORY_LIST: LazyLock<Vec<Category>> = LazyLock::new(|| {
    serde_json::from_str(CATEGORIES).expect("starters/categories.json parses (a unit test guards this)")
});

/// Every shipped starter, in the order of `FILES`.
pub fn all() -> &'static [Starter] {
    &STARTERS
}

/// Every shipped category.
pub fn categories() -> &'static [Category] {
    &CATEGORY_LIST
}

fn parse_all() -> Result<Vec<Starter>, String> {
    FILES.iter().map(|(path, text)| parse(path, text)).collect()
}

/// One starter file, which must sit at `<kind>/<slug>.json`.
fn parse(path: &str, text: &str) -> Result<Starter, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("starters/{path}: {e}"))?;
    let digest = hex::encode(Sha256::digest(value.to_string()));
    let file: File = serde_json::from_value(value).map_err(|e| format!("starters/{path}: {e}"))?;
    let kind = <Kind as sea_orm::ActiveEnum>::try_from_value(&file.kind)
        .map_err(|_| format!("starters/{path}: unknown kind `{}`", file.kind))?;
    let expected = format!("{kind}/{}.json", file.slug);
    if path != expected {
        return Err(format!(
            "starters/{path}: a {} starter with the slug `{}` belongs in {expected}",
            file.kind, file.slug
        ));
    }
    Ok(Starter {
        slug: file.slug,
        kind,
        name: file.name,
        description: file.description,
        category: file.category,
        variables: file.variables,
        body: file.body,
        example: file.example,
        digest,
    })
}

/// What one `seed` did, counted in starters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Starters stored for the first time.
    pub created: usize,
    /// Starters whose shipped definition changed; each got a new version.
    pub updated: usize,
    /// Starters already stored as shipped.
    pub unchanged: usize,
}

/// A starter with its body and declarations in the canonical form `body::check` gives.
struct Canonical {
    starter: &'static Starter,
    body: Value,
    variables: Value,
}

/// Brings the database up to date with the shipped categories and starters; running it again
/// changes nothing. Categories are only added, never changed (admins may have edited them). A
/// starter is created, given a new version when its shipped definition changed, or left alone,
/// each in a batch of its own guarded on what was read (a clash has that starter read and decided
/// again). Templates people made are never touched.
#[tracing::instrument(skip_all)]
pub async fn seed(db: &DatabaseConnection, writer: &dyn BatchWriter) -> Result<SeedReport, AppError> {
    let shipped = canonical()?;
    let category_ids = seed_categories(db, writer).await?;
    let rows = rows_holding_starter_slugs(db, all()).await?;
    let mut report = SeedReport::default();
    for item in &shipped {
        let category_id = category_ids.get(&item.starter.category).cloned();
        match seed_one(db, writer, item, category_id, &rows).await? {
            Outcome::Created => report.created += 1,
            Outcome::Updated => report.updated += 1,
            Outcome::Unchanged => report.unchanged += 1,
            Outcome::Taken => {
                tracing::warn!(slug = %item.starter.slug, "people's templates hold this starter's slug and its `-starter` variant; it is not seeded");
            }
        }
    }
    Ok(report)
}

/// What seeding did to one starter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Created,
    Updated,
    Unchanged,
    Taken,
}

/// Seeds one starter in a batch of its own: decided on `rows` as read at first, on its own
/// slugs read again after a guard that did not hold.
async fn seed_one(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
    item: &Canonical,
    category_id: Option<String>,
    rows: &HashMap<String, templates::Model>,
) -> Result<Outcome, AppError> {
    let (first, batch) = plan(item, rows, category_id.clone(), writer.backend());
    if batch.is_empty() {
        return Ok(first);
    }
    let decided = &std::sync::Mutex::new(first);
    let category_id = &category_id;
    let mut first = Some(batch);
    db::batch::write(
        writer,
        || {
            let first = first.take();
            async move {
                if let Some(batch) = first {
                    return Ok(batch);
                }
                let rows = rows_holding_starter_slugs(db, std::slice::from_ref(item.starter)).await?;
                let (outcome, batch) = plan(item, &rows, category_id.clone(), writer.backend());
                *decided.lock().map_err(|_| AppError::internal("a seeding lock was poisoned"))? = outcome;
                Ok(batch)
            }
        },
        // Seeded, or its slug taken, meanwhile: read its slugs again.
        |_, _| OnGuard::Retry,
    )
    .await?;
    let outcome = *decided.lock().map_err(|_| AppError::internal("a seeding lock was poisoned"))?;
    Ok(outcome)
}

/// What to do with one starter given the rows holding its slugs, and the batch that does it
/// (empty when there is nothing to do).
fn plan(
    item: &Canonical,
    rows: &HashMap<String, templates::Model>,
    category_id: Option<String>,
    backend: DbBackend,
) -> (Outcome, Batch) {
    let starter = item.starter;
    let now = Utc::now().trunc_subsecs(6);
    let batch = Batch::new(backend);
    match slot(rows, &starter.slug) {
        Slot::Stored(row) if row.starter_digest.as_deref() == Some(starter.digest.as_str()) => {
            (Outcome::Unchanged, batch)
        }
        Slot::Stored(row) => {
            let version = row.version + 1;
            let changed = templates::ActiveModel {
                kind: Set(starter.kind),
                name: Set(starter.name.clone()),
                description: Set(Some(starter.description.clone())),
                category_id: Set(category_id),
                version: Set(version),
                starter_digest: Set(Some(starter.digest.clone())),
                updated_at: Set(now),
                ..Default::default()
            };
            let update = templates::Entity::update_many()
                .set(changed)
                .filter(templates::Column::Id.eq(&row.id))
                .filter(templates::Column::Version.eq(row.version))
                .into_query();
            let changelog = format!("Updated in Ensemble {VERSION}");
            let batch = batch
                .write(&update)
                .guard(Expect::One, "template_version")
                .write(&version_row(&row.id, version, item, changelog, now));
            (Outcome::Updated, batch)
        }
        Slot::Free(slug) => {
            let id = format!("tpl_{}", uuid::Uuid::now_v7().simple());
            let template = templates::ActiveModel {
                id: Set(id.clone()),
                owner_id: Set(None),
                team_id: Set(None),
                kind: Set(starter.kind),
                category_id: Set(category_id),
                name: Set(starter.name.clone()),
                slug: Set(slug),
                description: Set(Some(starter.description.clone())),
                visibility: Set(super::Visibility::Public),
                version: Set(1),
                is_starter: Set(true),
                starter_digest: Set(Some(starter.digest.clone())),
                forked_from_id: Set(None),
                forked_from_version: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            };
            let free_slug = OnConflict::column(templates::Column::Slug).do_nothing().to_owned();
            let insert = templates::Entity::insert(template).on_conflict(free_slug).into_query();
            let changelog = format!("Shipped with Ensemble {VERSION}");
            let batch =
                batch.write(&insert).guard(Expect::One, "slug_taken").write(&version_row(&id, 1, item, changelog, now));
            (Outcome::Created, batch)
        }
        Slot::Taken => (Outcome::Taken, batch),
    }
}

/// Every starter checked; one that fails is a bug in the shipped files. Their agents use the
/// built-in providers only, so they seed whatever providers the server configures.
fn canonical() -> Result<Vec<Canonical>, AppError> {
    let allowed = body::Allowed::default();
    all()
        .iter()
        .map(|starter| {
            let checked = body::check(starter.kind, &starter.body, &starter.variables, &allowed)
                .map_err(|problems| invalid(starter, &problems))?;
            let variables = serde_json::to_value(&checked.variables).map_err(AppError::internal)?;
            Ok(Canonical { starter, body: checked.body, variables })
        })
        .collect()
}

fn invalid(starter: &Starter, problems: &[Problem]) -> AppError {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    AppError::internal(format!("the shipped starter `{}` is invalid: {}", starter.slug, listed.join("; ")))
}

/// Adds the shipped categories whose slug is missing (one batch; a category another seeder
/// added meanwhile is kept); answers every shipped category's id by slug.
async fn seed_categories(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
) -> Result<HashMap<String, String>, AppError> {
    let read = || async {
        let rows = template_categories::Entity::find()
            .filter(template_categories::Column::Slug.is_in(categories().iter().map(|c| c.slug.clone())))
            .all(db)
            .await?;
        Ok::<_, AppError>(rows.into_iter().map(|category| (category.slug, category.id)).collect::<HashMap<_, _>>())
    };
    let ids = read().await?;
    let missing: Vec<&Category> = categories().iter().filter(|c| !ids.contains_key(&c.slug)).collect();
    if missing.is_empty() {
        return Ok(ids);
    }
    let now = Utc::now().trunc_subsecs(6);
    let mut batch = Batch::new(writer.backend());
    for category in missing {
        let row = template_categories::ActiveModel {
            id: Set(format!("cat_{}", uuid::Uuid::now_v7().simple())),
            slug: Set(category.slug.clone()),
            name: Set(category.name.clone()),
            description: Set(Some(category.description.clone())),
            position: Set(category.position),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let free_slug = OnConflict::column(template_categories::Column::Slug).do_nothing().to_owned();
        batch = batch.write(&template_categories::Entity::insert(row).on_conflict(free_slug).into_query());
    }
    db::batch::write(writer, || async { Ok(batch.clone()) }, |_, _| OnGuard::Retry).await?;
    read().await
}

/// The templates holding the slug of one of `starters` or its `-starter` variant, by slug.
async fn rows_holding_starter_slugs(
    db: &DatabaseConnection,
    starters: &[Starter],
) -> Result<HashMap<String, templates::Model>, AppError> {
    let slugs = starters.iter().flat_map(|starter| [starter.slug.clone(), variant(&starter.slug)]);
    let rows = templates::Entity::find().filter(templates::Column::Slug.is_in(slugs)).all(db).await?;
    Ok(rows.into_iter().map(|row| (row.slug.clone(), row)).collect())
}

fn variant(slug: &str) -> String {
    format!("{slug}-starter")
}

/// Where a starter lives, or may.
enum Slot<'a> {
    /// Seeded before.
    Stored(&'a templates::Model),
    /// Not seeded yet; this slug is free for it.
    Free(String),
    /// Not seeded yet, and people's templates hold both slugs it could take.
    Taken,
}

/// A starter is stored under its own slug, unless a person's template already held that slug
/// the first time it was seeded: then it goes under `<slug>-starter`, so the person's template
/// keeps its slug and the starter is still found there on every later start.
fn slot<'a>(rows: &'a HashMap<String, templates::Model>, slug: &str) -> Slot<'a> {
    let variant = variant(slug);
    let (own, other) = (rows.get(slug), rows.get(&variant));
    if let Some(row) = [own, other].into_iter().flatten().find(|row| row.is_starter) {
        return Slot::Stored(row);
    }
    match (own, other) {
        (None, _) => Slot::Free(slug.to_string()),
        (Some(_), None) => Slot::Free(variant),
        (Some(_), Some(_)) => Slot::Taken,
    }
}

/// The INSERT of a starter's version `version`, its shipped definition.
fn version_row(
    template_id: &str,
    version: i32,
    item: &Canonical,
    changelog: String,
    now: DateTime<Utc>,
) -> InsertStatement {
    let row = template_versions::ActiveModel {
        template_id: Set(template_id.to_string()),
        version: Set(version),
        body: Set(item.body.clone()),
        variables: Set(item.variables.clone()),
        changelog: Set(Some(changelog)),
        author_id: Set(None),
        created_at: Set(now),
    };
    template_versions::Entity::insert(row).into_query()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::json;

    use super::*;

    fn of_kind(kind: Kind) -> impl Iterator<Item = &'static Starter> {
        all().iter().filter(move |s| s.kind == kind)
    }

    fn find(slug: &str) -> Option<&'static Starter> {
        all().iter().find(|s| s.slug == slug)
    }

    /// The agents of a TEAM body or of a DEMO body's team.
    fn agents(starter: &Starter) -> Vec<&Value> {
        let team = if starter.kind == Kind::Demo { &starter.body["team"] } else { &starter.body };
        team["agents"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }

    fn agent_names(starter: &Starter) -> HashSet<&str> {
        agents(starter).iter().filter_map(|a| a["name"].as_str()).collect()
    }

    fn steps(starter: &Starter) -> &Vec<Value> {
        starter.body["steps"].as_array().unwrap_or_else(|| panic!("{} has no steps", starter.slug))
    }

    #[test]
    fn every_file_under_starters_is_shipped_and_parses() {
        parse_all().unwrap();
        serde_json::from_str::<Vec<Category>>(CATEGORIES).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("starters");
        let mut on_disk = Vec::new();
        for kind in ["team", "query", "workflow", "demo"] {
            for entry in std::fs::read_dir(root.join(kind)).unwrap() {
                on_disk.push(format!("{kind}/{}", entry.unwrap().file_name().to_string_lossy()));
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(path, _)| path.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk, "every file in starters/ must be listed in FILES");
    }

    #[test]
    fn a_file_in_the_wrong_place_is_refused() {
        let text = r#"{"slug": "x", "kind": "query", "name": "X", "description": "d", "category": "language",
            "body": {"prompt": "hi"}, "example": {}}"#;
        assert!(parse("query/x.json", text).is_ok());
        assert!(parse("team/x.json", text).unwrap_err().contains("belongs in query/x.json"));
        assert!(parse("query/y.json", text).is_err());
    }

    #[test]
    fn slugs_are_unique_lowercase_and_leave_the_starter_suffix_free() {
        let mut seen = HashSet::new();
        for starter in all() {
            let slug = &starter.slug;
            assert!(seen.insert(slug), "duplicate slug {slug}");
            assert!(slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{slug}");
            assert!(!slug.starts_with('-') && !slug.ends_with('-'), "{slug}");
            assert!(!slug.ends_with("-starter"), "{slug}: `-starter` is kept for starters whose slug a person took");
        }
        let categories: HashSet<&str> = categories().iter().map(|c| c.slug.as_str()).collect();
        assert_eq!(categories.len(), super::categories().len(), "duplicate category slug");
    }

    #[test]
    fn every_kind_has_at_least_four_starters() {
        for kind in [Kind::Team, Kind::Query, Kind::Workflow, Kind::Demo] {
            assert!(of_kind(kind).count() >= 4, "{kind:?}");
        }
    }

    #[test]
    fn every_starter_is_filed_under_a_shipped_category() {
        let shipped: HashSet<&str> = categories().iter().map(|c| c.slug.as_str()).collect();
        for starter in all() {
            assert!(shipped.contains(starter.category.as_str()), "{}: {}", starter.slug, starter.category);
        }
    }

    #[test]
    fn every_agent_runs_offline_on_a_local_model() {
        for starter in of_kind(Kind::Team).chain(of_kind(Kind::Demo)) {
            assert!(!agents(starter).is_empty(), "{}", starter.slug);
            for agent in agents(starter) {
                let model = agent["model"].as_str().unwrap_or_default();
                assert!(model.starts_with("local/"), "{}: {model}", starter.slug);
            }
        }
    }

    #[test]
    fn workflows_run_on_a_shipped_team_that_has_every_agent_they_name() {
        for workflow in of_kind(Kind::Workflow) {
            let team = workflow.example.team.as_deref().and_then(find);
            let team = team.filter(|t| t.kind == Kind::Team);
            let team = team.unwrap_or_else(|| panic!("{}: example.team is not a TEAM starter", workflow.slug));
            let names = agent_names(team);
            for step in steps(workflow) {
                if let Some(agent) = step.get("agent") {
                    let agent = agent.as_str().unwrap_or_default();
                    assert!(names.contains(agent), "{}: {} has no agent `{agent}`", workflow.slug, team.slug);
                }
            }
        }
    }

    #[test]
    fn template_steps_use_shipped_query_starters() {
        let queries: HashSet<&str> = of_kind(Kind::Query).map(|s| s.slug.as_str()).collect();
        let mut used = 0;
        for workflow in of_kind(Kind::Workflow) {
            for step in steps(workflow).iter().filter_map(|step| step.get("template")) {
                let slug = step.as_str().unwrap_or_default();
                assert!(queries.contains(slug), "{}: `{slug}` is not a QUERY starter", workflow.slug);
                used += 1;
            }
        }
        assert!(used > 0, "some workflow should show a template step");
    }

    #[test]
    fn demo_conversations_are_realistic_and_name_who_answers() {
        for demo in of_kind(Kind::Demo) {
            let messages = demo.body["conversation"].as_array().unwrap();
            assert!((4..=8).contains(&messages.len()), "{}: {} messages", demo.slug, messages.len());
            let names = agent_names(demo);
            for message in messages.iter().filter(|m| m["role"] == "assistant") {
                let agent = message["agent"].as_str().unwrap_or_default();
                assert!(names.contains(agent), "{}: an answer by `{agent}`, not an agent of the team", demo.slug);
            }
        }
    }

    #[test]
    fn examples_say_how_to_run_each_kind() {
        for starter in all() {
            let example = &starter.example;
            match starter.kind {
                Kind::Team | Kind::Demo => assert!(example.input.is_some(), "{}: no input", starter.slug),
                Kind::Workflow => assert!(example.team.is_some(), "{}: no team", starter.slug),
                Kind::Query => assert!(example.input.is_none(), "{}: a query runs its rendered prompt", starter.slug),
            }
        }
    }

    #[test]
    fn reformatting_a_definition_keeps_its_digest_and_editing_it_does_not() {
        let text = r#"{"slug": "x", "kind": "query", "name": "X", "description": "d", "category": "language",
            "body": {"prompt": "hi"}, "example": {}}"#;
        let reordered = json!({"example": {}, "body": {"prompt": "hi"}, "category": "language", "description": "d",
            "name": "X", "kind": "query", "slug": "x"});
        let edited = text.replace("\"hi\"", "\"hello\"");
        let digest = |text: &str| parse("query/x.json", text).unwrap().digest;
        assert_eq!(digest(text), digest(&serde_json::to_string_pretty(&reordered).unwrap()));
        assert_ne!(digest(text), digest(&edited));
        assert_eq!(digest(text).len(), 64);
    }

    /// These run `body`'s checks and rendering over the shipped files.
    mod checked_by_body {
        use serde_json::{Map, json};

        use super::*;
        use crate::service::templates::body::{Checked, StepSource};

        fn checked(starter: &Starter) -> Checked {
            body::check(starter.kind, &starter.body, &starter.variables, &body::Allowed::default())
                .unwrap_or_else(|problems| panic!("{}: {problems:?}", starter.slug))
        }

        fn example_values(starter: &Starter) -> Map<String, Value> {
            body::values(&checked(starter).variables, &starter.example.variables)
                .unwrap_or_else(|problems| panic!("{}: {problems:?}", starter.slug))
        }

        #[test]
        fn every_starter_passes_the_body_check() {
            for starter in all() {
                checked(starter);
            }
        }

        #[test]
        fn every_example_gives_valid_values() {
            for starter in all() {
                example_values(starter);
            }
        }

        #[test]
        fn every_team_and_demo_renders_its_system_prompts_from_the_example() {
            for starter in of_kind(Kind::Team).chain(of_kind(Kind::Demo)) {
                let spec = body::team_spec(starter.kind, &checked(starter).body, &example_values(starter))
                    .unwrap_or_else(|problems| panic!("{}: {problems:?}", starter.slug));
                assert!(!spec.to_string().contains("{{"), "{}: {spec}", starter.slug);
            }
        }

        #[test]
        fn every_query_renders_from_its_example() {
            for query in of_kind(Kind::Query) {
                let prompt = checked(query).body["prompt"].as_str().unwrap_or_default().to_string();
                let text = body::render("body.prompt", &prompt, &example_values(query))
                    .unwrap_or_else(|problems| panic!("{}: {problems:?}", query.slug));
                assert!(!text.contains("{{") && !text.contains("{%"), "{}: {text}", query.slug);
            }
        }

        /// Each step rendered in order, as a run would, with a stand-in for each agent's answer.
        #[test]
        fn every_workflow_renders_each_step_from_its_example() {
            for workflow in of_kind(Kind::Workflow) {
                let mut context = example_values(workflow);
                let mut outputs = Map::new();
                for (i, step) in body::steps(&checked(workflow).body).into_iter().enumerate() {
                    context.insert("steps".into(), Value::Object(outputs.clone()));
                    let path = format!("{}: body.steps[{i}]", workflow.slug);
                    let rendered = match step.source {
                        StepSource::Prompt(text) => body::render(&path, &text, &context),
                        StepSource::Template { template, variables, .. } => {
                            query_step(&path, &template, &variables, &context)
                        }
                    };
                    let rendered = rendered.unwrap_or_else(|problems| panic!("{path}: {problems:?}"));
                    assert!(!rendered.contains("{{"), "{path}: {rendered}");
                    outputs.insert(step.id.clone(), json!({"output": format!("[agent] the answer to {}", step.id)}));
                }
            }
        }

        fn query_step(
            path: &str,
            slug: &str,
            variables: &Map<String, Value>,
            context: &Map<String, Value>,
        ) -> Result<String, Vec<crate::error::Problem>> {
            let query = find(slug).unwrap_or_else(|| panic!("{path}: no QUERY starter `{slug}`"));
            let mut given = Map::new();
            for (name, value) in variables {
                let value = match value {
                    Value::String(text) => Value::String(body::render(path, text, context)?),
                    other => other.clone(),
                };
                given.insert(name.clone(), value);
            }
            let query = checked(query);
            let values = body::values(&query.variables, &Value::Object(given))?;
            body::render(path, query.body["prompt"].as_str().unwrap_or_default(), &values)
        }
    }
}
