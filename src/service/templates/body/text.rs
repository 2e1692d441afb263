//! Template text: what it may refer to, its syntax errors placed at a line and column, and
//! rendering it in the sandbox.

use std::{collections::BTreeSet, ops::Range};

use minijinja::{Error, ErrorKind, Value as TemplateValue};
use serde_json::{Map, Value};

use crate::{error::Problem, orchestrator::prompts::sandbox};

/// The most a render may produce.
const MAX_OUTPUT_BYTES: usize = 1 << 20;
const TOO_LONG: &str = "stopped: the template ran too long (a loop that is too big?)";

/// What template text may refer to.
pub(super) struct Scope<'a> {
    /// The declared variables.
    pub variables: &'a BTreeSet<&'a str>,
    /// In a workflow, which steps' outputs it may read.
    pub steps: Option<StepScope<'a>>,
}

/// The steps a workflow text may read: those before it, and in a loop every step of the loop
/// (a later one's from the round before).
pub(super) struct StepScope<'a> {
    /// Every step's id in the body's order, loops' steps in place (None where one has no valid id).
    pub ids: &'a [Option<&'a str>],
    /// Where the text is in that order.
    pub current: usize,
    /// The loop the text is in, as a range of that order.
    pub within: Option<Range<usize>>,
}

/// Checks that `text` parses and refers only to what `scope` allows; problems at `path`.
pub(super) fn check(path: &str, text: &str, scope: &Scope, problems: &mut Vec<Problem>) {
    let env = sandbox();
    match env.template_from_str(text) {
        Ok(template) => references(path, template.undeclared_variables(true), &env, scope, problems),
        Err(error) => problems.push(syntax_problem(path, text, &error)),
    }
}

/// Checks that the condition `expression` parses and refers only to what `scope` allows;
/// problems at `path`, a syntax error with its line and column.
pub(super) fn check_condition(path: &str, expression: &str, scope: &Scope, problems: &mut Vec<Problem>) {
    let env = sandbox();
    match env.compile_expression(expression) {
        Ok(compiled) => references(path, compiled.undeclared_variables(true), &env, scope, problems),
        Err(error) => {
            let detail = error.detail().map(str::to_string).unwrap_or_else(|| error.kind().to_string());
            problems.push(placed(
                Problem::new(path, format!("is not a valid condition: {detail}")),
                expression,
                &error,
            ));
        }
    }
}

/// Whether the condition `expression` holds in `context`.
pub(super) fn evaluate(path: &str, expression: &str, context: &Map<String, Value>) -> Result<bool, Vec<Problem>> {
    let env = sandbox();
    let compiled =
        env.compile_expression(expression).map_err(|error| vec![syntax_problem(path, expression, &error)])?;
    let value = compiled.eval(TemplateValue::from(minijinja::value::Serde(context))).map_err(|error| {
        let absent = || {
            let used = compiled.undeclared_variables(false).into_iter();
            used.filter(|name| !context.contains_key(name)).collect()
        };
        vec![render_problem(path, expression, &error, absent)]
    })?;
    Ok(value.is_true())
}

/// A problem at `path` for each name among `used` that `scope` does not allow.
fn references(
    path: &str,
    used: std::collections::HashSet<String>,
    env: &minijinja::Environment,
    scope: &Scope,
    problems: &mut Vec<Problem>,
) {
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let used: BTreeSet<String> = used.into_iter().collect();
    let mut messages = BTreeSet::new();
    for reference in &used {
        let mut parts = reference.split('.');
        let name = parts.next().unwrap_or_default();
        if scope.variables.contains(name) {
            continue;
        }
        match &scope.steps {
            Some(steps) if name == "steps" => messages.extend(step_reference(parts.next(), parts.next(), steps)),
            Some(StepScope { within: Some(_), .. }) if name == "loop" => {}
            _ if globals.contains(name) => {}
            _ => {
                messages.insert(format!("uses `{name}`, which is not declared in variables"));
            }
        }
    }
    problems.extend(messages.into_iter().map(|message| Problem::new(path, message)));
}

/// What is wrong with `steps.<id>.<field>` read where `scope` says, if anything.
fn step_reference(id: Option<&str>, field: Option<&str>, scope: &StepScope) -> Option<String> {
    // `steps.<id>` alone is allowed for `is defined` tests.
    let (Some(id), None | Some("output" | "iterations")) = (id, field) else {
        return Some("uses `steps` other than as `steps.<id>.output` or `steps.<id>.iterations`".to_string());
    };
    let in_loop = |at: usize| scope.within.as_ref().is_some_and(|range| range.contains(&at));
    match scope.ids.iter().position(|other| *other == Some(id)) {
        Some(at) if at < scope.current || in_loop(at) => None,
        Some(at) if at == scope.current => {
            Some(format!("refers to its own step `{id}`, whose output does not exist yet"))
        }
        Some(_) => Some(format!("refers to step `{id}`, which runs later")),
        None => Some(format!("refers to step `{id}`, which does not exist")),
    }
}

/// Renders `text` with `context`; a syntax error, a missing variable, a failed expression or a
/// render that runs too long or too large is a problem at `path`.
pub(super) fn render(path: &str, text: &str, context: &Map<String, Value>) -> Result<String, Vec<Problem>> {
    let env = sandbox();
    let template = env.template_from_str(text).map_err(|error| vec![syntax_problem(path, text, &error)])?;
    let output = template.render(TemplateValue::from(minijinja::value::Serde(context))).map_err(|error| {
        let absent = || {
            let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
            let used = template.undeclared_variables(false).into_iter();
            used.filter(|name| !context.contains_key(name) && !globals.contains(name.as_str())).collect()
        };
        vec![render_problem(path, text, &error, absent)]
    })?;
    if output.len() > MAX_OUTPUT_BYTES {
        return Err(vec![Problem::new(path, "stopped: the rendered text is over 1 MB")]);
    }
    Ok(output)
}

fn syntax_problem(path: &str, text: &str, error: &Error) -> Problem {
    let detail = error.detail().map(str::to_string).unwrap_or_else(|| error.kind().to_string());
    placed(Problem::new(path, format!("is not a valid template: {detail}")), text, error)
}

/// The problem a failed render is; `absent` lists the variables the text uses that have no value.
fn render_problem(path: &str, text: &str, error: &Error, absent: impl FnOnce() -> BTreeSet<String>) -> Problem {
    let recursed = error.kind() == ErrorKind::InvalidOperation && error.detail() == Some("recursion limit exceeded");
    if error.kind() == ErrorKind::OutOfFuel || recursed {
        return Problem::new(path, TOO_LONG);
    }
    let message = match error.kind() {
        ErrorKind::UndefinedError => match missing_variable(text, error, &absent()) {
            Some(name) => format!("uses `{name}`, which has no value"),
            None => "uses a value that is not defined".to_string(),
        },
        kind => {
            format!("cannot be rendered: {}", error.detail().map(str::to_string).unwrap_or_else(|| kind.to_string()))
        }
    };
    placed(Problem::new(path, message), text, error)
}

/// Which of the `absent` variables an undefined-value error stopped at: the first one named in
/// the tag (`{{ … }}` or `{% … %}`) where the error is, up to the error.
fn missing_variable<'a>(text: &str, error: &Error, absent: &'a BTreeSet<String>) -> Option<&'a str> {
    let range = error.range()?;
    let before = text.get(..range.start)?;
    let tag_start = before.rfind("{{").max(before.rfind("{%")).unwrap_or(0);
    let tag = text.get(tag_start..range.end)?;
    let words = tag.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    words.filter_map(|word| absent.get(word)).map(String::as_str).next()
}

/// `problem` placed at the 1-based line and column (in characters) where `error` starts.
fn placed(problem: Problem, text: &str, error: &Error) -> Problem {
    let Some(range) = error.range() else {
        return problem;
    };
    let (mut line, mut column) = (1u32, 1u32);
    for (_, c) in text.char_indices().take_while(|(offset, _)| *offset < range.start) {
        if c == '\n' {
            (line, column) = (line.saturating_add(1), 1);
        } else {
            column = column.saturating_add(1);
        }
    }
    problem.at(line, column)
}
