//! Races on the write path made to happen: an audit chain whose writer lands a change of the
//! test's just before a mutation's batch, after its reads (as another instance would), or
//! refuses every batch.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ensemble::{
    db::batch::{Batch, BatchError, BatchWriter, SqlxWriter, StepResult},
    service::audit::AuditChain,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, StatementBuilder};

pub struct Meanwhile {
    db: DatabaseConnection,
    writer: SqlxWriter,
    /// One change before each of the next batches.
    changes: Mutex<VecDeque<Statement>>,
    /// Every batch fails instead (after its change, if any).
    refuse: bool,
}

impl Meanwhile {
    /// A chain whose next batches each find one of `changes` committed just before them.
    pub fn chain(db: &DatabaseConnection, changes: Vec<Statement>) -> Arc<AuditChain> {
        Self::build(db, changes, false)
    }

    /// A chain none of whose batches commits: each fails as a lost database would.
    pub fn refusing(db: &DatabaseConnection) -> Arc<AuditChain> {
        Self::build(db, Vec::new(), true)
    }

    fn build(db: &DatabaseConnection, changes: Vec<Statement>, refuse: bool) -> Arc<AuditChain> {
        let writer =
            Self { db: db.clone(), writer: SqlxWriter::new(db.clone()), changes: Mutex::new(changes.into()), refuse };
        Arc::new(AuditChain::new(db.clone(), Arc::new(writer)))
    }
}

/// `statement` as the database of `db` runs it.
pub fn sql(db: &DatabaseConnection, statement: &impl StatementBuilder) -> Statement {
    db.get_database_backend().build(statement)
}

#[async_trait]
impl BatchWriter for Meanwhile {
    fn backend(&self) -> DbBackend {
        self.writer.backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        let change = self.changes.lock().expect("the changes' lock").pop_front();
        if let Some(change) = change {
            self.db.execute_raw(change).await.expect("the change made meanwhile");
        }
        if self.refuse {
            return Err(BatchError::Other(DbErr::Custom("the database went away".into())));
        }
        self.writer.run(batch).await
    }
}
