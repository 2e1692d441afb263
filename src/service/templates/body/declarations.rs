//! Variable declarations (`[{name, type, required?, default?, description?}]`) and the values a
//! caller gives for them.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::{Variable, VariableType, string_field, unknown_fields};
use crate::error::Problem;

const FIELDS: [&str; 5] = ["name", "type", "required", "default", "description"];
const MAX_VARIABLES: usize = 100;
const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Reserved: a workflow's steps read earlier outputs as `steps.<id>.output`.
const RESERVED: &str = "steps";

/// The declarations in `value` (a list, or null for none); every problem goes to `problems`.
pub(super) fn parse(value: &Value, problems: &mut Vec<Problem>) -> Vec<Variable> {
    let list = match value {
        Value::Null => return Vec::new(),
        Value::Array(list) => list,
        _ => {
            problems.push(Problem::new("variables", "must be a list of variable declarations"));
            return Vec::new();
        }
    };
    if list.len() > MAX_VARIABLES {
        problems.push(Problem::new("variables", format!("must declare at most {MAX_VARIABLES} variables")));
    }
    let mut seen = HashSet::new();
    list.iter()
        .enumerate()
        .filter_map(|(i, item)| declaration(&format!("variables[{i}]"), item, &mut seen, problems))
        .collect()
}

/// Every name `value` declares, valid or not, so that text using a variable whose declaration
/// has a problem is not also blamed for using an undeclared one.
pub(super) fn names(value: &Value) -> BTreeSet<&str> {
    let list = value.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().filter_map(|item| item.get("name")?.as_str()).collect()
}

fn declaration(path: &str, item: &Value, seen: &mut HashSet<String>, problems: &mut Vec<Problem>) -> Option<Variable> {
    let Some(obj) = item.as_object() else {
        problems.push(Problem::new(path, "must be an object with a `name` and a `type`"));
        return None;
    };
    unknown_fields(path, obj, &FIELDS, "variable", problems);
    let name = name(path, obj.get("name"), seen, problems);
    let kind = kind(path, obj.get("type"), problems);
    let required = match obj.get("required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(required)) => *required,
        Some(_) => {
            problems.push(Problem::new(format!("{path}.required"), "must be true or false"));
            false
        }
    };
    let default = obj.get("default").filter(|value| !value.is_null()).cloned();
    if let Some(default) = &default {
        let at = format!("{path}.default");
        if required {
            problems.push(Problem::new(at, "a required variable cannot have a default: remove one or the other"));
        } else if let Some(kind) = kind
            && !has_type(kind, default)
        {
            problems.push(Problem::new(at, format!("must be {}, as the variable's type says", describe(kind))));
        }
    }
    let description = string_field(obj, "description", path, MAX_DESCRIPTION_CHARS, false, problems);
    Some(Variable { name: name?, kind: kind?, required, default, description: description.map(str::to_string) })
}

fn name(path: &str, value: Option<&Value>, seen: &mut HashSet<String>, problems: &mut Vec<Problem>) -> Option<String> {
    let at = format!("{path}.name");
    let message = match value {
        None | Some(Value::Null) => "is required".to_string(),
        Some(Value::String(name)) if name == RESERVED => {
            "`steps` is reserved for the outputs of workflow steps; choose another name".to_string()
        }
        Some(Value::String(name)) if !is_identifier(name) => format!(
            "`{name}` is not a valid name: use letters, digits and `_`, not starting with a digit, \
             at most {MAX_NAME_CHARS} characters"
        ),
        Some(Value::String(name)) if !seen.insert(name.clone()) => format!("`{name}` is declared twice"),
        Some(Value::String(name)) => return Some(name.clone()),
        Some(_) => "must be a string".to_string(),
    };
    problems.push(Problem::new(at, message));
    None
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_CHARS
}

fn kind(path: &str, value: Option<&Value>, problems: &mut Vec<Problem>) -> Option<VariableType> {
    let message = match value {
        None | Some(Value::Null) => "is required",
        Some(value) => match serde_json::from_value(value.clone()) {
            Ok(kind) => return Some(kind),
            Err(_) => "must be one of string, number, integer, boolean, array, object",
        },
    };
    problems.push(Problem::new(format!("{path}.type"), message));
    None
}

/// Whether `value` is of type `kind`; an integer is a whole number.
fn has_type(kind: VariableType, value: &Value) -> bool {
    match kind {
        VariableType::String => value.is_string(),
        VariableType::Number => value.is_number(),
        VariableType::Integer => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.is_finite() && n.fract() == 0.0)
        }
        VariableType::Boolean => value.is_boolean(),
        VariableType::Array => value.is_array(),
        VariableType::Object => value.is_object(),
    }
}

/// What a value of type `kind` is, for messages: "must be {describe}".
fn describe(kind: VariableType) -> &'static str {
    match kind {
        VariableType::String => "a string",
        VariableType::Number => "a number",
        VariableType::Integer => "a whole number",
        VariableType::Boolean => "true or false",
        VariableType::Array => "a list",
        VariableType::Object => "an object",
    }
}

/// `given` (an object, or null for none) checked against `declared`, with defaults filled in
/// for absent optional variables; problems at `variables.<name>`, sorted by name.
pub(super) fn values(declared: &[Variable], given: &Value) -> Result<Map<String, Value>, Vec<Problem>> {
    let empty = Map::new();
    let given = match given {
        Value::Null => &empty,
        Value::Object(given) => given,
        _ => return Err(vec![Problem::new("variables", "must be an object of variable values")]),
    };
    let mut problems = Vec::new();
    let mut values = Map::new();
    for variable in declared {
        let path = format!("variables.{}", variable.name);
        match (given.get(&variable.name).filter(|value| !value.is_null()), &variable.default) {
            (Some(value), _) if has_type(variable.kind, value) => {
                values.insert(variable.name.clone(), value.clone());
            }
            (Some(_), _) => problems.push(Problem::new(path, format!("must be {}", describe(variable.kind)))),
            (None, _) if variable.required => problems.push(Problem::new(path, "is required")),
            (None, Some(default)) => {
                values.insert(variable.name.clone(), default.clone());
            }
            (None, None) => {}
        }
    }
    for name in given.keys().filter(|name| !declared.iter().any(|variable| &variable.name == *name)) {
        problems.push(Problem::new(format!("variables.{name}"), "is not a variable of this template"));
    }
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    if problems.is_empty() { Ok(values) } else { Err(problems) }
}
