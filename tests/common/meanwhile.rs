//! Another instance beside a test's server: its own audit chain and writer over the same
//! database, whose first batch runs only after a change made in the moment between that batch's
//! read and its commit (what a second instance, or a second caller, can do then). Tests of the
//! write path's guards use it.

use std::{future::Future, sync::Arc};

use async_trait::async_trait;
use ensemble::{
    db::batch::{Batch, BatchError, BatchWriter, SqlxWriter, StepResult},
    domain::Caller,
    service::{audit::AuditChain, templates::Templates},
};
use futures_util::future::BoxFuture;
use sea_orm::DbBackend;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::TestApp;

/// A writer that lets `change` land before the first batch it runs.
pub struct Meanwhile {
    inner: SqlxWriter,
    change: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl Meanwhile {
    pub fn new(db: sea_orm::DatabaseConnection, change: impl Future<Output = ()> + Send + 'static) -> Self {
        Self { inner: SqlxWriter::new(db), change: Mutex::new(Some(Box::pin(change))) }
    }
}

#[async_trait]
impl BatchWriter for Meanwhile {
    fn backend(&self) -> DbBackend {
        self.inner.backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        if let Some(change) = self.change.lock().await.take() {
            change.await;
        }
        self.inner.run(batch).await
    }
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
        let writer = Arc::new(Meanwhile::new(db.clone(), change));
        let audit = Arc::new(AuditChain::new(db.clone(), writer.clone()));
        let providers = self.state.config.runs.providers.clone();
        let templates = Templates::new(db, audit.clone(), self.state.caches.clone(), providers);
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
