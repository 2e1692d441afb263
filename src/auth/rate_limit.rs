//! Rate limits per principal (API key, user, or the address of an anonymous caller): GCRA
//! through governor, an operation costing one unit per 100 complexity points (at least one).
//! Idle keys are dropped every minute, so the limiter's memory stays bounded.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};

use super::Principal;

/// Complexity points that cost one unit.
const POINTS_PER_UNIT: usize = 100;

pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: governor::clock::DefaultClock,
}

/// Refused: try again after this many seconds.
#[derive(Debug)]
pub struct Limited {
    pub retry_after_secs: u64,
}

impl RateLimits {
    /// `per_minute` units sustained with bursts of `burst`; 0 turns limiting off.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self { limiter, clock: governor::clock::DefaultClock::default() }
    }

    /// Charges `complexity` to the principal's allowance.
    pub fn check(&self, principal: &Principal, ip: Option<&str>, complexity: usize) -> Result<(), Limited> {
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

    /// Forgets principals whose allowance is full again (run every minute).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_allowed_then_the_next_request_waits() {
        let limits = RateLimits::new(60, 3);
        let anonymous = Principal::Anonymous;
        for _ in 0..3 {
            assert!(limits.check(&anonymous, Some("10.0.0.1"), 1).is_ok());
        }
        let limited = limits.check(&anonymous, Some("10.0.0.1"), 1).unwrap_err();
        assert!((1..=1).contains(&limited.retry_after_secs), "{limited:?}");
        assert!(limits.check(&anonymous, Some("10.0.0.2"), 1).is_ok(), "another caller is not limited");
    }

    #[test]
    fn complex_operations_cost_more() {
        let limits = RateLimits::new(60, 5);
        assert!(limits.check(&Principal::Anonymous, None, 500).is_ok());
        assert!(limits.check(&Principal::Anonymous, None, 100).is_err(), "the 500-point query used the burst");
    }

    #[test]
    fn zero_turns_limiting_off() {
        let limits = RateLimits::new(0, 0);
        for _ in 0..1000 {
            assert!(limits.check(&Principal::Anonymous, None, 5000).is_ok());
        }
    }
}
