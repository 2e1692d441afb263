//! Recomputing the chain, 1,000 rows at a time: each row's hash from its contents and the hash
//! before it, `seq` without gaps and, over the whole log, `audit_head` agreeing with the last row.

use entity::{audit_head, audit_logs};
use migration::m0002_audit_chain::GENESIS;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::link_hash;
use crate::{auth::guard, domain::Caller, error::AppError, service::range::TimeRange};

const PAGE: u64 = 1000;

/// The result of recomputing the chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Verification {
    /// Rows read, up to and including the first broken one.
    pub rows: u64,
    /// The first broken link: the `seq` of a changed row, or the first missing `seq`.
    pub first_broken: Option<i64>,
    /// What is wrong, in words.
    pub problem: Option<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// `verify` for an admin; anyone else is refused.
pub async fn verify_as(
    db: &DatabaseConnection,
    caller: &Caller,
    range: Option<TimeRange>,
) -> Result<Verification, AppError> {
    guard::admin(caller)?;
    verify(db, range).await
}

/// Recomputes the rows whose `ts` lies in `range`, linked to the row just before them; without
/// a range, the whole log and its head.
pub async fn verify(db: &DatabaseConnection, range: Option<TimeRange>) -> Result<Verification, AppError> {
    match range {
        Some(range) => within(db, range).await,
        None => whole(db).await,
    }
}

async fn whole(db: &DatabaseConnection) -> Result<Verification, AppError> {
    // The head first: rows appended while we walk lie beyond it and are left for the next check.
    let Some(head) = audit_head::Entity::find_by_id(1).one(db).await? else {
        return Ok(Walk::start(0, GENESIS).broken(None, "the chain head (audit_head) is missing".into()));
    };
    let mut walk = Walk::start(0, GENESIS);
    if let Some(broken) = walk.run(db, head.seq).await? {
        return Ok(broken);
    }
    Ok(walk.against_head(&head))
}

async fn within(db: &DatabaseConnection, range: TimeRange) -> Result<Verification, AppError> {
    let bounds: Option<(Option<i64>, Option<i64>)> = audit_logs::Entity::find()
        .select_only()
        .column_as(audit_logs::Column::Seq.min(), "first")
        .column_as(audit_logs::Column::Seq.max(), "last")
        .filter(audit_logs::Column::Ts.gte(range.from))
        .filter(audit_logs::Column::Ts.lt(range.to))
        .into_tuple()
        .one(db)
        .await?;
    let Some((Some(first), Some(last))) = bounds else {
        return Ok(Walk::start(0, GENESIS).done());
    };
    let before = audit_logs::Entity::find()
        .filter(audit_logs::Column::Seq.lt(first))
        .order_by_desc(audit_logs::Column::Seq)
        .one(db)
        .await?;
    let mut walk = before.map_or(Walk::start(0, GENESIS), |row| Walk::start(row.seq, &row.hash));
    Ok(walk.run(db, last).await?.unwrap_or_else(|| walk.done()))
}

/// A walk along the chain: the last row that held, and how many rows were read.
struct Walk {
    after: i64,
    prev_hash: String,
    rows: u64,
}

impl Walk {
    fn start(after: i64, prev_hash: &str) -> Self {
        Self { after, prev_hash: prev_hash.to_string(), rows: 0 }
    }

    /// Reads the rows after `self.after` up to `until`; the first broken link, if any.
    async fn run(&mut self, db: &DatabaseConnection, until: i64) -> Result<Option<Verification>, AppError> {
        loop {
            let page = audit_logs::Entity::find()
                .filter(audit_logs::Column::Seq.gt(self.after))
                .filter(audit_logs::Column::Seq.lte(until))
                .order_by_asc(audit_logs::Column::Seq)
                .limit(PAGE)
                .all(db)
                .await?;
            for row in &page {
                self.rows += 1;
                if let Some((seq, problem)) = self.check(row) {
                    return Ok(Some(self.broken(Some(seq), problem)));
                }
                self.prev_hash.clone_from(&row.hash);
                self.after = row.seq;
            }
            if (page.len() as u64) < PAGE {
                return Ok(None);
            }
        }
    }

    fn check(&self, row: &audit_logs::Model) -> Option<(i64, String)> {
        let expected = self.after + 1;
        if row.seq != expected {
            let missing = match row.seq - expected {
                1 => format!("row {expected} is missing"),
                _ => format!("rows {expected} to {} are missing", row.seq - 1),
            };
            let jump = match self.after {
                0 => format!("the log starts at row {}", row.seq),
                after => format!("seq jumps from {after} to {}", row.seq),
            };
            return Some((expected, format!("{missing}: {jump}")));
        }
        if link_hash(row) != row.hash {
            let why = "its hash does not match its contents";
            return Some((row.seq, format!("row {} was changed after it was written: {why}", row.seq)));
        }
        if row.prev_hash != self.prev_hash {
            let why = format!("its prev_hash is not the hash of row {}, so one of the two was rewritten", self.after);
            return Some((row.seq, format!("row {} does not link to the row before it: {why}", row.seq)));
        }
        None
    }

    /// The last row read must be the one the head records (a deleted or rewritten last row shows here).
    fn against_head(&self, head: &audit_head::Model) -> Verification {
        if self.after < head.seq {
            let why = format!("the log ends at row {} but the chain head records row {}", self.after, head.seq);
            let missing = self.after + 1;
            return self.broken(Some(missing), format!("row {missing} is missing: {why}"));
        }
        if self.prev_hash != head.hash {
            let why = "its hash is not the one the chain head recorded, so it was rewritten";
            return self
                .broken(Some(self.after), format!("row {} was changed after it was written: {why}", self.after));
        }
        self.done()
    }

    fn broken(&self, seq: Option<i64>, problem: String) -> Verification {
        Verification { rows: self.rows, first_broken: seq, problem: Some(problem) }
    }

    fn done(&self) -> Verification {
        Verification { rows: self.rows, first_broken: None, problem: None }
    }
}
