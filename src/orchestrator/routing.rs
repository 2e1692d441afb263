//! Routing: the first rule whose condition holds for the message and variables picks the
//! agent, and the run keeps why (`contains "refund"`); otherwise the default agent answers.

use serde_json::{Map, Value};

use super::spec::{Condition, TeamSpec};

/// Where a message goes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub agent: String,
    /// The matching rule; none when the default was used.
    pub rule: Option<String>,
    pub reason: String,
}

pub fn route(spec: &TeamSpec, content: &str, variables: &Map<String, Value>) -> Route {
    for rule in &spec.routing.rules {
        if let Some(reason) = explain(&rule.when, content, variables) {
            return Route { agent: rule.route_to.clone(), rule: Some(rule.name.clone()), reason };
        }
    }
    Route { agent: spec.routing.default.clone(), rule: None, reason: "no rule matched; the default agent".into() }
}

/// Why `condition` holds, or `None` when it does not.
fn explain(condition: &Condition, content: &str, variables: &Map<String, Value>) -> Option<String> {
    match condition {
        Condition::Contains(words) => {
            let lower = content.to_lowercase();
            words.iter().find(|w| lower.contains(&w.to_lowercase())).map(|w| format!("contains {w:?}"))
        }
        Condition::Regex(regex) => {
            regex.find(content).map(|m| format!("regex {:?} matched {:?}", regex.as_str(), clip(m.as_str())))
        }
        Condition::LengthAbove(n) => {
            let length = content.chars().count() as u64;
            (length > *n).then(|| format!("length {length} > {n}"))
        }
        Condition::LengthBelow(n) => {
            let length = content.chars().count() as u64;
            (length < *n).then(|| format!("length {length} < {n}"))
        }
        Condition::Variable { name, equals } => {
            (variables.get(name) == Some(equals)).then(|| format!("variable {name} = {equals}"))
        }
        Condition::All(items) => {
            let reasons: Option<Vec<String>> = items.iter().map(|c| explain(c, content, variables)).collect();
            reasons.map(|r| format!("all of ({})", r.join(", ")))
        }
        Condition::Any(items) => items.iter().find_map(|c| explain(c, content, variables)),
        Condition::Not(inner) => match explain(inner, content, variables) {
            Some(_) => None,
            None => Some(format!("not ({})", describe(inner))),
        },
    }
}

/// The condition itself, for `not (…)` reasons.
fn describe(condition: &Condition) -> String {
    match condition {
        Condition::Contains(words) => format!("contains {words:?}"),
        Condition::Regex(regex) => format!("regex {:?}", regex.as_str()),
        Condition::LengthAbove(n) => format!("length > {n}"),
        Condition::LengthBelow(n) => format!("length < {n}"),
        Condition::Variable { name, equals } => format!("variable {name} = {equals}"),
        Condition::All(items) => format!("all of ({})", items.iter().map(describe).collect::<Vec<_>>().join(", ")),
        Condition::Any(items) => format!("any of ({})", items.iter().map(describe).collect::<Vec<_>>().join(", ")),
        Condition::Not(inner) => format!("not ({})", describe(inner)),
    }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::orchestrator::spec;

    fn team() -> TeamSpec {
        let doc = json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "local/echo"},
                       {"name": "vip", "model": "local/echo"}, {"name": "long", "model": "local/summarize"}],
            "routing": {"rules": [
                {"name": "gold", "when": {"all": [{"variable": {"name": "tier", "equals": "gold"}}, {"not": {"contains": "spam"}}]}, "routeTo": "vip"},
                {"name": "money", "when": {"any": [{"contains": ["invoice", "refund"]}, {"regex": "(?i)charge"}]}, "routeTo": "billing"},
                {"name": "essay", "when": {"lengthAbove": 40}, "routeTo": "long"}
            ], "default": "triage"}
        });
        spec::parse(&doc, &|_| true).unwrap()
    }

    fn go(content: &str, variables: Value) -> Route {
        route(&team(), content, variables.as_object().unwrap())
    }

    #[test]
    fn the_first_matching_rule_wins_and_says_why() {
        let r = go("I want a REFUND for this", json!({}));
        assert_eq!((r.agent.as_str(), r.rule.as_deref()), ("billing", Some("money")));
        assert_eq!(r.reason, "contains \"refund\"");
        assert_eq!(go("why this charge?", json!({})).reason, "regex \"(?i)charge\" matched \"charge\"");
        let vip = go("a refund please", json!({"tier": "gold"}));
        assert_eq!(vip.rule.as_deref(), Some("gold"));
        assert_eq!(vip.reason, "all of (variable tier = \"gold\", not (contains [\"spam\"]))");
        assert_eq!(go("x".repeat(41).as_str(), json!({})).reason, "length 41 > 40");
    }

    #[test]
    fn no_match_uses_the_default() {
        let r = go("hello", json!({"tier": "silver"}));
        assert_eq!((r.agent.as_str(), r.rule), ("triage", None));
        assert_eq!(r.reason, "no rule matched; the default agent");
        assert_eq!(go("gold spam", json!({"tier": "gold"})).agent, "triage");
    }
}
