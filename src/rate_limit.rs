//! Rate limits per principal (API key, user, or the address of an anonymous caller): GCRA,
//! an operation costing one unit per 100 complexity points (at least one). With Redis the
//! allowance is kept there, so it holds across instances (one Lua script per check, keys
//! expiring once the allowance is full again); without Redis, or while it is unavailable, in
//! this process through governor, whose idle keys are dropped every minute.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

use crate::{domain::Principal, events::Link};

/// Complexity points that cost one unit.
const POINTS_PER_UNIT: usize = 100;
/// Longest wait for Redis before the local allowance decides.
const SHARED_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA over a key holding the theoretical arrival time in microseconds. ARGV: the emission
/// interval and the burst tolerance (both in microseconds) and the units charged. Answers 0
/// when allowed, else the microseconds to wait.
const GCRA: &str = r#"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval, tolerance, units = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + units * interval
local wait = next_tat - tolerance - now
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
"#;

pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: governor::clock::DefaultClock,
    /// Microseconds between units at the sustained rate.
    interval_us: u64,
    burst: u32,
    shared: Option<Shared>,
    /// Checks refused since start (`/metrics`).
    refused: AtomicU64,
}

/// The allowance kept in Redis.
struct Shared {
    link: Arc<Link>,
    script: redis::Script,
}

/// Refused: try again after this many seconds.
#[derive(Debug)]
pub struct Limited {
    pub retry_after_secs: u64,
}

impl RateLimits {
    /// `per_minute` units sustained with bursts of `burst`; 0 turns limiting off. With `link`
    /// the allowance is shared through Redis while it is reachable.
    pub fn new(per_minute: u32, burst: u32, link: Option<Arc<Link>>) -> Self {
        let burst = if burst == 0 { per_minute } else { burst };
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
        });
        let shared = link.map(|link| Shared { link, script: redis::Script::new(GCRA) });
        Self {
            limiter,
            clock: governor::clock::DefaultClock::default(),
            interval_us: 60_000_000 / u64::from(per_minute.max(1)),
            burst,
            shared,
            refused: AtomicU64::new(0),
        }
    }

    /// Operations refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Charges `complexity` to the principal's allowance.
    pub async fn check(&self, principal: &Principal, ip: Option<&str>, complexity: usize) -> Result<(), Limited> {
        let verdict = self.verdict(principal, ip, complexity).await;
        if verdict.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    async fn verdict(&self, principal: &Principal, ip: Option<&str>, complexity: usize) -> Result<(), Limited> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = match principal {
            Principal::ApiKey(key) => format!("key:{}", key.key_id),
            Principal::User(user) => format!("user:{}", user.id),
            Principal::Anonymous => format!("ip:{}", ip.unwrap_or("unknown")),
            Principal::System(_) => return Ok(()),
        };
        let units = NonZeroU32::new((complexity / POINTS_PER_UNIT).max(1).min(u32::MAX as usize) as u32)
            .unwrap_or(NonZeroU32::MIN);
        if let Some(shared) = &self.shared
            && let Some(verdict) = self.check_shared(shared, &key, units.get()).await
        {
            return verdict;
        }
        match limiter.check_key_n(&key, units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Limited { retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0) })
            }
            // More units than the burst allows at all: this operation can never pass.
            Err(_) => Err(Limited { retry_after_secs: 60 }),
        }
    }

    /// The verdict of the allowance in Redis; none when Redis cannot give one in time.
    async fn check_shared(&self, shared: &Shared, key: &str, units: u32) -> Option<Result<(), Limited>> {
        if units > self.burst {
            return Some(Err(Limited { retry_after_secs: 60 }));
        }
        let mut connection = shared.link.connection()?;
        let mut call = shared.script.key(format!("{}:rate:{key}", shared.link.namespace()));
        call.arg(self.interval_us).arg(self.interval_us * u64::from(self.burst)).arg(units);
        let wait_us = match tokio::time::timeout(SHARED_TIMEOUT, call.invoke_async::<u64>(&mut connection)).await {
            Ok(Ok(wait_us)) => wait_us,
            Ok(Err(error)) => {
                tracing::warn!(%error, "the shared rate limit is unavailable; counting on this instance");
                return None;
            }
            Err(_) => return None,
        };
        Some(match wait_us {
            0 => Ok(()),
            wait => Err(Limited { retry_after_secs: wait.div_ceil(1_000_000) }),
        })
    }

    /// Forgets principals whose allowance is full again (run every minute).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_burst_is_allowed_then_the_next_request_waits() {
        let limits = RateLimits::new(60, 3, None);
        let anonymous = Principal::Anonymous;
        for _ in 0..3 {
            assert!(limits.check(&anonymous, Some("10.0.0.1"), 1).await.is_ok());
        }
        let limited = limits.check(&anonymous, Some("10.0.0.1"), 1).await.unwrap_err();
        assert!((1..=1).contains(&limited.retry_after_secs), "{limited:?}");
        assert!(limits.check(&anonymous, Some("10.0.0.2"), 1).await.is_ok(), "another caller is not limited");
    }

    #[tokio::test]
    async fn complex_operations_cost_more() {
        let limits = RateLimits::new(60, 5, None);
        assert!(limits.check(&Principal::Anonymous, None, 500).await.is_ok());
        assert!(limits.check(&Principal::Anonymous, None, 100).await.is_err(), "the 500-point query used the burst");
    }

    #[tokio::test]
    async fn zero_turns_limiting_off() {
        let limits = RateLimits::new(0, 0, None);
        for _ in 0..1000 {
            assert!(limits.check(&Principal::Anonymous, None, 5000).await.is_ok());
        }
    }
}
