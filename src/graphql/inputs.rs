//! Input values held to their types before the document is validated (docs/transport.md).
//!
//! - A variable's value must fit the type its operation declares, or the request is refused
//!   with `BAD_USER_INPUT` naming it, as Apollo Server does: the value is the caller's input.
//! - An `Int` written in the document must fit 32 bits, or the request is refused with
//!   `GRAPHQL_VALIDATION_FAILED`, the spec's "Values of Correct Type". async-graphql's own
//!   validation lets any 64-bit integer through for `Int` and refuses it only when a resolver
//!   reads it, after the fields before it have run.
//! - No text given, in a variable or written in the document, may hold the NUL character
//!   (U+0000): PostgreSQL cannot store it, and a request that would have failed there with
//!   INTERNAL is refused with `BAD_USER_INPUT` naming where, on every database alike.

use std::collections::HashSet;

use async_graphql::{
    Name, Pos, ServerError, Value, Variables,
    parser::types::{
        BaseType, DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
        Type,
    },
    registry::{MetaType, MetaTypeName, Registry},
};

use super::limits::{VALIDATION_FAILED, with_code};
use crate::error::{AppError, Problem};

/// The errors that refuse the request: `Int` literals out of range first (the document is
/// checked before the values given for it), else every variable that does not fit its type.
pub fn check(
    registry: &Registry,
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> Vec<ServerError> {
    let Some(operation) = selected(doc, operation_name) else {
        return Vec::new();
    };
    let literals = literal_ints(registry, doc, operation);
    if !literals.is_empty() {
        return literals;
    }
    let problems = variable_problems(registry, operation, variables);
    if problems.is_empty() { Vec::new() } else { vec![AppError::invalid(problems).request_error()] }
}

/// The operation the request runs; none when the name selects none (execution reports that).
fn selected<'a>(doc: &'a ExecutableDocument, name: Option<&str>) -> Option<&'a OperationDefinition> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(operation), None) => Some(&operation.node),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|op| &op.node)
        }
        _ => None,
    }
}

const INT_RANGE: &str = "outside Int's range (-2147483648 to 2147483647)";

/// Whether `value` is an integer that `Int` cannot hold.
fn out_of_int_range(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_i64().is_none_or(|n| i32::try_from(n).is_err()) && (n.is_i64() || n.is_u64()),
        _ => false,
    }
}

/// Where inside `value` (of type `ty`) an `Int` is out of range: `""` for the value itself,
/// `.field` or `[2]` inside it.
fn int_out_of_range(registry: &Registry, ty: &Type, value: &Value) -> Option<(String, String)> {
    match (&ty.base, value) {
        (BaseType::List(inner), Value::List(items)) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| int_out_of_range(registry, inner, item).map(|(at, n)| (format!("[{i}]{at}"), n))),
        (BaseType::List(inner), single) => int_out_of_range(registry, inner, single),
        (BaseType::Named(name), Value::Number(n)) if name.as_str() == "Int" && out_of_int_range(value) => {
            Some((String::new(), n.to_string()))
        }
        (BaseType::Named(name), Value::Object(fields)) => {
            let Some(MetaType::InputObject { input_fields, .. }) = registry.types.get(name.as_str()) else {
                return None;
            };
            fields.iter().find_map(|(key, field_value)| {
                let field_ty = Type::new(&input_fields.get(key.as_str())?.ty)?;
                int_out_of_range(registry, &field_ty, field_value).map(|(at, n)| (format!(".{key}{at}"), n))
            })
        }
        _ => None,
    }
}

/// A validation error for each `Int` written in the operation (arguments, in its fragments
/// too, and variable defaults) that does not fit 32 bits.
fn literal_ints(registry: &Registry, doc: &ExecutableDocument, operation: &OperationDefinition) -> Vec<ServerError> {
    let mut errors = Vec::new();
    for variable in &operation.variable_definitions {
        let Some(default) = &variable.node.default_value else { continue };
        if let Some((at, n)) = int_out_of_range(registry, &variable.node.var_type.node, &default.node) {
            let message =
                format!("The default value {n} of variable \"${}{at}\" is {INT_RANGE}.", variable.node.name.node);
            errors.push(refusal(message, default.pos));
        }
    }
    let root = match operation.ty {
        OperationType::Query => Some(registry.query_type.as_str()),
        OperationType::Mutation => registry.mutation_type.as_deref(),
        OperationType::Subscription => registry.subscription_type.as_deref(),
    };
    if let Some(root) = root {
        let mut walk = Walk { registry, doc, seen: HashSet::new(), errors };
        walk.set(&operation.selection_set.node, root);
        errors = walk.errors;
    }
    errors
}

fn refusal(message: String, pos: Pos) -> ServerError {
    with_code(ServerError::new(message, Some(pos)), VALIDATION_FAILED)
}

/// Walks selection sets with the type each is selected on.
struct Walk<'a> {
    registry: &'a Registry,
    doc: &'a ExecutableDocument,
    /// Fragments walked already (a fragment's type is its type condition, so once is enough).
    seen: HashSet<&'a str>,
    errors: Vec<ServerError>,
}

impl<'a> Walk<'a> {
    fn set(&mut self, set: &'a SelectionSet, type_name: &str) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let Some(meta) =
                        self.registry.types.get(type_name).and_then(|t| t.field_by_name(&field.node.name.node))
                    else {
                        continue;
                    };
                    for (name, value) in &field.node.arguments {
                        let Some(ty) = meta.args.get(name.node.as_str()).and_then(|arg| Type::new(&arg.ty)) else {
                            continue;
                        };
                        // Variables are checked with their values; here they count as null.
                        let value =
                            value.node.clone().into_const_with(|_| Ok::<_, std::convert::Infallible>(Value::Null));
                        let Ok(value) = value;
                        if let Some((at, n)) = int_out_of_range(self.registry, &ty, &value) {
                            let message = format!(
                                "The value {n} of argument \"{}{at}\" of \"{}\" is {INT_RANGE}.",
                                name.node, field.node.name.node
                            );
                            self.errors.push(refusal(message, name.pos));
                        }
                        if let Some(at) = nul_in(&value) {
                            let message = format!("{}{at} of \"{}\": {HOLDS_NUL}", name.node, field.node.name.node);
                            let refused = ServerError::new(message, Some(name.pos));
                            self.errors.push(with_code(refused, "BAD_USER_INPUT"));
                        }
                    }
                    self.set(&field.node.selection_set.node, MetaTypeName::concrete_typename(&meta.ty));
                }
                Selection::InlineFragment(inline) => {
                    let on = inline.node.type_condition.as_ref().map_or(type_name, |c| c.node.on.node.as_str());
                    self.set(&inline.node.selection_set.node, on);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.doc.fragments.get(name) else { continue };
                    if self.seen.insert(name) {
                        let on = fragment.node.type_condition.node.on.node.as_str();
                        self.set(&fragment.node.selection_set.node, on);
                    }
                }
            }
        }
    }
}

const HOLDS_NUL: &str = "must not contain the NUL character (U+0000)";

/// Where inside `value` a text holds NUL: `""` for the value itself, `.field` or `[2]` inside
/// it (a JSON value's keys too).
fn nul_in(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if text.contains('\0') => Some(String::new()),
        Value::List(items) => {
            items.iter().enumerate().find_map(|(i, item)| nul_in(item).map(|at| format!("[{i}]{at}")))
        }
        Value::Object(fields) => fields.iter().find_map(|(key, field)| {
            let shown = key.escape_debug();
            if key.contains('\0') { Some(format!(".{shown}")) } else { nul_in(field).map(|at| format!(".{shown}{at}")) }
        }),
        _ => None,
    }
}

/// Every way the request's variables do not fit the types the operation declares, at
/// `variables.<name>…`.
fn variable_problems(registry: &Registry, operation: &OperationDefinition, variables: &Variables) -> Vec<Problem> {
    let mut problems = Vec::new();
    for definition in &operation.variable_definitions {
        let name = &definition.node.name.node;
        let ty = &definition.node.var_type.node;
        let path = format!("variables.{name}");
        match variables.get(name) {
            Some(value) => {
                coerce(registry, ty, value, &path, &mut problems);
                if let Some(at) = nul_in(value) {
                    problems.push(Problem::new(format!("{path}{at}"), HOLDS_NUL));
                }
            }
            None if !ty.nullable && definition.node.default_value.is_none() => {
                problems.push(Problem::new(path, format!("is required (a {ty}) and was not given")));
            }
            None => {}
        }
    }
    problems
}

/// The problems of `value` as a `ty`, as GraphQL coerces input values.
fn coerce(registry: &Registry, ty: &Type, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    if let Value::Null = value {
        if !ty.nullable {
            problems.push(Problem::new(path, format!("must not be null (it is a {ty})")));
        }
        return;
    }
    match &ty.base {
        BaseType::List(inner) => match value {
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    coerce(registry, inner, item, &format!("{path}[{i}]"), problems);
                }
            }
            single => coerce(registry, inner, single, path, problems),
        },
        BaseType::Named(name) => coerce_named(registry, name, value, path, problems),
    }
}

fn coerce_named(registry: &Registry, name: &Name, value: &Value, path: &str, problems: &mut Vec<Problem>) {
    let mut problem = |message: String| problems.push(Problem::new(path, message));
    match registry.types.get(name.as_str()) {
        Some(MetaType::Scalar { .. }) if name.as_str() == "Int" => match value {
            Value::Number(n) if out_of_int_range(value) => problem(format!("{n} is {INT_RANGE}")),
            Value::Number(n) if n.is_i64() => {}
            other => problem(format!("must be an Int, not {other}")),
        },
        Some(MetaType::Scalar { is_valid: Some(is_valid), .. }) if !is_valid(value) => {
            problem(format!("must be a {name}, not {value}"));
        }
        Some(MetaType::Enum { enum_values, .. }) => {
            let given = match value {
                Value::Enum(given) => Some(given.as_str()),
                Value::String(given) => Some(given.as_str()),
                _ => None,
            };
            if !given.is_some_and(|given| enum_values.contains_key(given)) {
                let allowed: Vec<&str> = enum_values.keys().map(String::as_str).collect();
                problem(format!("must be one of {}, not {value}", allowed.join(", ")));
            }
        }
        Some(MetaType::InputObject { input_fields, .. }) => {
            let Value::Object(given) = value else {
                return problem(format!("must be an object (a {name}), not {value}"));
            };
            for key in given.keys().filter(|key| !input_fields.contains_key(key.as_str())) {
                problems.push(Problem::new(format!("{path}.{key}"), format!("is not a field of {name}")));
            }
            for (field_name, field) in input_fields {
                let Some(field_ty) = Type::new(&field.ty) else { continue };
                let field_path = format!("{path}.{field_name}");
                match given.get(field_name.as_str()) {
                    Some(field_value) => coerce(registry, &field_ty, field_value, &field_path, problems),
                    None if !field_ty.nullable && field.default_value.is_none() => {
                        problems.push(Problem::new(field_path, format!("is required (a {field_ty})")));
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn int_range_is_thirty_two_bits() {
        let int = |n: serde_json::Value| Value::from_json(n).unwrap();
        assert!(!out_of_int_range(&int(json!(2147483647))));
        assert!(!out_of_int_range(&int(json!(-2147483648))));
        assert!(out_of_int_range(&int(json!(2147483648_i64))));
        assert!(out_of_int_range(&int(json!(-2147483649_i64))));
        assert!(out_of_int_range(&int(json!(u64::MAX))));
        assert!(!out_of_int_range(&int(json!(1.5))), "a float is a type error, not a range error");
    }
}
