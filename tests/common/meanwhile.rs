//! A change that lands between a mutation's read and its batch: an audit chain whose writer
//! runs another writer's change once, just before the first batch it is given, so a service
//! called with it meets the race its guards stand for.

use std::{future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use ensemble::{
    db::batch::{Batch, BatchError, BatchWriter, StepResult},
    service::audit::AuditChain,
    state::AppState,
};
use sea_orm::DbBackend;
use tokio::sync::Mutex;

type Change = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Meanwhile {
    writer: Arc<dyn BatchWriter>,
    change: Mutex<Option<Change>>,
}

#[async_trait]
impl BatchWriter for Meanwhile {
    fn backend(&self) -> DbBackend {
        self.writer.backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        let change = self.change.lock().await.take();
        if let Some(change) = change {
            change.await;
        }
        self.writer.run(batch).await
    }
}

/// An audit chain over the server's database whose first batch waits for `change` to finish
/// first (pass it to a service as its `audit`).
pub fn chain(state: &AppState, change: impl Future<Output = ()> + Send + 'static) -> AuditChain {
    let writer = Meanwhile { writer: state.writer.clone(), change: Mutex::new(Some(Box::pin(change))) };
    AuditChain::new(state.db.clone(), Arc::new(writer))
}
