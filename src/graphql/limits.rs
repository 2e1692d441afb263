//! Request limits async-graphql does not enforce by itself, and the request-level error codes.
//!
//! Before parsing, a lexical scan bounds nesting (a deep document would otherwise recurse in the
//! parser). After parsing, field depth is measured with introspection apart (docs/graphiql.md),
//! aliases are counted and fragment fan-out is measured with one memoised pass, so a document
//! that expands to millions of fields is refused in microseconds instead of being walked by every
//! validation rule. Parse errors get `GRAPHQL_PARSE_FAILED`, every other
//! refusal before execution `GRAPHQL_VALIDATION_FAILED`; a field error that carries no code is a
//! bad argument (`BAD_USER_INPUT`) or else `INTERNAL`, with its message hidden and logged.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest, NextRequest,
        NextSubscribe, NextValidation,
    },
    parser::types::{DocumentOperations, ExecutableDocument, Selection, SelectionSet},
};

use futures_util::{StreamExt, stream::BoxStream};

use crate::metrics::Metrics;

pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";

/// The deepest `__schema` or `__type` selection allowed, whatever the data depth limit: the
/// standard introspection query of graphql-js 16 nests 15 deep (its `ofType` chain), and this
/// leaves room for the deeper type chains some tools ask for. Introspection reads the schema
/// only, so its depth costs no data; the fan-out and complexity limits still bound its size.
pub const INTROSPECTION_DEPTH: usize = 20;

/// Installs the checks; built once per schema.
pub struct RequestLimits {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
}

struct Limits {
    introspection: bool,
    depth: usize,
    recursion: usize,
    aliases: usize,
    fields: usize,
}

impl RequestLimits {
    pub fn new(config: &crate::config::Limits, introspection: bool, metrics: Arc<Metrics>) -> Self {
        Self {
            limits: Arc::new(Limits {
                introspection,
                depth: config.depth,
                recursion: config.recursion,
                aliases: config.aliases,
                // Every field costs at least 1 complexity point, so no document expanding to more
                // fields than the complexity limit could pass that check anyway.
                fields: config.complexity,
            }),
            metrics,
        }
    }
}

impl Limits {
    fn check(&self, doc: &ExecutableDocument) -> ServerResult<()> {
        if !self.introspection && uses_introspection(doc) {
            return Err(refusal("Introspection is turned off on this server."));
        }
        let depths = depths(doc);
        if depths.data > self.depth {
            return Err(refusal(format!(
                "The query nests fields {} deep; at most {} are allowed.",
                depths.data, self.depth
            )));
        }
        if depths.introspection > INTROSPECTION_DEPTH {
            return Err(refusal(format!(
                "The introspection query nests fields {} deep; at most {INTROSPECTION_DEPTH} are allowed.",
                depths.introspection
            )));
        }
        let aliases = count_aliases(doc);
        if aliases > self.aliases {
            return Err(refusal(format!("The document uses {aliases} aliases; at most {} are allowed.", self.aliases)));
        }
        let fields = expanded_field_count(doc);
        if fields > self.fields as u64 {
            let count = if fields == u64::MAX { "too many".to_string() } else { fields.to_string() };
            return Err(refusal(format!(
                "The document expands to {count} fields; at most {} are allowed.",
                self.fields
            )));
        }
        Ok(())
    }
}

impl ExtensionFactory for RequestLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension { limits: self.limits.clone(), metrics: self.metrics.clone() })
    }
}

struct LimitsExtension {
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        fill_codes(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(fill_codes).boxed()
    }

    /// Parses the document once, ahead of async-graphql (which reuses it), so every check here
    /// runs before the built-in recursion and directive limits walk the expanded document.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        check_nesting(&request.query, self.limits.recursion)?;
        let doc = request.parsed_query().map_err(|err| with_code(err, PARSE_FAILED))?;
        self.limits.check(doc)?;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // The document is parsed already: what fails here is a built-in limit.
        next.run(ctx, query, variables).await.map_err(|err| with_code(err, VALIDATION_FAILED))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| errors.into_iter().map(|e| with_code(e, VALIDATION_FAILED)).collect())
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        self.metrics.record_operation(operation_name, response.errors.is_empty());
        response
    }
}

/// Gives every error a code: one without a path failed the request as a whole; a field error
/// from parsing an argument is the caller's; anything else is internal and its text is hidden.
fn fill_codes(mut response: Response) -> Response {
    for error in &mut response.errors {
        if error.extensions.as_ref().is_some_and(|e| e.get("code").is_some()) {
            continue;
        }
        let code = if error.path.is_empty() {
            VALIDATION_FAILED
        } else if ["Failed to parse", "Invalid value", "Expected input type"]
            .iter()
            .any(|p| error.message.starts_with(p))
        {
            "BAD_USER_INPUT"
        } else {
            tracing::error!(error = %error.message, path = ?error.path, "internal error");
            error.message = crate::error::INTERNAL_MESSAGE.to_string();
            "INTERNAL"
        };
        error.extensions.get_or_insert_with(Default::default).set("code", code);
    }
    response
}

/// A request refused before execution.
pub fn refusal(message: impl Into<String>) -> ServerError {
    with_code(ServerError::new(message, None), VALIDATION_FAILED)
}

/// Sets `extensions.code` unless the error already has one.
pub fn with_code(mut err: ServerError, code: &str) -> ServerError {
    let ext = err.extensions.get_or_insert_with(Default::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
    }
    err
}

/// Refuses a document nesting `{` or `[` deeper than `limit`, without parsing it.
pub fn check_nesting(query: &str, limit: usize) -> ServerResult<()> {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    if deepest > limit {
        return Err(refusal(format!("The document nests {deepest} levels deep; at most {limit} are allowed.")));
    }
    Ok(())
}

fn operations(doc: &ExecutableDocument) -> Vec<&SelectionSet> {
    match &doc.operations {
        DocumentOperations::Single(op) => vec![&op.node.selection_set.node],
        DocumentOperations::Multiple(ops) => ops.values().map(|op| &op.node.selection_set.node).collect(),
    }
}

/// Whether any selection asks for `__schema` or `__type`.
fn uses_introspection(doc: &ExecutableDocument) -> bool {
    fn walk(set: &SelectionSet) -> bool {
        set.items.iter().any(|item| match &item.node {
            Selection::Field(f) => {
                matches!(f.node.name.node.as_str(), "__schema" | "__type") || walk(&f.node.selection_set.node)
            }
            Selection::InlineFragment(f) => walk(&f.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    let fragments = doc.fragments.values().map(|f| &f.node.selection_set.node);
    operations(doc).into_iter().chain(fragments).any(walk)
}

/// How deep the deepest operation nests fields (a leaf field counts 1): its data, and apart
/// from it, the `__schema` and `__type` selections of its root.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Depths {
    data: usize,
    introspection: usize,
}

impl Depths {
    fn max(self, other: Depths) -> Depths {
        Depths { data: self.data.max(other.data), introspection: self.introspection.max(other.introspection) }
    }
}

/// Field depth of the document with every fragment spread expanded, each fragment measured once
/// (a fragment cycle counts 0 here and is reported by validation). Only root fields can be
/// introspection: `__schema` deep inside a data selection counts as data.
fn depths(doc: &ExecutableDocument) -> Depths {
    struct Walker<'a> {
        doc: &'a ExecutableDocument,
        memo: HashMap<(&'a str, bool), Depths>,
        visiting: HashSet<&'a str>,
    }
    impl<'a> Walker<'a> {
        fn set(&mut self, set: &'a SelectionSet, root: bool) -> Depths {
            set.items.iter().fold(Depths::default(), |deepest, item| {
                let depths = match &item.node {
                    Selection::Field(f) => {
                        let depth = 1 + self.set(&f.node.selection_set.node, false).data;
                        if root && matches!(f.node.name.node.as_str(), "__schema" | "__type") {
                            Depths { data: 0, introspection: depth }
                        } else {
                            Depths { data: depth, introspection: 0 }
                        }
                    }
                    Selection::InlineFragment(f) => self.set(&f.node.selection_set.node, root),
                    Selection::FragmentSpread(s) => self.fragment(s.node.fragment_name.node.as_str(), root),
                };
                deepest.max(depths)
            })
        }
        fn fragment(&mut self, name: &'a str, root: bool) -> Depths {
            if let Some(depths) = self.memo.get(&(name, root)) {
                return *depths;
            }
            let Some(fragment) = self.doc.fragments.get(name) else {
                return Depths::default();
            };
            if !self.visiting.insert(name) {
                return Depths::default();
            }
            let depths = self.set(&fragment.node.selection_set.node, root);
            self.visiting.remove(name);
            self.memo.insert((name, root), depths);
            depths
        }
    }
    let mut walker = Walker { doc, memo: HashMap::new(), visiting: HashSet::new() };
    operations(doc).into_iter().map(|set| walker.set(set, true)).fold(Depths::default(), Depths::max)
}

/// Aliases written in the document (operations and fragments, each counted once).
fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn walk(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => usize::from(f.node.alias.is_some()) + walk(&f.node.selection_set.node),
                Selection::InlineFragment(f) => walk(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let fragments = doc.fragments.values().map(|f| &f.node.selection_set.node);
    operations(doc).into_iter().chain(fragments).map(walk).sum()
}

/// Fields the largest operation resolves once every fragment spread is expanded, computed with
/// each fragment counted once (saturating; a fragment cycle counts 0 here and is reported by
/// validation).
fn expanded_field_count(doc: &ExecutableDocument) -> u64 {
    struct Counter<'a> {
        doc: &'a ExecutableDocument,
        memo: HashMap<&'a str, u64>,
        visiting: HashSet<&'a str>,
    }
    impl<'a> Counter<'a> {
        fn set(&mut self, set: &'a SelectionSet) -> u64 {
            set.items.iter().fold(0u64, |sum, item| {
                let n = match &item.node {
                    Selection::Field(f) => 1u64.saturating_add(self.set(&f.node.selection_set.node)),
                    Selection::InlineFragment(f) => self.set(&f.node.selection_set.node),
                    Selection::FragmentSpread(s) => self.fragment(s.node.fragment_name.node.as_str()),
                };
                sum.saturating_add(n)
            })
        }
        fn fragment(&mut self, name: &'a str) -> u64 {
            if let Some(n) = self.memo.get(name) {
                return *n;
            }
            let Some(fragment) = self.doc.fragments.get(name) else {
                return 0;
            };
            if !self.visiting.insert(name) {
                return 0;
            }
            let n = self.set(&fragment.node.selection_set.node);
            self.visiting.remove(name);
            self.memo.insert(name, n);
            n
        }
    }
    let mut counter = Counter { doc, memo: HashMap::new(), visiting: HashSet::new() };
    operations(doc).into_iter().map(|set| counter.set(set)).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(q).unwrap()
    }

    #[test]
    fn fragment_fan_out_is_counted_without_expanding_it() {
        let mut q = String::from("query { ...F6 }\nfragment F0 on Query { a b c d e f g h i j }\n");
        for level in 1..=6 {
            let spreads = format!("...F{} ", level - 1).repeat(10);
            q.push_str(&format!("fragment F{level} on Query {{ {spreads} }}\n"));
        }
        assert_eq!(expanded_field_count(&parse(&q)), 10_000_000);
    }

    #[test]
    fn a_fragment_cycle_does_not_hang_the_count() {
        let q = "query { ...A } fragment A on Query { x ...B } fragment B on Query { y ...A }";
        assert_eq!(expanded_field_count(&parse(q)), 2);
    }

    #[test]
    fn aliases_are_counted_in_operations_and_fragments() {
        let q = "query { a: x b: y { c: z } ...F } fragment F on Query { d: w }";
        assert_eq!(count_aliases(&parse(q)), 4);
    }

    #[test]
    fn introspection_is_measured_apart_from_data() {
        let q = "{ __schema { types { name } } serverInfo { version } }";
        assert_eq!(depths(&parse(q)), Depths { data: 2, introspection: 3 });
        let q = "{ ...Root } fragment Root on Query { __type(name: \"X\") { ofType { name } } }";
        assert_eq!(depths(&parse(q)), Depths { data: 0, introspection: 3 });
    }

    #[test]
    fn introspection_fields_below_the_root_count_as_data() {
        let q = "{ me { __schema { types { fields { name } } } } }";
        assert_eq!(depths(&parse(q)), Depths { data: 5, introspection: 0 });
    }

    #[test]
    fn fragments_count_at_the_depth_they_are_spread() {
        let q = "{ a { ...F } b { c { ...F } } } fragment F on T { d { e } }";
        assert_eq!(depths(&parse(q)).data, 4);
    }

    #[test]
    fn nesting_ignores_braces_in_strings_and_comments() {
        assert!(check_nesting("{ a(x: \"{{{{{{\") # {{{{{{\n }", 2).is_ok());
        assert!(check_nesting("{ a(x: \"\"\"{{{{\"\"\") }", 1).is_ok());
        assert!(check_nesting(&"{a".repeat(5), 4).is_err());
        assert!(check_nesting(&format!("{}{}", "{a".repeat(100_000), "}".repeat(100_000)), 32).is_err());
    }
}
