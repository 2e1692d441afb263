//! Workflows: `runWorkflow` runs a WORKFLOW template's steps, in order, on a team.

use async_graphql::{Context, ID, Object};
use serde_json::Value;

use super::{caller, runs::Run};
use crate::{
    error::GqlResultExt,
    graphql::scalars::Json,
    service::templates::workflow::{self, StepResult, StepStatus, WorkflowResult, WorkflowStatus},
    state::AppState,
};

#[derive(Default)]
pub struct WorkflowsMutation;

#[Object]
impl WorkflowsMutation {
    /// Runs a WORKFLOW template's steps in order on a team (operators and up; API keys need
    /// `runs:execute`), each step one run waited for. A step that fails stops the workflow; the
    /// steps after it are SKIPPED. Missing, mistyped or unknown variables and step agents the
    /// team lacks are BAD_USER_INPUT, all listed, before anything runs.
    async fn run_workflow(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The WORKFLOW template, by id or slug; its current version runs.")] template_id: ID,
        #[graphql(desc = "The team whose agents answer the steps.")] team_id: ID,
        #[graphql(desc = "The workflow's variables (a JSON object), checked against its declarations.")]
        variables: Option<Json<Value>>,
    ) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        let variables = variables.map_or(Value::Null, |v| v.0);
        workflow::run(&state.templates, &state.runner, &caller(ctx), &template_id, &team_id, &variables)
            .await
            .map(WorkflowRun)
            .gql()
    }
}

/// A WORKFLOW template run on a team: its steps, in order.
pub struct WorkflowRun(WorkflowResult);

#[Object]
impl WorkflowRun {
    /// The template that ran.
    async fn template_id(&self) -> ID {
        ID(self.0.template_id.clone())
    }
    /// The version of the template that ran.
    async fn template_version(&self) -> i32 {
        self.0.template_version
    }
    /// The team whose agents answered.
    async fn team_id(&self) -> ID {
        ID(self.0.team_id.clone())
    }
    /// SUCCEEDED when every step did; FAILED when one failed.
    async fn status(&self) -> WorkflowStatus {
        self.0.status
    }
    /// The id of the step that failed; null when none did.
    async fn failed_step(&self) -> Option<&str> {
        self.0.failed_step.as_deref()
    }
    /// Every step of the workflow, in order, skipped ones included.
    async fn steps(&self) -> Vec<WorkflowStep<'_>> {
        self.0.steps.iter().map(WorkflowStep).collect()
    }
}

/// One step of a workflow run.
pub struct WorkflowStep<'a>(&'a StepResult);

#[Object]
impl<'a> WorkflowStep<'a> {
    /// The step's id in the workflow.
    async fn id(&self) -> &str {
        &self.0.id
    }
    /// The agent the step names; null when the team's routing chose (the run says which).
    async fn agent(&self) -> Option<&str> {
        self.0.agent.as_deref()
    }
    /// The rendered prompt the step sent; null when it could not be rendered, or was skipped.
    async fn input(&self) -> Option<&str> {
        self.0.input.as_deref()
    }
    /// SUCCEEDED, FAILED, or SKIPPED after an earlier step failed.
    async fn status(&self) -> StepStatus {
        self.0.status
    }
    /// The step's run; null when it started none.
    async fn run(&self) -> Option<Run> {
        self.0.run.clone().map(Run)
    }
    /// The run's answer, which later steps read as `{{ steps.<id>.output }}`; null unless the
    /// step succeeded.
    async fn output(&self) -> Option<&str> {
        self.0.output.as_deref()
    }
    /// Why the step failed: a render problem, a refused run, or the run's own error.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}
