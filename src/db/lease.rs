//! Named leases (docs/write-path.md, "The audit chain"): a row of `leases` says which instance
//! holds a name until when. Claiming is one batch on every database — make sure the row exists,
//! then one conditional `UPDATE … RETURNING` that takes it only when it is free, expired or
//! already ours — so two instances claiming at once cannot both win, on D1 included.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    DbErr,
    sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, SelectStatement},
};

use super::batch::{Batch, BatchWriter};

/// The lease of the instance that writes the audit chain of a D1 database.
pub const AUDIT: &str = "audit";

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours until `until`.
    Held { until: DateTime<Utc> },
    /// Another holder's until `until`.
    Taken { holder: String, until: DateTime<Utc> },
}

/// Takes (or renews) lease `name` for `holder` for `ttl`, unless another holder has it and it
/// has not expired.
pub async fn claim(writer: &dyn BatchWriter, name: &str, holder: &str, ttl: Duration) -> Result<Claim, DbErr> {
    let now = Utc::now().trunc_subsecs(6);
    let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    let leases = Alias::new("leases");
    let [name_col, holder_col, expires_col] = ["name", "holder", "expires_at"].map(Alias::new);
    let exists = Query::insert()
        .into_table(leases.clone())
        .columns([name_col.clone()])
        .values_panic([name.into()])
        .on_conflict(OnConflict::column(name_col.clone()).do_nothing().to_owned())
        .to_owned();
    let take = Query::update()
        .table(leases.clone())
        .value(holder_col.clone(), holder)
        .value(expires_col.clone(), until)
        .and_where(Expr::col(name_col.clone()).eq(name))
        .and_where(
            Expr::col(holder_col.clone())
                .is_null()
                .or(Expr::col(holder_col.clone()).eq(holder))
                .or(Expr::col(expires_col.clone()).lt(now)),
        )
        .returning(Query::returning().column(expires_col.clone()))
        .to_owned();
    let current = Query::select()
        .columns([holder_col, expires_col])
        .from(leases)
        .and_where(Expr::col(name_col).eq(name))
        .to_owned();
    let batch = Batch::new(writer.backend()).write(&exists).write_returning(&take).read(&current);
    let results = writer.run(batch).await?;
    if !results[1].rows.is_empty() {
        return Ok(Claim::Held { until });
    }
    let row = results[2].rows.first().ok_or_else(|| DbErr::RecordNotFound(format!("lease {name}")))?;
    let holder: Option<String> = row.try_get("", "holder")?;
    let until: Option<DateTime<Utc>> = row.try_get("", "expires_at")?;
    Ok(Claim::Taken { holder: holder.unwrap_or_default(), until: until.unwrap_or(now) })
}

/// A query answering a row while `holder` holds lease `name`, for a batch to assert.
pub fn held_by(name: &str, holder: &str) -> SelectStatement {
    Query::select()
        .expr(Expr::val(1))
        .from(Alias::new("leases"))
        .and_where(Expr::col(Alias::new("name")).eq(name))
        .and_where(Expr::col(Alias::new("holder")).eq(holder))
        .to_owned()
}

/// Gives lease `name` up if `holder` has it, so the next instance need not wait for it to expire.
pub async fn release(writer: &dyn BatchWriter, name: &str, holder: &str) -> Result<(), DbErr> {
    let free = Query::update()
        .table(Alias::new("leases"))
        .value(Alias::new("holder"), Option::<String>::None)
        .value(Alias::new("expires_at"), Option::<DateTime<Utc>>::None)
        .and_where(Expr::col(Alias::new("name")).eq(name))
        .and_where(Expr::col(Alias::new("holder")).eq(holder))
        .to_owned();
    writer.run(Batch::new(writer.backend()).write(&free)).await?;
    Ok(())
}

/// A name a person recognises: the host, the process id and a short random suffix (two servers
/// in containers may share a host name and a pid).
pub fn holder_name() -> String {
    let host = host_name().unwrap_or_else(|| "unknown-host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host} pid {} ({})", std::process::id(), &suffix[..6])
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if status != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_names_the_host_and_the_process() {
        let name = holder_name();
        assert!(name.contains(&format!(" pid {} (", std::process::id())), "{name}");
        assert_ne!(name, holder_name(), "a random suffix sets two claims apart");
    }
}
