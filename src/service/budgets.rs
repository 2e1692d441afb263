//! Daily budgets (docs/runs.md): before a run calls a model it reserves its worst case on the
//! `budget_days` rows of its user and of its API key, in one batch of conditional writes, each
//! guarded, so that a reservation one of them does not fit is held on neither; when it ends (or is found interrupted)
//! the same rows get what it spent and give back what it reserved. So runs in progress on any
//! number of instances never hold, together with what was spent, more than a budget.

use chrono::{DateTime, Utc};
use entity::{budget_days, runs};
use sea_orm::{
    ActiveValue::Set,
    Condition, ConnectionTrait, EntityTrait, QueryTrait,
    sea_query::{Expr, ExprTrait, InsertStatement, OnConflict},
};

use crate::{
    config::RunConfig,
    db::{
        self,
        batch::{Attempts, Batch, BatchError, BatchWriter, Expect, OnGuard},
    },
    domain::Principal,
    error::AppError,
    orchestrator::estimate::Estimate,
};

/// The answer limit of agents that set no `maxTokens` in a run held to a budget: without one
/// the worst case of a run would have no bound.
pub const BUDGETED_ANSWER_TOKENS: u32 = 4096;

const NANOS_PER_USD: f64 = 1e9;

/// Whose budget a row counts against.
pub use entity::states::BudgetHolder as Holder;

/// Whose budget a refusal speaks of.
fn whose(holder: Holder) -> &'static str {
    match holder {
        Holder::User => "Your",
        Holder::ApiKey => "This API key's",
    }
}

/// What a budget counts: tokens, or US dollars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Tokens,
    Cost,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::Cost => "cost",
        }
    }
}

/// Tokens and nano-dollars: what a run spent or reserves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub tokens: i64,
    pub nano_usd: i64,
}

impl Amount {
    /// A run's worst case: every call of every step, the dollars rounded up.
    pub fn worst_case(estimate: &Estimate) -> Self {
        Self {
            tokens: i64::try_from(estimate.worst_case_tokens).unwrap_or(i64::MAX),
            nano_usd: (estimate.worst_case_cost_usd * NANOS_PER_USD).ceil() as i64,
        }
    }

    pub fn spent(tokens: i64, cost_usd: f64) -> Self {
        Self { tokens, nano_usd: (cost_usd * NANOS_PER_USD).round() as i64 }
    }

    /// What a run reserved, from its row; zero when it reserved nothing.
    pub fn reserved_by(run: &runs::Model) -> Self {
        Self { tokens: run.reserved_tokens.unwrap_or(0), nano_usd: run.reserved_nano_usd.unwrap_or(0) }
    }

    fn get(self, measure: Measure) -> i64 {
        match measure {
            Measure::Tokens => self.tokens,
            Measure::Cost => self.nano_usd,
        }
    }
}

/// The daily limits of one principal, in tokens and nano-dollars (none: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Limit {
    tokens: Option<i64>,
    nano_usd: Option<i64>,
}

impl Limit {
    fn new(tokens: Option<i64>, usd: Option<f64>) -> Self {
        Self { tokens, nano_usd: usd.map(|usd| (usd * NANOS_PER_USD).floor() as i64) }
    }

    fn get(self, measure: Measure) -> Option<i64> {
        match measure {
            Measure::Tokens => self.tokens,
            Measure::Cost => self.nano_usd,
        }
    }

    fn is_set(self) -> bool {
        self.tokens.is_some() || self.nano_usd.is_some()
    }
}

/// One principal a run counts against, with its limits.
struct Account {
    holder: Holder,
    id: String,
    limit: Limit,
}

/// The principals a run of `principal` counts against: its user, then its API key.
fn accounts(principal: &Principal, config: &RunConfig) -> Vec<Account> {
    let user_limit = Limit::new(config.daily_token_budget, config.daily_cost_budget_usd);
    match principal {
        Principal::User(user) => vec![Account { holder: Holder::User, id: user.id.clone(), limit: user_limit }],
        Principal::ApiKey(key) => vec![
            Account { holder: Holder::User, id: key.owner.id.clone(), limit: user_limit },
            Account {
                holder: Holder::ApiKey,
                id: key.key_id.clone(),
                limit: Limit::new(key.daily_token_budget, key.daily_cost_budget_usd),
            },
        ],
        Principal::Anonymous | Principal::System(_) => Vec::new(),
    }
}

/// Whether runs of `principal` are held to a daily budget.
pub fn applies(principal: &Principal, config: &RunConfig) -> bool {
    accounts(principal, config).iter().any(|account| account.limit.is_set())
}

/// The UTC day of `at`, as budget and usage rows name it.
pub fn day_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// A refusal: the first budget of the first principal the run does not fit.
#[derive(Debug)]
pub struct Refused {
    pub holder: Holder,
    pub measure: Measure,
    pub error: AppError,
}

/// Reserves `amount` on `day` for every principal a run of `principal` counts against, when a
/// budget applies to one of them; answers what is held (none: no budget applies). One batch
/// holds it on every account, each hold guarded: a principal the amount does not fit refuses
/// the run and nothing is held anywhere.
pub async fn reserve(
    db: &impl ConnectionTrait,
    writer: &dyn BatchWriter,
    principal: &Principal,
    config: &RunConfig,
    day: &str,
    amount: Amount,
) -> Result<Result<Option<Amount>, Refused>, AppError> {
    let accounts = accounts(principal, config);
    if !accounts.iter().any(|account| account.limit.is_set()) {
        return Ok(Ok(None));
    }
    // Larger than a whole budget: refused without a write.
    for account in &accounts {
        if let Some(refused) = over(account, amount, empty_row(day, account)) {
            return Ok(Err(refused));
        }
    }
    let batch = accounts.iter().fold(Batch::new(writer.backend()), |batch, account| {
        batch.write(&hold(day, account, amount)).guard(Expect::One, BUDGET_FULL)
    });
    let mut attempts = Attempts::default();
    let full = loop {
        match writer.run(batch.clone()).await {
            Ok(_) => return Ok(Ok(Some(amount))),
            Err(BatchError::Guard { index, code: BUDGET_FULL }) => break &accounts[index],
            Err(err) => attempts.failed(err, &|_, _| OnGuard::Retry).await?,
        }
    };
    let row = budget_days::Entity::find_by_id((day.to_string(), full.holder, full.id.clone()))
        .one(db)
        .await?
        .unwrap_or_else(|| empty_row(day, full));
    Ok(Err(over(full, amount, row).unwrap_or_else(|| Refused {
        holder: full.holder,
        measure: Measure::Tokens,
        error: AppError::QuotaExceeded(format!(
            "{} daily budget cannot hold this run right now; try again.",
            whose(full.holder)
        )),
    })))
}

/// The guard of a hold that did not fit (the batch's step is the account's place).
const BUDGET_FULL: &str = "budget_full";

/// Adds `amount` to the principal's reservations on `day` if it fits every limit: one
/// conditional upsert that changes no row when it does not fit, so concurrent reservations on
/// any instance see each other.
fn hold(day: &str, account: &Account, amount: Amount) -> InsertStatement {
    use budget_days::Column;
    let mut fits = Condition::all();
    for (measure, spent, reserved) in [
        (Measure::Tokens, Column::SpentTokens, Column::ReservedTokens),
        (Measure::Cost, Column::SpentNanoUsd, Column::ReservedNanoUsd),
    ] {
        if let Some(limit) = account.limit.get(measure) {
            let total = Expr::col((budget_days::Entity, spent)).add(Expr::col((budget_days::Entity, reserved)));
            fits = fits.add(total.add(amount.get(measure)).lte(limit));
        }
    }
    let mut add = OnConflict::columns([Column::Day, Column::PrincipalKind, Column::PrincipalId]);
    add.value(Column::ReservedTokens, Expr::col((budget_days::Entity, Column::ReservedTokens)).add(amount.tokens))
        .value(Column::ReservedNanoUsd, Expr::col((budget_days::Entity, Column::ReservedNanoUsd)).add(amount.nano_usd));
    if account.limit.is_set() {
        add.action_cond_where(fits);
    }
    let row = budget_days::ActiveModel {
        day: Set(day.to_string()),
        principal_kind: Set(account.holder),
        principal_id: Set(account.id.clone()),
        spent_tokens: Set(0),
        spent_nano_usd: Set(0),
        reserved_tokens: Set(amount.tokens),
        reserved_nano_usd: Set(amount.nano_usd),
    };
    budget_days::Entity::insert(row).on_conflict(add.to_owned()).into_query()
}

/// The refusal of `amount` by the account's limits, given its row; none when it fits.
fn over(account: &Account, amount: Amount, row: budget_days::Model) -> Option<Refused> {
    for measure in [Measure::Tokens, Measure::Cost] {
        let Some(limit) = account.limit.get(measure) else { continue };
        let (spent, held, want) = match measure {
            Measure::Tokens => (row.spent_tokens, row.reserved_tokens, amount.tokens),
            Measure::Cost => (row.spent_nano_usd, row.reserved_nano_usd, amount.nano_usd),
        };
        if spent.saturating_add(held).saturating_add(want) > limit {
            let message = refusal(account.holder, measure, limit, want, spent, held);
            return Some(Refused { holder: account.holder, measure, error: AppError::QuotaExceeded(message) });
        }
    }
    None
}

/// Why a run does not fit, with the numbers a person needs to act.
fn refusal(holder: Holder, measure: Measure, limit: i64, want: i64, spent: i64, held: i64) -> String {
    let show = |value: i64| match measure {
        Measure::Tokens => format!("{value} tokens"),
        Measure::Cost => format!("${}", value as f64 / NANOS_PER_USD),
    };
    let budget = match measure {
        Measure::Tokens => "token budget",
        Measure::Cost => "budget",
    };
    let whose = whose(holder);
    let left = std::cmp::max(limit - spent - held, 0);
    let why = if want > limit {
        "more than the whole budget: set `maxTokens` on the team's agents or allow fewer attempts".to_string()
    } else {
        format!("{} left today ({} used, {} held by runs in progress)", show(left), show(spent), show(held))
    };
    format!(
        "{whose} daily {budget} of {} cannot hold this run: it may use up to {} (every attempt and fallback it may make), {why}. It resets at 00:00 UTC.",
        show(limit),
        show(want)
    )
}

/// What a run's end changes on one principal's row of a day: what it spent is added, what it
/// reserved is given back.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement {
    pub day: String,
    pub holder: Holder,
    pub id: String,
    pub spent: Amount,
    pub released: Amount,
}

/// The settlements of a run that ends having spent `spent`: on the day it started, for its user
/// and its API key, giving back whatever it reserved.
pub fn settlements(run: &runs::Model, spent: Amount) -> Vec<Settlement> {
    let day = day_of(run.created_at);
    let released = Amount::reserved_by(run);
    let holders = [(Holder::User, &run.user_id), (Holder::ApiKey, &run.api_key_id)];
    holders
        .into_iter()
        .filter_map(|(holder, id)| {
            id.as_ref().map(|id| Settlement { day: day.clone(), holder, id: id.clone(), spent, released })
        })
        .filter(|s| s.spent != Amount::default() || s.released != Amount::default())
        .collect()
}

/// Adds `settlements` to `batch`, summed per row, one upsert per row.
pub fn settle(mut batch: Batch, settlements: Vec<Settlement>) -> Batch {
    use budget_days::Column;
    let mut rows: Vec<Settlement> = Vec::new();
    for s in settlements {
        match rows.iter_mut().find(|r| (&r.day, r.holder, &r.id) == (&s.day, s.holder, &s.id)) {
            Some(row) => {
                row.spent.tokens += s.spent.tokens;
                row.spent.nano_usd += s.spent.nano_usd;
                row.released.tokens += s.released.tokens;
                row.released.nano_usd += s.released.nano_usd;
            }
            None => rows.push(s),
        }
    }
    for s in rows {
        let col = |c: Column| Expr::col((budget_days::Entity, c));
        let change = OnConflict::columns([Column::Day, Column::PrincipalKind, Column::PrincipalId])
            .value(Column::SpentTokens, col(Column::SpentTokens).add(s.spent.tokens))
            .value(Column::SpentNanoUsd, col(Column::SpentNanoUsd).add(s.spent.nano_usd))
            .value(Column::ReservedTokens, col(Column::ReservedTokens).sub(s.released.tokens))
            .value(Column::ReservedNanoUsd, col(Column::ReservedNanoUsd).sub(s.released.nano_usd))
            .to_owned();
        let row = budget_days::ActiveModel {
            day: Set(s.day),
            principal_kind: Set(s.holder),
            principal_id: Set(s.id),
            spent_tokens: Set(s.spent.tokens),
            spent_nano_usd: Set(s.spent.nano_usd),
            reserved_tokens: Set(0),
            reserved_nano_usd: Set(0),
        };
        batch = batch.write(&budget_days::Entity::insert(row).on_conflict(change).into_query());
    }
    batch
}

/// Writes `settlements` in a batch of their own (what a run that was never stored reserved).
pub async fn give_back(writer: &dyn BatchWriter, settlements: Vec<Settlement>) -> Result<(), AppError> {
    let batch = settle(Batch::new(writer.backend()), settlements);
    if batch.is_empty() {
        return Ok(());
    }
    db::batch::write(writer, || async { Ok(batch.clone()) }, |_, _| OnGuard::Retry).await.map(drop)
}

/// The row of a principal with nothing spent or held on `day`.
fn empty_row(day: &str, account: &Account) -> budget_days::Model {
    budget_days::Model {
        day: day.to_string(),
        principal_kind: account.holder,
        principal_id: account.id.clone(),
        spent_tokens: 0,
        spent_nano_usd: 0,
        reserved_tokens: 0,
        reserved_nano_usd: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_what_is_left_and_what_the_run_needs() {
        let message = refusal(Holder::User, Measure::Tokens, 100, 40, 50, 20);
        assert!(message.starts_with("Your daily token budget of 100 tokens cannot hold this run"), "{message}");
        assert!(message.contains("up to 40 tokens"), "{message}");
        assert!(
            message.contains("30 tokens left today (50 tokens used, 20 tokens held by runs in progress)"),
            "{message}"
        );
        assert!(message.ends_with("It resets at 00:00 UTC."), "{message}");
        let too_big = refusal(Holder::ApiKey, Measure::Cost, 1_000, 2_500, 0, 0);
        assert!(too_big.starts_with("This API key's daily budget of $0.000001"), "{too_big}");
        assert!(too_big.contains("up to $0.0000025") && too_big.contains("maxTokens"), "{too_big}");
    }

    #[test]
    fn dollars_are_whole_nano_dollars_rounded_against_the_run() {
        assert_eq!(Limit::new(None, Some(0.000_001)).nano_usd, Some(1_000));
        assert_eq!(Amount::spent(3, 0.000_000_001_4).nano_usd, 1);
        let mut estimate = crate::orchestrator::estimate::estimate(
            &crate::orchestrator::spec::parse(
                &serde_json::json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo"}]}),
                &|_| true,
            )
            .unwrap(),
            "a",
            &[],
            &Default::default(),
            None,
        );
        estimate.worst_case_cost_usd = 0.000_000_001_2;
        assert_eq!(Amount::worst_case(&estimate).nano_usd, 2, "a reservation never falls short");
    }
}
