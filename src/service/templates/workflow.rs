//! `runWorkflow`: a WORKFLOW template's steps run in order through the orchestrator, each as a
//! run of the given team; later steps read earlier outputs as `{{ steps.<id>.output }}`.

use std::sync::Arc;

use entity::{runs, states::RunStatus, teams};
use serde_json::{Map, Value, json};

use super::{
    Resolved,
    body::{self, Kind, Step, StepSource},
};
use crate::{
    auth::guard,
    db::batch::{Batch, OnGuard},
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
    orchestrator::spec,
    service::{
        audit::{AuditChain, Audited, Entry, actions},
        runs::{RunInput, Runner},
        templates::Templates,
    },
};

/// How a workflow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum WorkflowStatus {
    /// Every step succeeded.
    Succeeded,
    /// A step failed; the steps after it did not run.
    Failed,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// How one step of a workflow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
#[graphql(name = "WorkflowStepStatus")]
pub enum StepStatus {
    /// Its run succeeded.
    Succeeded,
    /// Its text could not be rendered, or its run did not succeed.
    Failed,
    /// Not run: an earlier step failed.
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// A workflow run on a team: every step, in order.
#[derive(Clone, Debug)]
pub struct WorkflowResult {
    pub template_id: String,
    pub template_version: i32,
    pub team_id: String,
    pub status: WorkflowStatus,
    /// The id of the step that failed, when one did.
    pub failed_step: Option<String>,
    pub steps: Vec<StepResult>,
}

/// One step of a workflow run.
#[derive(Clone, Debug)]
pub struct StepResult {
    pub id: String,
    /// The agent the step names; none when the team's routing chose.
    pub agent: Option<String>,
    /// The rendered prompt the step's run was sent.
    pub input: Option<String>,
    pub status: StepStatus,
    /// The step's run, when it started one.
    pub run: Option<runs::Model>,
    /// The run's answer, when it succeeded.
    pub output: Option<String>,
    /// Why the step failed.
    pub error: Option<String>,
}

impl StepResult {
    fn new(step: &Step, status: StepStatus) -> Self {
        Self {
            id: step.id.clone(),
            agent: step.agent.clone(),
            input: None,
            status,
            run: None,
            output: None,
            error: None,
        }
    }

    /// The step failed before its run ended; internal errors fail the whole request instead.
    fn failed(mut self, error: AppError) -> Result<Self, AppError> {
        self.status = StepStatus::Failed;
        self.error = Some(match error {
            AppError::Internal(_) | AppError::Unavailable(_) => return Err(error),
            AppError::BadUserInput { problems, .. } if !problems.is_empty() => {
                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            }
            other => other.to_string(),
        });
        Ok(self)
    }

    /// The step as its run left it after the wait.
    fn ran(mut self, run: runs::Model, wait_secs: u64) -> Self {
        match run.status {
            RunStatus::Succeeded => {
                self.status = StepStatus::Succeeded;
                self.output = Some(run.output.clone().unwrap_or_default());
            }
            RunStatus::Queued | RunStatus::Running => {
                self.status = StepStatus::Failed;
                self.error = Some(format!(
                    "the run was still going after {wait_secs} s, the wait limit; the workflow stopped here"
                ));
            }
            status => {
                self.status = StepStatus::Failed;
                let why = run.error.clone().unwrap_or_else(|| "no reason given".into());
                self.error = Some(format!("the run {status}: {why}"));
            }
        }
        self.run = Some(run);
        self
    }
}

/// Runs a WORKFLOW template's steps in order on a team (operators and up; API keys need
/// `runs:execute`), waiting for each run. The first step that fails ends the workflow; the
/// steps after it are skipped. Bad variables and step agents the team lacks are refused, all
/// of them at once, before any step runs. Audited once it ends.
#[tracing::instrument(skip_all, fields(template = %template, team = %team_id))]
pub async fn run(
    templates: &Templates,
    runner: &Arc<Runner>,
    caller: &Caller,
    template: &str,
    team_id: &str,
    variables: &Value,
) -> Result<WorkflowResult, AppError> {
    let resolved = templates.resolve(caller, template, None).await?;
    if resolved.kind != Kind::Workflow {
        let kind = resolved.kind.to_string().to_uppercase();
        return Err(AppError::BadUserInput {
            message: format!("`{template}` is a {kind} template, not a WORKFLOW."),
            problems: vec![Problem::new("templateId", format!("is a {kind} template; only WORKFLOW templates run"))],
        });
    }
    let access = guard::team(runner.db(), caller, team_id, TeamRole::Operator).await?;
    let steps = body::steps(&resolved.version.body);
    let values = check(&resolved, &access.team, &steps, variables)?;
    let steps = run_steps(templates, runner, caller, team_id, &steps, values).await?;
    for step in &steps {
        runner.metrics().runs.workflow_step(step.status.as_str());
    }
    let failed_step = steps.iter().find(|s| s.status == StepStatus::Failed).map(|s| s.id.clone());
    let result = WorkflowResult {
        template_id: resolved.template.id.clone(),
        template_version: resolved.version.version,
        team_id: team_id.to_string(),
        status: if failed_step.is_some() { WorkflowStatus::Failed } else { WorkflowStatus::Succeeded },
        failed_step,
        steps,
    };
    record(templates.audit(), caller, &result).await?;
    Ok(result)
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
    let missing = steps.iter().enumerate().filter_map(|(i, step)| {
        let agent = step.agent.as_deref().filter(|agent| !names.contains(agent))?;
        let message = format!("the team has no agent `{agent}`; it has {}", names.join(", "));
        Some(Problem::new(format!("body.steps[{i}].agent"), message))
    });
    Ok(missing.collect())
}

/// Runs the steps in order, each seeing the outputs of those before it; once one fails, the
/// rest are skipped. Each step's run gets the workflow's values as its variables, for the
/// team's routing rules and system prompts.
async fn run_steps(
    templates: &Templates,
    runner: &Arc<Runner>,
    caller: &Caller,
    team_id: &str,
    steps: &[Step],
    values: Map<String, Value>,
) -> Result<Vec<StepResult>, AppError> {
    let variables = Value::Object(values.clone());
    let mut context = values;
    let mut outputs = Map::new();
    let mut results: Vec<StepResult> = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        // The previous step failed or was skipped.
        if results.last().is_some_and(|last| last.status != StepStatus::Succeeded) {
            results.push(StepResult::new(step, StepStatus::Skipped));
            continue;
        }
        context.insert("steps".into(), Value::Object(outputs.clone()));
        let result = run_step(templates, runner, caller, team_id, (index, step), &context, &variables).await?;
        if let Some(output) = &result.output {
            outputs.insert(result.id.clone(), json!({ "output": output }));
        }
        results.push(result);
    }
    Ok(results)
}

/// Renders one step's text and runs it with the workflow's `variables`, waiting for the run.
async fn run_step(
    templates: &Templates,
    runner: &Arc<Runner>,
    caller: &Caller,
    team_id: &str,
    (index, step): (usize, &Step),
    context: &Map<String, Value>,
    variables: &Value,
) -> Result<StepResult, AppError> {
    let mut result = StepResult::new(step, StepStatus::Failed);
    let content = match prompt(templates, caller, index, &step.source, context).await {
        Ok(content) => content,
        Err(error) => return result.failed(error),
    };
    result.input = Some(content.clone());
    let input =
        RunInput { content, agent: step.agent.clone(), variables: Some(variables.clone()), ..Default::default() };
    match runner.start(caller, team_id, input, true).await {
        Ok(run) => Ok(result.ran(run, runner.wait_secs())),
        Err(error) => result.failed(error),
    }
}

/// The text a step sends: its own prompt, or its QUERY template's prompt rendered with the
/// step's variables (each string value rendered first), rendered with `context`.
async fn prompt(
    templates: &Templates,
    caller: &Caller,
    index: usize,
    source: &StepSource,
    context: &Map<String, Value>,
) -> Result<String, AppError> {
    let path = format!("body.steps[{index}]");
    let (template, version, variables) = match source {
        StepSource::Prompt(text) => {
            return body::render(&format!("{path}.prompt"), text, context).map_err(unrenderable);
        }
        StepSource::Template { template, version, variables } => (template, *version, variables),
    };
    let given = render_variables(&path, variables, context)?;
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

/// The audit row of a workflow that ran, a batch of its own.
async fn record(audit: &AuditChain, caller: &Caller, result: &WorkflowResult) -> Result<(), AppError> {
    let runs: Vec<&str> = result.steps.iter().filter_map(|s| s.run.as_ref()).map(|r| r.id.as_str()).collect();
    let changes = json!({
        "teamId": result.team_id,
        "version": result.template_version,
        "status": result.status.as_str(),
        "failedStep": result.failed_step,
        "runs": runs,
    });
    let entry = Entry::new(actions::WORKFLOW_RUN, "template", result.template_id.clone())
        .team(result.team_id.clone())
        .changes(changes);
    let only_the_row =
        || async { Ok(Audited { batch: Batch::new(audit.writer().backend()), entry: entry.clone(), answer: () }) };
    audit.write(caller, only_the_row, |_, _| OnGuard::Retry).await?;
    Ok(())
}
