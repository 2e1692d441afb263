//! Runs: checked and stored before they start, executed in a task of their own (so a client
//! that goes away does not stop them), finished in one batch that writes the run, every
//! attempt, the answer in its conversation, the day's usage and the error group. The same
//! `Runner` cancels runs and recovers the ones a crash left behind.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, SubsecRound, Utc};
use entity::{
    error_groups, run_attempts, runs,
    states::{ErrorCode, RunStatus},
    team_versions,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    sea_query::Expr,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot, watch};

use super::{
    budgets::{self, Amount},
    conversations::{self, NewMessage, Thread},
    estimates,
    page::{Page, PageRequest},
    prices::PriceBook,
    run_writer::{RUN_ENDED, RunEnd, RunWriter},
    usage,
};
use crate::{
    auth::guard,
    cache::{Caches, TeamVersion},
    config::RunConfig,
    db::batch::{Attempts, Batch, BatchError, BatchWriter, Expect, MAX_PARAMS, OnGuard},
    domain::{Caller, Principal, RunEvent, RunEventKind, TeamRole},
    error::{AppError, Problem},
    events::{EventBus, Notice, Reach},
    metrics::Metrics,
    orchestrator::{
        executor::{self, Outcome, Price, RunContext, Status},
        prompts,
        providers::{ChatMessage, Providers, Role},
        routing::{self, Route},
        spec::{self, MAX_TIMEOUT_MS, TeamSpec},
    },
};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct RunInput {
    pub content: String,
    pub variables: Option<Value>,
    /// A version to pin; the current one when absent.
    pub version: Option<i32>,
    pub conversation_id: Option<String>,
    /// Answer from this message (a new branch when it already has answers).
    pub parent_message_id: Option<String>,
    /// Run this agent of the team, skipping routing.
    pub agent: Option<String>,
    /// A shorter time limit than the team's, in milliseconds (a workflow step's `timeoutMs`).
    pub timeout_ms: Option<u64>,
    /// A retry policy in place of the team's (a workflow step's `retry`).
    pub retry: Option<spec::RetryPolicy>,
    /// A lower cost limit than the team's, in US dollars (what a workflow has left).
    pub max_cost_usd: Option<f64>,
    /// Which answer of its agent within a workflow run this is (`local/script` reads it).
    pub turn: Option<u32>,
}

/// A run's input checked against its team, routed, with the messages its models are sent.
pub struct Prepared {
    /// The spec version it runs.
    pub version: i32,
    /// That version's spec, its system prompts rendered with the run's variables.
    pub spec: Arc<TeamSpec>,
    /// Where it goes in a conversation, when it is in one.
    pub thread: Option<Thread>,
    pub route: Route,
    /// What follows each agent's system prompt: the conversation so far, then the new message.
    pub messages: Vec<ChatMessage>,
}

/// A run in progress on this instance: how to cancel it and how to learn it ended.
struct Active {
    cancel: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

pub struct Runner {
    db: DatabaseConnection,
    config: RunConfig,
    providers: Providers,
    pub prices: PriceBook,
    pub events: Arc<EventBus>,
    /// Parsed specs by team and version (among the other caches).
    caches: Arc<Caches>,
    active: Mutex<HashMap<String, Active>>,
    /// Commits the batches of reservations and of lost runs' ends.
    writer: Arc<dyn BatchWriter>,
    /// Stores runs as they start and end, many to a batch.
    run_writer: RunWriter,
    metrics: Arc<Metrics>,
}

impl Runner {
    pub fn new(
        db: DatabaseConnection,
        writer: Arc<dyn BatchWriter>,
        config: RunConfig,
        events: Arc<EventBus>,
        caches: Arc<Caches>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let providers = Providers::new(&config.providers, Duration::from_secs(config.provider_timeout_secs));
        Self {
            metrics,
            prices: PriceBook::new(db.clone(), caches.clone()),
            caches,
            active: Mutex::new(HashMap::new()),
            run_writer: RunWriter::spawn(db.clone(), writer.clone()),
            writer,
            db,
            config,
            providers,
            events,
        }
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Seconds `wait: true` waits for a run before answering with it still running.
    pub fn wait_secs(&self) -> u64 {
        self.config.run_wait_secs
    }

    /// Runs executing on this instance.
    pub fn in_progress(&self) -> usize {
        self.active.lock().map_or(0, |active| active.len())
    }

    /// Checks and stores a run, starts it, and (with `wait`) waits for it up to the configured
    /// limit. Answers the run as it then is.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        team_id: &str,
        input: RunInput,
        wait: bool,
    ) -> Result<runs::Model, AppError> {
        let (run, ended) = self.begin(caller, team_id, input).await?;
        if wait {
            let limit = Duration::from_secs(self.config.run_wait_secs);
            if let Ok(Ok(Some(ended))) = tokio::time::timeout(limit, ended).await {
                return Ok(ended);
            }
            return self.reload(&run.id).await;
        }
        Ok(run)
    }

    /// Checks, stores and starts a run. Answers it as stored, and a receiver of the run as
    /// stored at its end (none when the end could not be stored as it happened), however long
    /// it takes: what a workflow step waits on.
    pub async fn begin(
        self: &Arc<Self>,
        caller: &Caller,
        team_id: &str,
        input: RunInput,
    ) -> Result<(runs::Model, oneshot::Receiver<Option<runs::Model>>), AppError> {
        let Prepared { version, spec, thread, route, messages } =
            self.prepare(caller, team_id, &input, TeamRole::Operator).await?;
        let spec = self.overridden(spec, &input);
        let prices = self.prices_of(&spec).await;
        let answer_limit = self.default_max_tokens(&caller.principal);
        let estimate =
            estimates::count(spec.clone(), route.agent.clone(), messages.clone(), prices.clone(), answer_limit).await?;
        let now = Utc::now().trunc_subsecs(6);
        let reserved = self.reserve(&caller.principal, &budgets::day_of(now), Amount::worst_case(&estimate)).await?;
        let (user_id, api_key_id) = principal_ids(&caller.principal);
        let mut run = runs::Model {
            id: format!("run_{}", uuid::Uuid::now_v7().simple()),
            team_id: team_id.to_string(),
            team_version: version,
            conversation_id: thread.as_ref().map(|t| t.conversation_id.clone()),
            user_id,
            api_key_id,
            status: RunStatus::Running,
            input: input.content.clone(),
            variables: input.variables.clone(),
            message_id: None,
            routed_agent: Some(route.agent.clone()),
            rule: route.rule.clone(),
            rule_reason: Some(route.reason.clone()),
            agent: Some(route.agent.clone()),
            model: None,
            output: None,
            response_message_id: None,
            attempts: 0,
            retries: 0,
            fallbacks: 0,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            latency_ms: None,
            error_code: None,
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            estimated_cost_usd: Some(estimate.expected_cost_usd),
            estimated_max_cost_usd: Some(estimate.worst_case_cost_usd),
            reserved_tokens: reserved.map(|amount| amount.tokens),
            reserved_nano_usd: reserved.map(|amount| amount.nano_usd),
        };
        let message = thread.as_ref().map(|thread| {
            conversations::new_message(NewMessage {
                conversation_id: &thread.conversation_id,
                parent_id: thread.parent_id.clone(),
                role: Role::User,
                agent: None,
                content: &input.content,
                run_id: &run.id,
                usage: (0, 0, 0.0),
            })
        });
        run.message_id = message.as_ref().map(|m| m.id.clone());
        if let Err(error) = self.run_writer.start(run.clone(), message).await {
            // Not stored: what it reserved goes back at once.
            let reserved = budgets::settlements(&run, Amount::default());
            if let Err(error) = budgets::give_back(self.writer.as_ref(), reserved).await {
                tracing::error!(run = %run.id, %error, "cannot give back the budget of a run that could not be stored");
            }
            return Err(error);
        }
        self.metrics.runs.run_started();

        self.events.publish(RunEvent::new(&run.id, team_id, RunEventKind::Queued));
        let mut routed = RunEvent::new(&run.id, team_id, RunEventKind::Routed);
        routed.agent = Some(route.agent.clone());
        routed.rule = route.rule.clone();
        routed.reason = Some(route.reason.clone());
        self.events.publish(routed);

        let turn = input.turn.unwrap_or(1);
        let ended = self.launch(run.clone(), spec, (route.agent, turn), messages, prices);
        Ok((run, ended))
    }

    /// Checks `input` against the team (the caller needs `role` on it), renders the system
    /// prompts with its variables and routes it: all a run does before it is stored, and all an
    /// estimate of it needs.
    pub async fn prepare(
        &self,
        caller: &Caller,
        team_id: &str,
        input: &RunInput,
        role: TeamRole,
    ) -> Result<Prepared, AppError> {
        let variables = self.check(input)?;
        let access = guard::team(&self.db, caller, team_id, role).await?;
        let (version, spec) = self.spec(&access.team, input.version).await?;
        let thread = conversations::thread_for_run(
            &self.db,
            team_id,
            input.conversation_id.as_deref(),
            input.parent_message_id.as_deref(),
        )
        .await?;
        let spec = prompts::render(&spec, &variables).map_err(AppError::invalid)?;
        let route = match &input.agent {
            Some(agent) => asked_for(&spec, agent)?,
            None => routing::route(&spec, &input.content, &variables),
        };
        let mut messages = thread.as_ref().map(|t| t.history.clone()).unwrap_or_default();
        messages.push(ChatMessage { role: Role::User, content: input.content.clone() });
        Ok(Prepared { version, spec, thread, route, messages })
    }

    /// `spec` with the run's own time and cost limits (the lower one wins) and retry policy,
    /// when it has them.
    fn overridden(&self, spec: Arc<TeamSpec>, input: &RunInput) -> Arc<TeamSpec> {
        if input.timeout_ms.is_none() && input.retry.is_none() && input.max_cost_usd.is_none() {
            return spec;
        }
        let mut spec = (*spec).clone();
        if let Some(ms) = input.timeout_ms {
            let team = spec.limits.timeout_ms.unwrap_or(self.config.run_timeout_ms);
            spec.limits.timeout_ms = Some(ms.min(team));
        }
        if let Some(usd) = input.max_cost_usd {
            spec.limits.max_cost_usd = Some(spec.limits.max_cost_usd.map_or(usd, |team| team.min(usd)));
        }
        if let Some(retry) = &input.retry {
            spec.retry = retry.clone();
        }
        Arc::new(spec)
    }

    /// The answer limit of agents without `maxTokens` in runs of `principal`: one when a daily
    /// budget holds them, so that their worst case has a bound.
    pub fn default_max_tokens(&self, principal: &Principal) -> Option<u32> {
        budgets::applies(principal, &self.config).then_some(budgets::BUDGETED_ANSWER_TOKENS)
    }

    /// Reserves a run's worst case against the daily budgets of `principal` (none when no
    /// budget applies); QUOTA_EXCEEDED when it does not fit.
    async fn reserve(&self, principal: &Principal, day: &str, worst_case: Amount) -> Result<Option<Amount>, AppError> {
        match budgets::reserve(&self.db, self.writer.as_ref(), principal, &self.config, day, worst_case).await? {
            Ok(reserved) => Ok(reserved),
            Err(refused) => {
                self.metrics.runs.budget_refused(&refused.holder.to_string(), refused.measure.as_str());
                Err(refused.error)
            }
        }
    }

    /// The prices of the spec's models, from the price book's cache. A run goes on without
    /// them (priced at zero) rather than failing because they cannot be read.
    async fn prices_of(&self, spec: &TeamSpec) -> HashMap<String, Price> {
        self.prices.for_models(spec.agents.iter().map(|a| a.model.as_str())).await.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read model prices; the run is priced at zero");
            HashMap::new()
        })
    }

    fn check(&self, input: &RunInput) -> Result<Map<String, Value>, AppError> {
        let mut problems = Vec::new();
        if input.content.trim().is_empty() {
            problems.push(Problem::new("input.content", "must not be empty"));
        }
        if input.content.len() > self.config.max_input_bytes {
            problems.push(Problem::new(
                "input.content",
                format!("is {} bytes; the limit is {}", input.content.len(), self.config.max_input_bytes),
            ));
        }
        let variables = match &input.variables {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => {
                problems.push(Problem::new("input.variables", "must be a JSON object"));
                Map::new()
            }
        };
        // Stored on the run and rendered into prompts: held to the same limit as the content.
        let variables_bytes = serde_json::to_string(&variables).map_or(usize::MAX, |json| json.len());
        if variables_bytes > self.config.max_input_bytes {
            problems.push(Problem::new(
                "input.variables",
                format!("are {variables_bytes} bytes as JSON; the limit is {}", self.config.max_input_bytes),
            ));
        }
        AppError::refuse(problems).map(|()| variables)
    }

    /// The version to run and its parsed spec: the pinned one, else the current one.
    async fn spec(&self, team: &entity::teams::Model, pinned: Option<i32>) -> Result<(i32, Arc<TeamSpec>), AppError> {
        let version = pinned.unwrap_or(team.version);
        let key = TeamVersion { team_id: team.id.clone(), version };
        let spec = self.caches.team_specs.get_or_load(key, self.parse_spec(team, version)).await?;
        Ok((version, spec))
    }

    /// Version `version` of the team's spec, read (unless current) and parsed.
    async fn parse_spec(&self, team: &entity::teams::Model, version: i32) -> Result<Arc<TeamSpec>, AppError> {
        let document = if version == team.version {
            team.spec.clone()
        } else {
            team_versions::Entity::find_by_id((team.id.clone(), version))
                .one(&self.db)
                .await?
                .ok_or_else(|| AppError::BadUserInput {
                    message: format!("The team has no version {version}; its latest is {}.", team.version),
                    problems: vec![Problem::new("input.version", format!("between 1 and {}", team.version))],
                })?
                .spec
        };
        let spec = spec::parse(&document, &|provider| self.config.providers.known(provider)).map_err(|problems| {
            let first = problems.first().map(ToString::to_string).unwrap_or_default();
            let message = format!("Version {version} of the team's spec is not valid: {first}");
            AppError::BadUserInput { message, problems }
        })?;
        Ok(Arc::new(spec))
    }

    /// Starts the run's task; the receiver gets the run as stored at its end (none when the
    /// end could not be stored as it happened).
    fn launch(
        self: &Arc<Self>,
        run: runs::Model,
        spec: Arc<TeamSpec>,
        (agent, turn): (String, u32),
        messages: Vec<ChatMessage>,
        prices: HashMap<String, Price>,
    ) -> oneshot::Receiver<Option<runs::Model>> {
        let (cancel, cancelled) = watch::channel(false);
        let (ended, stored) = oneshot::channel();
        let (finished, done) = watch::channel(false);
        if let Ok(mut active) = self.active.lock() {
            active.insert(run.id.clone(), Active { cancel, done: done.clone() });
        }
        let runner = self.clone();
        tokio::spawn(async move {
            let outcome = runner.execute(&run, spec, (&agent, turn), messages, &prices, cancelled).await;
            let end = runner.finish(&run, &outcome).await.unwrap_or_else(|error| {
                tracing::error!(run = %run.id, %error, "cannot store the end of a run");
                None
            });
            if let Ok(mut active) = runner.active.lock() {
                active.remove(&run.id);
            }
            let _ = finished.send(true);
            let _ = ended.send(end);
        });
        stored
    }

    async fn execute(
        &self,
        run: &runs::Model,
        spec: Arc<TeamSpec>,
        (agent, turn): (&str, u32),
        history: Vec<ChatMessage>,
        prices: &HashMap<String, Price>,
        cancel: watch::Receiver<bool>,
    ) -> Outcome {
        let timeout = spec.limits.timeout_ms.unwrap_or(self.config.run_timeout_ms);
        let events = self.events.clone();
        let emit = move |event: RunEvent| events.publish(event);
        let context = RunContext {
            run_id: &run.id,
            team_id: &run.team_id,
            providers: &self.providers,
            prices,
            history,
            deadline: tokio::time::Instant::now() + Duration::from_millis(timeout),
            max_cost_usd: spec.limits.max_cost_usd,
            default_max_tokens: run.reserved_tokens.is_some().then_some(budgets::BUDGETED_ANSWER_TOKENS),
            turn,
            cancel,
            emit: &emit,
            metrics: &self.metrics.runs,
        };
        executor::execute(spec.clone(), agent, context).await
    }

    /// Stores the end of a run (with other runs' ends, in one transaction), then tells
    /// subscribers.
    async fn finish(&self, run: &runs::Model, outcome: &Outcome) -> Result<Option<runs::Model>, AppError> {
        let now = Utc::now().trunc_subsecs(6);
        let (tokens_in, tokens_out) = outcome.tokens();
        let cost = outcome.cost_usd();
        let status = match outcome.status {
            Status::Succeeded => RunStatus::Succeeded,
            Status::Failed => RunStatus::Failed,
            Status::Cancelled => RunStatus::Cancelled,
        };
        let answer = match (&run.conversation_id, &outcome.output) {
            (Some(conversation_id), Some(output)) => Some(conversations::new_message(NewMessage {
                conversation_id,
                parent_id: run.message_id.clone(),
                role: Role::Assistant,
                agent: Some(outcome.agent.clone()),
                content: output,
                run_id: &run.id,
                usage: (tokens_in as i64, tokens_out as i64, cost),
            })),
            _ => None,
        };
        let ended = runs::Model {
            status,
            agent: Some(outcome.agent.clone()),
            model: Some(outcome.model.clone()),
            output: outcome.output.clone(),
            response_message_id: answer.as_ref().map(|m| m.id.clone()),
            attempts: outcome.attempts.len() as i32,
            retries: outcome.retries as i32,
            fallbacks: outcome.fallbacks as i32,
            tokens_in: tokens_in as i64,
            tokens_out: tokens_out as i64,
            cost_usd: cost,
            latency_ms: Some((now - run.started_at.unwrap_or(run.created_at)).num_milliseconds().max(0)),
            error_code: outcome.error_code,
            error: outcome.error.clone(),
            finished_at: Some(now),
            ..run.clone()
        };
        let attempts = outcome
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| run_attempts::Model {
                run_id: run.id.clone(),
                seq: i as i32 + 1,
                agent: a.agent.clone(),
                model: a.model.clone(),
                attempt: a.attempt as i32,
                outcome: a.outcome,
                latency_ms: a.latency_ms as i64,
                tokens_in: i64::from(a.tokens_in),
                tokens_out: i64::from(a.tokens_out),
                cost_usd: a.cost_usd,
                backoff_ms: a.backoff_ms.map(|ms| ms as i64),
                error: a.error.clone(),
                started_at: a.started_at.trunc_subsecs(6),
            })
            .collect();
        let end = RunEnd {
            attempts,
            answer,
            usage: usage::run_rows(run, outcome),
            error: outcome
                .error_code
                .filter(|_| status == RunStatus::Failed)
                .map(|code| error_group(run, outcome, code, now)),
            budgets: budgets::settlements(run, Amount::spent((tokens_in + tokens_out) as i64, cost)),
            run: ended.clone(),
        };
        // Cancelled elsewhere while it ran: the row already says so.
        let stored = self.run_writer.finish(end).await?;
        if stored {
            self.metrics.runs.runs_finished(&status.to_string(), 1);
        }
        let status = if stored { status } else { RunStatus::Cancelled };
        let kind = match status {
            RunStatus::Succeeded => RunEventKind::Completed,
            RunStatus::Cancelled => RunEventKind::Cancelled,
            _ => RunEventKind::Failed,
        };
        let mut event = RunEvent::new(&run.id, &run.team_id, kind);
        event.agent = Some(outcome.agent.clone());
        event.model = Some(outcome.model.clone());
        event.error_class = outcome.error_code;
        event.error = outcome.error.clone();
        self.events.publish(event);
        Ok(stored.then_some(ended))
    }

    pub async fn reload(&self, run_id: &str) -> Result<runs::Model, AppError> {
        runs::Entity::find_by_id(run_id).one(&self.db).await?.ok_or_else(|| AppError::NotFound("No such run.".into()))
    }

    /// A run the caller may see (any role on its team).
    pub async fn get(&self, caller: &Caller, run_id: &str) -> Result<runs::Model, AppError> {
        let run = self.reload(run_id).await?;
        guard::team(&self.db, caller, &run.team_id, TeamRole::Viewer)
            .await
            .map_err(|_| AppError::NotFound("No such run.".into()))?;
        Ok(run)
    }

    /// A team's runs, newest first, optionally of one status and within a time range.
    pub async fn list(
        &self,
        caller: &Caller,
        team_id: &str,
        filter: RunFilter,
        page: &PageRequest,
    ) -> Result<Page<runs::Model>, AppError> {
        guard::team(&self.db, caller, team_id, TeamRole::Viewer).await?;
        let mut query = runs::Entity::find().filter(runs::Column::TeamId.eq(team_id));
        if let Some(status) = filter.status {
            query = query.filter(runs::Column::Status.eq(status));
        }
        if let Some(from) = filter.from {
            query = query.filter(runs::Column::CreatedAt.gte(from));
        }
        if let Some(to) = filter.to {
            query = query.filter(runs::Column::CreatedAt.lt(to));
        }
        if let Some(after) = &page.after {
            query = query.filter(runs::Column::Id.lt(after.as_str()));
        }
        let rows = query.order_by_desc(runs::Column::Id).limit(page.first + 1).all(&self.db).await?;
        Ok(page.page(rows))
    }

    /// Cancels a queued or running run and answers it once it has stopped.
    pub async fn cancel(&self, caller: &Caller, run_id: &str) -> Result<runs::Model, AppError> {
        let run = self.reload(run_id).await?;
        guard::team(&self.db, caller, &run.team_id, TeamRole::Operator).await.map_err(|e| match e {
            AppError::Forbidden(m) => AppError::Forbidden(m),
            _ => AppError::NotFound("No such run.".into()),
        })?;
        if run.status.is_finished() {
            return Err(AppError::Conflict(format!("The run has already finished ({}).", run.status)));
        }
        if !self.cancel_here(run_id).await && !self.cancel_elsewhere(&run).await {
            // Running nowhere (lost): mark it so that a runner's end, should one come, is ignored.
            // A run that ended meanwhile keeps its end, and is answered as it is.
            let end =
                End { status: RunStatus::Cancelled, code: ErrorCode::Cancelled, message: "the run was cancelled" };
            let ended = end_lost(&self.db, self.writer.as_ref(), vec![run.clone()], &end).await?;
            if ended > 0 {
                self.metrics.runs.runs_finished(&RunStatus::Cancelled.to_string(), ended);
                let mut event = RunEvent::new(run_id, &run.team_id, RunEventKind::Cancelled);
                event.error_class = Some(ErrorCode::Cancelled);
                self.events.publish(event);
            }
        }
        self.reload(run_id).await
    }
}

impl Runner {
    /// Stops the run if this instance is executing it, and waits (up to 10 s) for it to end;
    /// false when it is not running here.
    pub async fn cancel_here(&self, run_id: &str) -> bool {
        let active = self.active.lock().ok().and_then(|active| {
            active.get(run_id).map(|a| {
                let _ = a.cancel.send(true);
                a.done.clone()
            })
        });
        let Some(mut done) = active else {
            return false;
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), done.wait_for(|d| *d)).await;
        true
    }

    /// Asks the other instances to stop the run; false when its end does not come within 3 s
    /// (no instance was running it, or Redis is down).
    async fn cancel_elsewhere(&self, run: &runs::Model) -> bool {
        if self.events.reach() != Reach::Shared {
            return false;
        }
        let mut events = self.events.subscribe();
        self.events.tell_others(Notice::CancelRun(run.id.clone()));
        let ended = async {
            loop {
                match events.recv().await {
                    Ok(event) if event.run_id.as_str() == run.id && event.kind.is_terminal() => return true,
                    Err(broadcast::error::RecvError::Closed) => return false,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), ended).await.unwrap_or(false)
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// The last event of a finished run, for subscribers who arrive after it.
pub fn terminal_event(run: &runs::Model) -> RunEvent {
    let kind = match run.status {
        RunStatus::Succeeded => RunEventKind::Completed,
        RunStatus::Cancelled => RunEventKind::Cancelled,
        _ => RunEventKind::Failed,
    };
    let mut event = RunEvent::new(&run.id, &run.team_id, kind);
    event.at = run.finished_at.unwrap_or(run.created_at);
    event.agent = run.agent.clone();
    event.model = run.model.clone();
    event.error_class = run.error_code;
    event.error = run.error.clone();
    event
}

/// The route to an agent the caller named, if the team has it.
fn asked_for(spec: &TeamSpec, agent: &str) -> Result<Route, AppError> {
    if spec.agents.iter().any(|a| a.name == agent) {
        return Ok(Route { agent: agent.to_string(), rule: None, reason: format!("asked for agent `{agent}`") });
    }
    let names: Vec<&str> = spec.agents.iter().map(|a| a.name.as_str()).collect();
    Err(AppError::BadUserInput {
        message: format!("The team has no agent `{agent}`."),
        problems: vec![Problem::new(
            "input.agent",
            format!("the team has no agent `{agent}`; it has {}", names.join(", ")),
        )],
    })
}

pub fn principal_ids(principal: &Principal) -> (Option<String>, Option<String>) {
    match principal {
        Principal::User(user) => (Some(user.id.clone()), None),
        Principal::ApiKey(key) => (Some(key.owner.id.clone()), Some(key.key_id.clone())),
        Principal::Anonymous | Principal::System(_) => (None, None),
    }
}

/// Longest a run may be in progress: the largest `limits.timeoutMs`, and a minute to store it.
pub const LONGEST_RUN: Duration = Duration::from_millis(MAX_TIMEOUT_MS + 60_000);

/// Runs a stopped instance left `queued` or `running` are `failed` with code `interrupted`:
/// those created before `created_before` (the others may still be running on another
/// instance), or every one when no other instance runs. What they reserved goes back.
pub async fn recover_interrupted(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
    created_before: Option<DateTime<Utc>>,
) -> Result<u64, AppError> {
    let mut query = runs::Entity::find().filter(runs::Column::Status.is_in(IN_PROGRESS));
    if let Some(cutoff) = created_before {
        query = query.filter(runs::Column::CreatedAt.lt(cutoff));
    }
    let end = End {
        status: RunStatus::Failed,
        code: ErrorCode::Interrupted,
        message: "the server stopped while the run was in progress",
    };
    let mut recovered = 0;
    loop {
        let lost = query.clone().order_by_asc(runs::Column::Id).limit(RECOVERY_READ).all(db).await?;
        if lost.is_empty() {
            return Ok(recovered);
        }
        let mut ended = 0;
        for part in lost.chunks(RUNS_PER_BATCH) {
            ended += end_lost(db, writer, part.to_vec(), &end).await?;
        }
        recovered += ended;
        if ended == 0 {
            return Ok(recovered);
        }
    }
}

/// Lost runs read at a time.
const RECOVERY_READ: u64 = 500;

/// Lost runs ended per batch: each stands alone (its row and its budgets), so a part of the
/// runs read commits without the others.
const RUNS_PER_BATCH: usize = 50;

const IN_PROGRESS: [RunStatus; 2] = [RunStatus::Queued, RunStatus::Running];

/// How lost runs end.
struct End {
    status: RunStatus,
    code: ErrorCode,
    message: &'static str,
}

/// Ends `lost` runs, none of them running anywhere, in one batch: each run's row while it is
/// still queued or running (guarded), and what it reserved given back. A run whose end was
/// stored meanwhile keeps it (and its budgets): the batch is written again without it and the
/// runs read again with it found ended. Answers how many it ended.
async fn end_lost(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
    mut lost: Vec<runs::Model>,
    end: &End,
) -> Result<u64, AppError> {
    let mut attempts = Attempts::default();
    while !lost.is_empty() {
        let now = Utc::now().trunc_subsecs(6);
        let (batch, rows) = plan_end(writer.backend(), &lost, end, now);
        match writer.run(batch).await {
            Ok(_) => return Ok(lost.len() as u64),
            Err(BatchError::Guard { index, code: RUN_ENDED }) => {
                let Some(ended) = rows.iter().position(|step| *step == index).map(|run| &lost[run]) else {
                    return Err(AppError::internal(format!("guard `{RUN_ENDED}` on step {index}, not a run's row")));
                };
                let ended = ended.id.clone();
                let ids: Vec<&str> = lost.iter().map(|run| run.id.as_str()).filter(|id| *id != ended).collect();
                let open = in_progress(db, &ids).await?;
                lost.retain(|run| open.contains(&run.id));
            }
            Err(err) => attempts.failed(err, &|_, _| OnGuard::Retry).await?,
        }
    }
    Ok(0)
}

/// The batch that ends `lost`: per run, its row guarded on still in progress, then what it
/// reserved given back; and the step of each run's row.
fn plan_end(backend: DbBackend, lost: &[runs::Model], end: &End, now: DateTime<Utc>) -> (Batch, Vec<usize>) {
    let mut rows = Vec::with_capacity(lost.len());
    let batch = lost.iter().fold(Batch::new(backend), |batch, run| {
        rows.push(batch.len());
        let ended = runs::Entity::update_many()
            .col_expr(runs::Column::Status, Expr::value(end.status))
            .col_expr(runs::Column::ErrorCode, Expr::value(end.code))
            .col_expr(runs::Column::Error, Expr::value(end.message))
            .col_expr(runs::Column::FinishedAt, Expr::value(now))
            .filter(runs::Column::Id.eq(run.id.as_str()))
            .filter(runs::Column::Status.is_in(IN_PROGRESS))
            .into_query();
        let batch = batch.write(&ended).guard(Expect::One, RUN_ENDED);
        budgets::settle(batch, budgets::settlements(run, Amount::default()))
    });
    (batch, rows)
}

/// Which of the runs `ids` are still queued or running.
async fn in_progress(db: &DatabaseConnection, ids: &[&str]) -> Result<std::collections::HashSet<String>, AppError> {
    let mut open = std::collections::HashSet::new();
    for chunk in ids.chunks(MAX_PARAMS - IN_PROGRESS.len()) {
        let found: Vec<String> = runs::Entity::find()
            .select_only()
            .column(runs::Column::Id)
            .filter(runs::Column::Id.is_in(chunk.iter().copied()))
            .filter(runs::Column::Status.is_in(IN_PROGRESS))
            .into_tuple()
            .all(db)
            .await?;
        open.extend(found);
    }
    Ok(open)
}

/// The error group a run that failed with `code` counts in: team + agent + error code + the
/// message with its numbers blanked, so "took 1234 ms" and "took 987 ms" group together.
fn error_group(run: &runs::Model, outcome: &Outcome, code: ErrorCode, now: DateTime<Utc>) -> error_groups::Model {
    let message = normalise(outcome.error.as_deref().unwrap_or_default());
    let mut hasher = Sha256::new();
    for part in [run.team_id.as_str(), outcome.agent.as_str(), &code.to_string(), message.as_str()] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    error_groups::Model {
        fingerprint: hex::encode(&hasher.finalize()[..16]),
        team_id: run.team_id.clone(),
        agent: outcome.agent.clone(),
        code,
        message,
        count: 1,
        first_seen: now,
        last_seen: now,
        last_run_id: run.id.clone(),
        resolved_at: None,
    }
}

fn normalise(message: &str) -> String {
    let mut out = String::new();
    for word in message.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            // A run of digits becomes one `#`.
            if !c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('#') {
                out.push('#');
            }
        }
    }
    out.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_group_without_their_numbers() {
        assert_eq!(normalise("took  1234 ms on   attempt 2"), normalise("took 98 ms on attempt 3"));
        assert_ne!(normalise("connection refused"), normalise("connection reset"));
    }
}
