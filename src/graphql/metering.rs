//! Every operation counts against its principal's usage, and is charged to its rate limit by
//! its complexity once validation has measured it (`RATE_LIMITED` with `retryAfter` when over).

use std::sync::Arc;

use async_graphql::{
    ErrorExtensions, Pos, ServerError, ValidationResult,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation},
};

use crate::{
    auth::Principal,
    error::AppError,
    state::{AppState, RequestMeta},
};

pub struct Metering;

impl ExtensionFactory for Metering {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Metering)
    }
}

#[async_trait::async_trait]
impl Extension for Metering {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        // Request data is attached from here on (not yet when the request is prepared).
        let (Ok(state), Some(principal)) = (ctx.data::<AppState>(), ctx.data_opt::<Principal>()) else {
            return next.run(ctx).await;
        };
        if state.usage.count_request(principal) {
            let usage = state.usage.clone();
            tokio::spawn(async move { usage.flush().await });
        }
        let result = next.run(ctx).await?;
        let ip = ctx.data_opt::<RequestMeta>().and_then(|m| m.ip.as_deref());
        match state.rate_limits.check(principal, ip, result.complexity) {
            Ok(()) => Ok(result),
            Err(limited) => {
                let err = AppError::RateLimited {
                    message: format!("Too many requests: try again in {} s.", limited.retry_after_secs),
                    retry_after_secs: Some(limited.retry_after_secs),
                };
                Err(vec![err.extend().into_server_error(Pos::default())])
            }
        }
    }
}
