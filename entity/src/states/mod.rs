//! The fixed sets of strings that state columns hold, as Rust enums (docs/database.md): each is
//! a sea-orm active enum stored as its text, so the schema stays portable, and a stored value
//! that is not one of the set fails the read instead of becoming some other state.

mod access;
mod runs;
mod usage;
mod workflows;

pub use access::{GlobalRole, TeamRole, TemplateKind, TemplateVisibility, Visibility};
pub use runs::{AttemptOutcome, ErrorCode, MessageRole, RunStatus};
pub use usage::{BudgetHolder, Grain};
pub use workflows::{WorkflowStatus, WorkflowStepStatus};

/// `Display` writes the stored text (`RunStatus::Queued` → `queued`): for messages, metric
/// labels and audit changes, from the same `string_value`s the database reads and writes.
macro_rules! stored_text {
    ($($state:ty),* $(,)?) => {$(
        impl std::fmt::Display for $state {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&sea_orm::ActiveEnum::to_value(self))
            }
        }
    )*};
}

stored_text!(
    AttemptOutcome,
    BudgetHolder,
    ErrorCode,
    GlobalRole,
    Grain,
    MessageRole,
    RunStatus,
    TeamRole,
    TemplateKind,
    TemplateVisibility,
    Visibility,
    WorkflowStatus,
    WorkflowStepStatus,
);

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, DbErr, Iterable};

    use super::*;

    /// Every state reads back from the text it is stored as.
    fn round_trips<S: ActiveEnum<Value = String> + Iterable + PartialEq + std::fmt::Debug + std::fmt::Display>() {
        for state in S::iter() {
            assert_eq!(state.to_string(), state.to_value());
            assert_eq!(S::try_from_value(&state.to_value()).unwrap(), state);
        }
    }

    #[test]
    fn every_state_reads_back_from_its_stored_text() {
        round_trips::<AttemptOutcome>();
        round_trips::<BudgetHolder>();
        round_trips::<ErrorCode>();
        round_trips::<GlobalRole>();
        round_trips::<Grain>();
        round_trips::<MessageRole>();
        round_trips::<RunStatus>();
        round_trips::<TeamRole>();
        round_trips::<TemplateKind>();
        round_trips::<TemplateVisibility>();
        round_trips::<Visibility>();
        round_trips::<WorkflowStatus>();
        round_trips::<WorkflowStepStatus>();
    }

    #[test]
    fn an_unknown_stored_value_is_an_error_not_a_fallback() {
        let error = RunStatus::try_from_value(&"paused".to_string()).unwrap_err();
        assert!(matches!(&error, DbErr::Type(message) if message.contains("paused")), "{error:?}");
        assert!(RunStatus::try_from_value(&"Succeeded".to_string()).is_err(), "the stored text is exact");
        assert!(ErrorCode::try_from_value(&"unknown".to_string()).is_err());
        assert!(AttemptOutcome::try_from_value(&"cost_limit".to_string()).is_err(), "no call ends over the cost limit");
    }

    #[test]
    fn an_error_code_travels_in_events_as_its_stored_text() {
        for code in ErrorCode::iter() {
            let text = serde_json::to_value(code).unwrap();
            assert_eq!(text, serde_json::Value::String(code.to_string()));
            assert_eq!(serde_json::from_value::<ErrorCode>(text).unwrap(), code);
        }
        assert!(serde_json::from_value::<ErrorCode>(serde_json::json!("unknown")).is_err());
    }

    #[test]
    fn every_failed_attempt_is_named_as_a_run_error_code() {
        for outcome in AttemptOutcome::iter().filter(|o| *o != AttemptOutcome::Ok) {
            assert!(ErrorCode::try_from_value(&outcome.to_string()).is_ok(), "{outcome}");
        }
    }
}
