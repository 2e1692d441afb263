//! What every answer looks like, whatever the transport (docs/transport.md): an error has
//! `locations` only where the document has them (never line 0), an answer lists at most
//! [`MAX_ERRORS`] errors and then one saying how many were left out, and what an operation
//! warns about is in `extensions.warnings`. Input values are held to their types here too
//! (`inputs`).

use std::sync::{Arc, Mutex, PoisonError};

use async_graphql::{
    Context, Name, Request, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest, NextRequest,
        NextSubscribe, NextValidation,
    },
    indexmap::IndexMap,
    parser::types::ExecutableDocument,
};
use futures_util::{StreamExt, stream::BoxStream};

use super::inputs;
use crate::orchestrator;

/// The most errors one answer lists.
pub const MAX_ERRORS: usize = 100;

/// Something an operation that succeeded wants its caller to know.
#[derive(Clone, Debug)]
pub struct Warning {
    /// What kind of warning, for clients to switch on: `PROVIDER_KEY_MISSING`.
    pub code: &'static str,
    /// The warning in words.
    pub message: String,
    /// The response path of the field that warned: `["createTeam"]`.
    pub path: Vec<String>,
    /// More about it, by name: `provider`, `variable`.
    pub details: Vec<(&'static str, String)>,
}

impl Warning {
    fn to_value(&self) -> Value {
        let mut map = IndexMap::new();
        map.insert(Name::new("code"), Value::from(self.code));
        map.insert(Name::new("message"), Value::from(self.message.as_str()));
        map.insert(Name::new("path"), Value::List(self.path.iter().map(|p| Value::from(p.as_str())).collect()));
        for (name, value) in &self.details {
            map.insert(Name::new(name), Value::from(value.as_str()));
        }
        Value::Object(map)
    }
}

/// The warnings of one operation, collected while it runs.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<Warning>>>);

impl Warnings {
    fn push(&self, warning: Warning) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(warning);
    }

    fn take(&self) -> Vec<Warning> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Adds a warning to the answer, at the field `ctx` resolves.
pub fn warn(ctx: &Context<'_>, code: &'static str, message: String, details: Vec<(&'static str, String)>) {
    let Some(warnings) = ctx.data_opt::<Warnings>() else {
        return;
    };
    let path = ctx.path_node.map(|node| node.to_string_vec()).unwrap_or_default();
    warnings.push(Warning { code, message, path, details });
}

/// Warns (`PROVIDER_KEY_MISSING`) of each provider the team's agents use that has no API key
/// configured: the team is saved, and its runs fail if the provider needs one.
pub fn warn_missing_keys(ctx: &Context<'_>, spec: &serde_json::Value) {
    let Ok(state) = ctx.data::<crate::state::AppState>() else { return };
    for missing in orchestrator::missing_keys(spec, &state.config.runs.providers) {
        let message = missing.to_string();
        warn(
            ctx,
            "PROVIDER_KEY_MISSING",
            message,
            vec![("provider", missing.provider), ("variable", missing.variable)],
        );
    }
}

/// Installs the shaping of answers; built once per schema.
pub struct Answers;

impl ExtensionFactory for Answers {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AnswersExtension {
            warnings: Warnings::default(),
            operation_name: Mutex::default(),
            refused: Mutex::default(),
        })
    }
}

/// One per request: it holds the request's warnings, and what refuses its input values.
struct AnswersExtension {
    warnings: Warnings,
    operation_name: Mutex<Option<String>>,
    refused: Mutex<Vec<ServerError>>,
}

#[async_trait::async_trait]
impl Extension for AnswersExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        shape(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(shape).boxed()
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *lock(&self.operation_name) = request.operation_name.clone();
        next.run(ctx, request.data(self.warnings.clone())).await
    }

    /// Checks the input values of the operation that runs against their types, once the
    /// document is parsed (see `inputs`).
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let name = lock(&self.operation_name).clone();
        *lock(&self.refused) = inputs::check(&ctx.schema_env.registry, &doc, name.as_deref(), variables);
        Ok(doc)
    }

    /// Refuses the request when its input values do not fit their types, before the document's
    /// own validation (which would call a bad variable value a validation error).
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let refused = std::mem::take(&mut *lock(&self.refused));
        if !refused.is_empty() {
            return Err(refused);
        }
        next.run(ctx).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let warnings = self.warnings.take();
        if !warnings.is_empty() {
            response
                .extensions
                .insert("warnings".into(), Value::List(warnings.iter().map(Warning::to_value).collect()));
        }
        response
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops locations at line 0 (errors that are not about a place in the document) and caps the
/// error list.
fn shape(mut response: Response) -> Response {
    for error in &mut response.errors {
        error.locations.retain(|pos| pos.line > 0);
    }
    cap(&mut response.errors);
    response
}

/// Keeps the first [`MAX_ERRORS`] errors and adds one saying how many more there were, with the
/// code of the first it stands for and their number in `extensions.leftOut`.
fn cap(errors: &mut Vec<ServerError>) {
    if errors.len() <= MAX_ERRORS {
        return;
    }
    let left_out = errors.len() - MAX_ERRORS;
    let code = errors[MAX_ERRORS].extensions.as_ref().and_then(|e| e.get("code")).cloned();
    errors.truncate(MAX_ERRORS);
    let plural = if left_out == 1 { "error was" } else { "errors were" };
    let mut error =
        ServerError::new(format!("{left_out} more {plural} left out: an answer lists at most {MAX_ERRORS}."), None);
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if let Some(code) = code {
        extensions.set("code", code);
    }
    extensions.set("leftOut", left_out as u64);
    errors.push(error);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(n: usize) -> Vec<ServerError> {
        (0..n).map(|i| crate::graphql::limits::refusal(format!("error {i}"))).collect()
    }

    #[test]
    fn an_answer_lists_at_most_a_hundred_errors_and_says_how_many_more() {
        let mut list = errors(40_000);
        cap(&mut list);
        assert_eq!(list.len(), MAX_ERRORS + 1);
        let last = serde_json::to_value(&list[MAX_ERRORS]).unwrap();
        assert_eq!(last["message"], "39900 more errors were left out: an answer lists at most 100.");
        assert_eq!(last["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
        assert_eq!(last["extensions"]["leftOut"], 39_900);
        let mut exactly = errors(MAX_ERRORS);
        cap(&mut exactly);
        assert_eq!(exactly.len(), MAX_ERRORS, "nothing added when nothing was left out");
    }

    #[test]
    fn locations_at_line_zero_are_dropped() {
        let mut error = ServerError::new("x", Some(async_graphql::Pos::default()));
        error.locations.push(async_graphql::Pos { line: 2, column: 3 });
        let shaped = shape(Response::from_errors(vec![error]));
        assert_eq!(shaped.errors[0].locations, [async_graphql::Pos { line: 2, column: 3 }]);
    }
}
