//! Refused mutations leave an audit row too: a mutation field that fails with FORBIDDEN,
//! NOT_FOUND or UNAUTHENTICATED is recorded as `denied`, with the refusal as its reason. Once an
//! audited mutation has ended (its transaction over), `auditLogAdded` followers are woken.

use std::sync::Arc;

use async_graphql::{
    ServerResult, Value,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo},
};

use crate::{
    domain::{Caller, Principal, RequestMeta},
    service::audit::{Entry, actions},
    state::AppState,
};

const DENIALS: [&str; 3] = ["FORBIDDEN", "NOT_FOUND", "UNAUTHENTICATED"];

pub struct AuditDenials;

impl ExtensionFactory for AuditDenials {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AuditDenials)
    }
}

#[async_trait::async_trait]
impl Extension for AuditDenials {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        // A root field of the mutation type (root objects are merged, so their own type names
        // show here): the audit table knows every one.
        let top_level = info.path_node.parent.is_none();
        let action = top_level.then(|| actions::of_mutation(info.name)).flatten();
        let result = next.run(ctx, info).await;
        if let (Some(action), Err(err)) = (action, &result) {
            let code = err.extensions.as_ref().and_then(|e| e.get("code")).cloned();
            if DENIALS.iter().any(|d| code == Some(Value::from(*d))) {
                record(ctx, action, &err.message).await;
            }
        }
        if let (Some(_), Ok(state)) = (action, ctx.data::<AppState>()) {
            state.bus.audit_written();
        }
        result
    }
}

async fn record(ctx: &ExtensionContext<'_>, (action, resource_type): (&'static str, &'static str), reason: &str) {
    let Ok(state) = ctx.data::<AppState>() else {
        return;
    };
    let caller = Caller {
        principal: ctx.data_opt::<Principal>().cloned().unwrap_or_default(),
        meta: ctx.data_opt::<RequestMeta>().cloned().unwrap_or_default(),
    };
    if let Err(err) = state.audit.denied(&caller, Entry::new(action, resource_type, None), reason).await {
        tracing::error!(error = %err, action, "cannot record a denied mutation");
    }
}
