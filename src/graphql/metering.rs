//! Every operation counts against its principal's usage, and is charged to its rate limit by
//! its complexity once validation has measured it (`RATE_LIMITED` with `retryAfter` when over).
//! Only the operation that runs is measured, not every operation of the document.
//! An operation streamed over a websocket counts as an open subscription while it streams.

use std::sync::Arc;

use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextSubscribe, NextValidation},
};
use futures_util::{StreamExt, stream::BoxStream};

use super::operation;
use crate::{
    domain::{Principal, RequestMeta},
    error::AppError,
    graphql::shareable::CountedBySocket,
    state::AppState,
};

pub struct Metering;

impl ExtensionFactory for Metering {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Metering)
    }
}

#[async_trait::async_trait]
impl Extension for Metering {
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let stream = next.run(ctx, stream);
        let Ok(state) = ctx.data::<AppState>() else {
            return stream;
        };
        if ctx.data_opt::<CountedBySocket>().is_some() {
            return stream;
        }
        let open = state.metrics.subscription_opened();
        // The stream holds the count; it ends when the stream is dropped.
        stream
            .inspect(move |_| {
                let _held = &open;
            })
            .boxed()
    }

    /// Once the document is parsed (by the limits, after their lexical check), a document of
    /// several operations is cut down to the one that runs: only that one is validated,
    /// measured and charged.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let mut request = next.run(ctx, request).await?;
        let name = request.operation_name.clone();
        if let Ok(doc) = request.parsed_query()
            && operation::has_others(doc, name.as_deref())
        {
            let mut doc = doc.clone();
            operation::keep_selected(&mut doc, name.as_deref());
            request.set_parsed_query(doc);
        }
        Ok(request)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        // Request data is attached from here on (not yet when the request is prepared).
        let (Ok(state), Some(principal)) = (ctx.data::<AppState>(), ctx.data_opt::<Principal>()) else {
            return next.run(ctx).await;
        };
        count(state, principal);
        let result = next.run(ctx).await?;
        let ip = ctx.data_opt::<RequestMeta>().and_then(|m| m.ip.as_deref());
        match charge(state, principal, ip, result.complexity).await {
            Ok(()) => Ok(result),
            Err(err) => Err(vec![err.request_error()]),
        }
    }
}

/// Counts one request against the principal's usage (written in the background).
pub fn count(state: &AppState, principal: &Principal) {
    if state.usage.count_request(principal) {
        let usage = state.usage.clone();
        tokio::spawn(async move { usage.flush().await });
    }
}

/// Charges `complexity` to the principal's rate limit: `RATE_LIMITED` when over it.
pub async fn charge(
    state: &AppState,
    principal: &Principal,
    ip: Option<&str>,
    complexity: usize,
) -> Result<(), AppError> {
    state.rate_limits.check(principal, ip, complexity).await.map_err(|limited| AppError::RateLimited {
        message: format!("Too many requests: try again in {} s.", limited.retry_after_secs),
        retry_after_secs: Some(limited.retry_after_secs),
    })
}
