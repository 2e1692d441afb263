//! The structural difference of two spec documents: RFC 6902 JSON Patch operations, and one
//! line a person can read per change ("agent billing: model openai/gpt-4o-mini → openai/gpt-4o").

use serde_json::{Value, json};

/// Patch operations turning `from` into `to`, and a summary line for each.
pub fn diff(from: &Value, to: &Value) -> (Vec<Value>, Vec<String>) {
    let mut ops = Vec::new();
    walk(from, to, String::new(), &mut ops);
    let summaries = ops.iter().map(|op| summarize(op, from, to)).collect();
    (ops, summaries)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn walk(from: &Value, to: &Value, path: String, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, old) in a {
                let at = format!("{path}/{}", escape(key));
                match b.get(key) {
                    Some(new) => walk(old, new, at, ops),
                    None => ops.push(json!({"op": "remove", "path": at})),
                }
            }
            for (key, new) in b {
                if !a.contains_key(key) {
                    ops.push(json!({"op": "add", "path": format!("{path}/{}", escape(key)), "value": new}));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (old, new)) in a.iter().zip(b).enumerate() {
                walk(old, new, format!("{path}/{i}"), ops);
            }
            // Removals from the end first, so each index is right when it is applied.
            for i in (b.len()..a.len()).rev() {
                ops.push(json!({"op": "remove", "path": format!("{path}/{i}")}));
            }
            for (i, new) in b.iter().enumerate().skip(a.len()) {
                ops.push(json!({"op": "add", "path": format!("{path}/{i}"), "value": new}));
            }
        }
        (a, b) if a == b => {}
        (_, b) => ops.push(json!({"op": "replace", "path": path, "value": b})),
    }
}

fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 { format!("{}…", text.chars().take(59).collect::<String>()) } else { text }
}

/// `agents/1/model` → `agent billing: model`; `routing/rules/0/routeTo` → `rule money: routeTo`.
fn subject(path: &str, doc: &Value) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let named = |list: &str, index: &str, label: &str, rest: &[&str]| {
        let name = doc.pointer(&format!("/{list}/{index}/name")).and_then(Value::as_str).unwrap_or(index).to_string();
        let field = (!rest.is_empty()).then(|| rest.join("."));
        (format!("{label} {name}"), field)
    };
    match parts.as_slice() {
        ["agents", index, rest @ ..] => named("agents", index, "agent", rest),
        ["routing", "rules", index, rest @ ..] => named("routing/rules", index, "rule", rest),
        _ => (parts.join("."), None),
    }
}

fn summarize(op: &Value, from: &Value, to: &Value) -> String {
    let path = op["path"].as_str().unwrap_or_default();
    match op["op"].as_str().unwrap_or_default() {
        "add" => match subject(path, to) {
            (what, None) => format!("{what} added"),
            (what, Some(field)) => format!("{what}: {field} set to {}", short(&op["value"])),
        },
        "remove" => match subject(path, from) {
            (what, None) => format!("{what} removed"),
            (what, Some(field)) => format!("{what}: {field} removed"),
        },
        _ => {
            let old = from.pointer(path).map(short).unwrap_or_default();
            match subject(path, from) {
                (what, Some(field)) => format!("{what}: {field} {old} → {}", short(&op["value"])),
                (what, None) => format!("{what}: {old} → {}", short(&op["value"])),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_model_reads_as_a_sentence() {
        let from = json!({"agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "openai/gpt-4o-mini"}]});
        let to = json!({"agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "openai/gpt-4o"}]});
        let (ops, lines) = diff(&from, &to);
        assert_eq!(ops, vec![json!({"op": "replace", "path": "/agents/1/model", "value": "openai/gpt-4o"})]);
        assert_eq!(lines, ["agent billing: model openai/gpt-4o-mini → openai/gpt-4o"]);
    }

    #[test]
    fn added_and_removed_items_are_named() {
        let from = json!({"agents": [{"name": "a"}, {"name": "b"}], "limits": {"timeoutMs": 5}});
        let to = json!({"agents": [{"name": "a"}], "limits": {}, "fallbacks": {"a": []}});
        let (ops, lines) = diff(&from, &to);
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(lines.contains(&"agent b removed".to_string()), "{lines:?}");
        assert!(lines.contains(&"limits.timeoutMs removed".to_string()), "{lines:?}");
        assert!(lines.contains(&"fallbacks added".to_string()), "{lines:?}");
    }

    #[test]
    fn equal_documents_have_no_operations() {
        let doc = json!({"a": [1, {"b": 2}]});
        assert_eq!(diff(&doc, &doc), (vec![], vec![]));
    }
}
