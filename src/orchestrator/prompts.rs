//! System prompts may use the run's variables (`You help {{ customer }}`), rendered by
//! minijinja in a sandbox: no file access, a fuel limit against runaway loops, and strict
//! undefined variables, so a prompt never goes out with a hole in it.

use std::{collections::BTreeSet, sync::Arc};

use minijinja::{Environment, UndefinedBehavior, Value as TemplateValue};
use serde_json::{Map, Value};

use super::spec::TeamSpec;
use crate::error::Problem;

/// The work one render may do before it is stopped: about this many instructions, or 64 times
/// as many bytes of data. Loops over a few hundred items fit; runaway loops stop in milliseconds.
const FUEL: u64 = 100_000;

/// How deeply loops, conditions and macros may nest while rendering; well below what a worker
/// thread's stack holds.
const RECURSION_LIMIT: usize = 100;

/// Whether `text` is template text rather than plain text.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// The environment every template is parsed and rendered in: no loader (so no file access and
/// no includes), fuel and recursion limits, strict undefined variables, and no `debug()`, which
/// would print the engine's state.
pub fn sandbox() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.remove_global("debug");
    env
}

/// The spec with every system prompt rendered with `variables`, or every problem: a variable a
/// prompt needs and the run did not give, a syntax error, a render that ran out of fuel.
pub fn render(spec: &Arc<TeamSpec>, variables: &Map<String, Value>) -> Result<Arc<TeamSpec>, Vec<Problem>> {
    if !spec.agents.iter().any(|a| is_template(&a.system_prompt)) {
        return Ok(spec.clone());
    }
    let env = sandbox();
    let context = TemplateValue::from(minijinja::value::Serde(variables));
    let globals: BTreeSet<String> = env.globals().map(|(name, _)| name.to_string()).collect();
    let mut rendered = TeamSpec::clone(spec);
    let mut problems = Vec::new();
    let mut missing = BTreeSet::new();
    for (i, agent) in rendered.agents.iter_mut().enumerate() {
        if !is_template(&agent.system_prompt) {
            continue;
        }
        let template = match env.template_from_str(&agent.system_prompt) {
            Ok(template) => template,
            Err(error) => {
                let at = error.line().map(|line| format!(" (line {line})")).unwrap_or_default();
                problems.push(Problem::new(
                    format!("spec.agents[{i}].systemPrompt"),
                    format!("is not a valid template{at}: {}", error.detail().unwrap_or("syntax error")),
                ));
                continue;
            }
        };
        let needed: BTreeSet<String> = template.undeclared_variables(false).into_iter().collect();
        let absent: Vec<String> =
            needed.into_iter().filter(|name| !variables.contains_key(name) && !globals.contains(name)).collect();
        if !absent.is_empty() {
            for name in absent {
                missing.insert((name, agent.name.clone()));
            }
            continue;
        }
        match template.render(&context) {
            Ok(text) => agent.system_prompt = text,
            Err(error) => problems.push(Problem::new(
                format!("spec.agents[{i}].systemPrompt"),
                format!("cannot be rendered: {}", error.detail().unwrap_or("the template failed")),
            )),
        }
    }
    for (name, agent) in missing {
        problems.push(Problem::new(
            format!("input.variables.{name}"),
            format!("is required by the system prompt of agent `{agent}`"),
        ));
    }
    if problems.is_empty() { Ok(Arc::new(rendered)) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::orchestrator::spec;

    fn team(prompt: &str) -> Arc<TeamSpec> {
        let doc = json!({"format": "ensemble.team/v1", "agents": [
            {"name": "a", "model": "local/echo", "systemPrompt": prompt},
            {"name": "b", "model": "local/echo", "systemPrompt": "plain"}
        ]});
        Arc::new(spec::parse(&doc, &|_| true).unwrap())
    }

    fn vars(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prompts_are_rendered_with_the_variables() {
        let spec = team("Help {{ customer }} ({{ tier | upper }}).");
        let out = render(&spec, &vars(json!({"customer": "Ada", "tier": "gold"}))).unwrap();
        assert_eq!(out.agents[0].system_prompt, "Help Ada (GOLD).");
        assert_eq!(out.agents[1].system_prompt, "plain");
    }

    #[test]
    fn every_missing_variable_is_named() {
        let problems = render(&team("{{ customer }} {{ tier }}"), &vars(json!({"tier": 1}))).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "input.variables.customer");
    }

    #[test]
    fn runaway_templates_stop() {
        let problems = render(
            &team("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
            &vars(json!({})),
        )
        .unwrap_err();
        assert!(problems[0].message.contains("cannot be rendered"), "{problems:?}");
        let broken = render(&team("{{ unclosed"), &vars(json!({}))).unwrap_err();
        assert!(broken[0].message.contains("line 1"), "{broken:?}");
    }
}
