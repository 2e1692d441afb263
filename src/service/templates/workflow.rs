//! A WORKFLOW template made ready to run: its version, steps and checked variables
//! (`prepare`), and the text each step sends (`prompt`). `service::workflows` runs them.

use entity::teams;
use serde_json::{Map, Value};

use super::{
    Resolved,
    body::{self, Kind, Step, StepSource},
};
use crate::{
    auth::guard,
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
    orchestrator::spec,
    service::templates::Templates,
};

/// A workflow checked against its team, ready to start.
pub struct Planned {
    pub resolved: Resolved,
    pub steps: Vec<Step>,
    /// The variables, checked, with defaults filled in.
    pub values: Map<String, Value>,
}

/// Resolves `template` (its `version`, else the current one) as a WORKFLOW and checks it
/// against team `team_id` (operators and up; API keys need `runs:execute`): bad variables and
/// step agents the team lacks are refused, all of them at once, before any step runs.
pub async fn prepare(
    templates: &Templates,
    caller: &Caller,
    template: &str,
    version: Option<i32>,
    team_id: &str,
    variables: &Value,
) -> Result<Planned, AppError> {
    let resolved = templates.resolve(caller, template, version).await?;
    if resolved.kind != Kind::Workflow {
        let kind = resolved.kind.to_string().to_uppercase();
        return Err(AppError::BadUserInput {
            message: format!("`{template}` is a {kind} template, not a WORKFLOW."),
            problems: vec![Problem::new("templateId", format!("is a {kind} template; only WORKFLOW templates run"))],
        });
    }
    let access = guard::team(templates.db(), caller, team_id, TeamRole::Operator).await?;
    let steps = body::steps(&resolved.version.body);
    let values = check(&resolved, &access.team, &steps, variables)?;
    Ok(Planned { resolved, steps, values })
}

/// The workflow's values with defaults filled in, or every problem with them and with the
/// steps' agents.
fn check(
    resolved: &Resolved,
    team: &teams::Model,
    steps: &[Step],
    given: &Value,
) -> Result<Map<String, Value>, AppError> {
    let mut problems = Vec::new();
    let values = body::values(&resolved.variables(), given).unwrap_or_else(|found| {
        problems.extend(found);
        Map::new()
    });
    problems.extend(missing_agents(team, steps)?);
    AppError::refuse(problems).map(|()| values)
}

/// A problem for each step naming an agent the team's current spec does not have.
fn missing_agents(team: &teams::Model, steps: &[Step]) -> Result<Vec<Problem>, AppError> {
    // Only the agents' names matter here: whether their providers are reachable is the run's.
    let spec = spec::parse(&team.spec, &|_| true).map_err(|problems| {
        let first = problems.first().map(ToString::to_string).unwrap_or_default();
        AppError::BadUserInput { message: format!("The team's current spec is not valid: {first}"), problems }
    })?;
    let names: Vec<&str> = spec.agents.iter().map(|a| a.name.as_str()).collect();
    let missing = steps.iter().filter_map(|step| {
        let agent = step.agent.as_deref().filter(|agent| !names.contains(agent))?;
        let message = format!("the team has no agent `{agent}`; it has {}", names.join(", "));
        Some(Problem::new(format!("{}.agent", step.path), message))
    });
    Ok(missing.collect())
}

/// The text a step sends: its own prompt, or its QUERY template's prompt rendered with the
/// step's variables (each string value rendered first), rendered with `context`.
pub async fn prompt(
    templates: &Templates,
    caller: &Caller,
    step: &Step,
    context: &Map<String, Value>,
) -> Result<String, AppError> {
    let path = &step.path;
    let (template, version, variables) = match &step.source {
        StepSource::Prompt(text) => {
            return body::render(&format!("{path}.prompt"), text, context).map_err(unrenderable);
        }
        StepSource::Template { template, version, variables } => (template, *version, variables),
    };
    let given = render_variables(path, variables, context)?;
    let query = templates.resolve(caller, template, version).await.map_err(|error| match error {
        AppError::NotFound(message) => AppError::NotFound(format!("template `{template}`: {message}")),
        other => other,
    })?;
    if query.kind != Kind::Query {
        let kind = query.kind.to_string().to_uppercase();
        return Err(AppError::bad_input(format!(
            "template `{template}` is a {kind} template; steps run QUERY templates"
        )));
    }
    let values = query.values(&Value::Object(given))?;
    let text = query.version.body.get("prompt").and_then(Value::as_str).unwrap_or_default();
    body::render(&format!("template `{template}` body.prompt"), text, &values).map_err(unrenderable)
}

/// A template step's variables with every string value rendered with `context`.
fn render_variables(
    path: &str,
    variables: &Map<String, Value>,
    context: &Map<String, Value>,
) -> Result<Map<String, Value>, AppError> {
    let mut problems = Vec::new();
    let mut rendered = Map::new();
    for (name, value) in variables {
        let value = match value {
            Value::String(text) => match body::render(&format!("{path}.variables.{name}"), text, context) {
                Ok(text) => Value::String(text),
                Err(found) => {
                    problems.extend(found);
                    continue;
                }
            },
            other => other.clone(),
        };
        rendered.insert(name.clone(), value);
    }
    if problems.is_empty() { Ok(rendered) } else { Err(unrenderable(problems)) }
}

fn unrenderable(problems: Vec<Problem>) -> AppError {
    AppError::invalid(problems)
}
