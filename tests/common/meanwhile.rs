//! Races on the write path made to happen: a writer that lands a change of the test's just
//! before a batch, after the mutation's reads (as another instance, or a second caller, would),
//! or refuses every batch. A service called with an audit chain (or the `Templates`) over such a
//! writer meets the race its guards stand for.

use std::{collections::VecDeque, future::Future, sync::Arc};

use async_trait::async_trait;
use ensemble::{
    db::batch::{Batch, BatchError, BatchWriter, StepResult},
    domain::Caller,
    service::{audit::AuditChain, templates::Templates},
    state::AppState,
};
use futures_util::future::BoxFuture;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, StatementBuilder};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::TestApp;

/// A writer that runs one of its changes before each of its next batches, then hands the batch
/// to the server's own writer.
pub struct Meanwhile {
    inner: Arc<dyn BatchWriter>,
    changes: Mutex<VecDeque<BoxFuture<'static, ()>>>,
    /// Every batch fails instead (after its change, if any).
    refuse: bool,
}

impl Meanwhile {
    /// A writer whose first batch runs after `change`.
    pub fn new(state: &AppState, change: impl Future<Output = ()> + Send + 'static) -> Self {
        let changes: VecDeque<BoxFuture<'static, ()>> = VecDeque::from([Box::pin(change) as BoxFuture<'static, ()>]);
        Self { inner: state.writer.clone(), changes: Mutex::new(changes), refuse: false }
    }

    /// A chain whose next batches each find one of `changes` committed just before them.
    pub fn chain(state: &AppState, changes: Vec<Statement>) -> Arc<AuditChain> {
        Self::build(state, changes, false)
    }

    /// A chain none of whose batches commits: each fails as a lost database would.
    pub fn refusing(state: &AppState) -> Arc<AuditChain> {
        Self::build(state, Vec::new(), true)
    }

    fn build(state: &AppState, changes: Vec<Statement>, refuse: bool) -> Arc<AuditChain> {
        let changes = changes.into_iter().map(|change| {
            let db = state.db.clone();
            Box::pin(async move {
                db.execute_raw(change).await.expect("the change made meanwhile");
            }) as BoxFuture<'static, ()>
        });
        let writer = Self { inner: state.writer.clone(), changes: Mutex::new(changes.collect()), refuse };
        Arc::new(AuditChain::new(state.db.clone(), Arc::new(writer)))
    }
}

#[async_trait]
impl BatchWriter for Meanwhile {
    fn backend(&self) -> DbBackend {
        self.inner.backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        let change = self.changes.lock().await.pop_front();
        if let Some(change) = change {
            change.await;
        }
        if self.refuse {
            return Err(BatchError::Other(DbErr::Custom("the database went away".into())));
        }
        self.inner.run(batch).await
    }
}

/// An audit chain over the server's database whose first batch waits for `change` to finish
/// first (pass it to a service as its `audit`).
pub fn chain(state: &AppState, change: impl Future<Output = ()> + Send + 'static) -> AuditChain {
    AuditChain::new(state.db.clone(), Arc::new(Meanwhile::new(state, change)))
}

/// `statement` as the database of `db` runs it.
pub fn sql(db: &DatabaseConnection, statement: &impl StatementBuilder) -> Statement {
    db.get_database_backend().build(statement)
}

/// The services of an instance whose first batch meets a change.
pub struct Instance {
    pub writer: Arc<Meanwhile>,
    pub audit: Arc<AuditChain>,
    pub templates: Templates,
}

impl TestApp {
    /// An instance over this server's database whose first batch runs after `change`.
    pub fn meanwhile(&self, change: impl Future<Output = ()> + Send + 'static) -> Instance {
        let db = self.state.db.clone();
        let writer = Arc::new(Meanwhile::new(&self.state, change));
        let audit = Arc::new(AuditChain::new(db.clone(), writer.clone()));
        let allowed = ensemble::service::templates::body::Allowed {
            providers: self.state.config.runs.providers.clone(),
            max_iterations: self.state.config.runs.workflow_max_iterations,
        };
        let templates = Templates::new(db, audit.clone(), self.state.caches.clone(), allowed);
        Instance { writer, audit, templates }
    }

    /// An operation, sent when awaited, that must succeed: a change to make meanwhile.
    pub fn later(&self, token: &str, query: &str, variables: Value) -> impl Future<Output = ()> + Send + use<> {
        let request = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({"query": query, "variables": variables}));
        async move {
            let answer: Value = request.send().await.expect("request sent").json().await.expect("JSON answer");
            assert!(answer.get("errors").is_none(), "the change made meanwhile failed: {answer}");
        }
    }

    /// The caller that `token` stands for, to call services directly.
    pub async fn caller(&self, token: &str) -> Caller {
        Caller { principal: self.state.auth.from_token(token).await.expect("a valid token"), meta: Default::default() }
    }
}
