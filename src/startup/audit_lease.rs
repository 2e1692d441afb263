//! The `audit` lease of a server on D1 (docs/write-path.md, "The audit chain"): one instance
//! writes a D1 database's audit chain. It is claimed at start, renewed every third of its TTL by a
//! background task, and released at shutdown so the next server need not wait for it to expire.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use crate::db::{
    batch::BatchWriter,
    lease::{self, Claim},
};

/// How long a claim lasts when it is not renewed (a server that died frees it after this).
pub const TTL: Duration = Duration::from_secs(60);

/// Another server holds the lease: who, and until when.
#[derive(Debug)]
pub struct Taken {
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// This server's claim, renewed in the background until [`AuditLease::release`] (or until it is
/// dropped: then it is left to expire).
pub struct AuditLease {
    holder: String,
    writer: Arc<dyn BatchWriter>,
    renewing: tokio::task::JoinHandle<()>,
}

impl AuditLease {
    /// Claims the lease for this process, or says who has it.
    pub async fn claim(writer: Arc<dyn BatchWriter>) -> Result<Result<Self, Taken>, sea_orm::DbErr> {
        let holder = lease::holder_name();
        match lease::claim(writer.as_ref(), lease::AUDIT, &holder, TTL).await? {
            Claim::Taken { holder, until } => Ok(Err(Taken { holder, until })),
            Claim::Held { until } => {
                tracing::info!(%holder, %until, "holding the audit lease of this D1 database");
                let renewing = tokio::spawn(renew(writer.clone(), holder.clone()));
                Ok(Ok(Self { holder, writer, renewing }))
            }
        }
    }

    /// Who holds it: this server's name in the lease row.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Stops renewing and gives the lease up.
    pub async fn release(self) {
        self.renewing.abort();
        match lease::release(self.writer.as_ref(), lease::AUDIT, &self.holder).await {
            Ok(()) => tracing::info!(holder = %self.holder, "audit lease released"),
            Err(error) => {
                tracing::warn!(%error, "cannot release the audit lease; it expires within {} s", TTL.as_secs())
            }
        }
    }
}

impl Drop for AuditLease {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// Renews the claim every third of the TTL, so two failed renewals in a row still leave it held.
async fn renew(writer: Arc<dyn BatchWriter>, holder: String) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TTL / 3, TTL / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match lease::claim(writer.as_ref(), lease::AUDIT, &holder, TTL).await {
            Ok(Claim::Held { .. }) => {}
            Ok(Claim::Taken { holder: other, until }) => tracing::error!(
                %other, %until,
                "the audit lease was taken by another server: this one's audit writes now fail their guard"
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot renew the audit lease; trying again in {} s", (TTL / 3).as_secs())
            }
        }
    }
}
