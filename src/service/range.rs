//! The time range of an analytics or audit query, checked once for every operation that takes
//! one: `from` before `to`, at most `MAX_DAYS` long, and defaults when either end is left out.

use chrono::{DateTime, Duration, Utc};

use crate::error::{AppError, Problem};

/// The longest range any query accepts.
pub const MAX_DAYS: i64 = 400;

/// A checked, half-open range `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl TimeRange {
    /// The range asked for: `to` defaults to now and `from` to `default_span` before `to`.
    pub fn resolve(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        default_span: Duration,
    ) -> Result<Self, AppError> {
        let to = to.unwrap_or_else(Utc::now);
        let from = from.unwrap_or(to - default_span);
        if from > to {
            return Err(invalid("range.from", format!("`from` ({from}) is after `to` ({to}).")));
        }
        if to - from > Duration::days(MAX_DAYS) {
            return Err(invalid(
                "range",
                format!("A range may span at most {MAX_DAYS} days; this one spans {} days.", (to - from).num_days()),
            ));
        }
        Ok(Self { from, to })
    }

    pub fn duration(&self) -> Duration {
        self.to - self.from
    }

    /// The range in whole Unix seconds, widened outwards: a `to` of 12:05:00.4 becomes
    /// 12:05:01, so whatever happened during its last second is inside.
    pub fn seconds(&self) -> (i64, i64) {
        let to = self.to.timestamp() + i64::from(self.to.timestamp_subsec_nanos() > 0);
        (self.from.timestamp(), to)
    }
}

fn invalid(path: &str, message: String) -> AppError {
    AppError::BadUserInput { message: message.clone(), problems: vec![Problem::new(path, message)] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_order_and_length_and_fills_defaults() {
        let to = Utc::now();
        let range = TimeRange::resolve(None, Some(to), Duration::hours(24)).unwrap();
        assert_eq!(range.duration(), Duration::hours(24));
        assert!(TimeRange::resolve(Some(to), Some(to - Duration::seconds(1)), Duration::hours(1)).is_err());
        assert!(TimeRange::resolve(Some(to - Duration::days(401)), Some(to), Duration::hours(1)).is_err());
        assert!(TimeRange::resolve(Some(to - Duration::days(400)), Some(to), Duration::hours(1)).is_ok());
    }

    #[test]
    fn seconds_keep_the_last_part_second_inside() {
        // 2027-01-15 08:00:00 UTC, the start of a minute.
        let minute = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let range = |to| TimeRange { from: minute - Duration::hours(1), to };
        let just_after = minute + Duration::milliseconds(400);
        assert_eq!(range(just_after).seconds(), (minute.timestamp() - 3_600, minute.timestamp() + 1));
        assert_eq!(range(minute).seconds().1, minute.timestamp());
    }
}
