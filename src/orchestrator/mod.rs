//! Running teams: the TeamSpec, routing, retries and fallbacks, and the model providers.

pub mod estimate;
pub mod executor;
pub mod prompts;
pub mod providers;
pub mod routing;
pub mod spec;
pub mod tokens;

/// A provider a spec's agents use that has no API key configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingKey {
    /// Where the spec first uses it: `spec.agents[0].model`.
    pub path: String,
    pub provider: String,
    /// The variable to set: `OPENAI_API_KEY`, `ENSEMBLE_PROVIDER_<NAME>_API_KEY`.
    pub variable: String,
}

impl std::fmt::Display for MissingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: provider \"{}\" has no API key configured; set {} if it needs one, or its runs will fail",
            self.path, self.provider, self.variable
        )
    }
}

/// One [`MissingKey`] per provider of a (valid) spec's agents that `providers` configure
/// without an API key.
pub fn missing_keys(spec: &serde_json::Value, providers: &crate::config::ProviderSettings) -> Vec<MissingKey> {
    missing_keys_with(spec, &|provider| providers.missing_key(provider))
}

/// [`missing_keys`] with `missing_key` saying which variable a provider lacks.
fn missing_keys_with(spec: &serde_json::Value, missing_key: &dyn Fn(&str) -> Option<String>) -> Vec<MissingKey> {
    let agents = spec.get("agents").and_then(serde_json::Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut missing = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let model = agent.get("model").and_then(serde_json::Value::as_str).unwrap_or_default();
        let Some((provider, _)) = model.split_once('/') else { continue };
        if !seen.insert(provider) {
            continue;
        }
        if let Some(variable) = missing_key(provider) {
            let path = format!("spec.agents[{i}].model");
            missing.push(MissingKey { path, provider: provider.to_owned(), variable });
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_keyless_provider_is_named_once_where_the_spec_first_uses_it() {
        let spec = json!({"agents": [
            {"name": "a", "model": "local/echo"},
            {"name": "b", "model": "acme/big"},
            {"name": "c", "model": "openai/gpt-4o-mini"},
            {"name": "d", "model": "acme/small"}
        ]});
        let keyless = |provider: &str| (provider == "acme").then(|| "ENSEMBLE_PROVIDER_ACME_API_KEY".to_owned());
        let missing = missing_keys_with(&spec, &keyless);
        assert_eq!(
            missing,
            [MissingKey {
                path: "spec.agents[1].model".into(),
                provider: "acme".into(),
                variable: "ENSEMBLE_PROVIDER_ACME_API_KEY".into()
            }]
        );
        assert_eq!(
            missing[0].to_string(),
            "spec.agents[1].model: provider \"acme\" has no API key configured; set ENSEMBLE_PROVIDER_ACME_API_KEY \
             if it needs one, or its runs will fail"
        );
    }
}
