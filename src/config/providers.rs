//! Model providers, read once from the environment with the rest of the configuration: OpenAI,
//! and one OpenAI-compatible provider per `ENSEMBLE_PROVIDER_<NAME>_BASE_URL`. One rule for
//! "set": an empty (or blank) variable is unset, wherever it is read.

use std::{collections::HashMap, fmt};

/// OpenAI's API, the `openai` provider's base URL unless `ENSEMBLE_PROVIDER_OPENAI_BASE_URL`
/// says otherwise.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
const ENV_PREFIX: &str = "ENSEMBLE_PROVIDER_";

/// Where a provider lives and the key it wants (none for e.g. a local Ollama).
#[derive(Clone)]
pub struct Endpoint {
    pub base_url: String,
    pub api_key: Option<String>,
    /// The variable the key comes from, or the one to set when there is none.
    pub key_variable: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.api_key.as_ref().map(|_| "<redacted>");
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("api_key", &key)
            .field("key_variable", &self.key_variable)
            .finish()
    }
}

/// The variable that configures `provider`'s base URL: `ENSEMBLE_PROVIDER_<NAME>_BASE_URL`.
pub fn base_url_variable(provider: &str) -> String {
    format!("{ENV_PREFIX}{}_BASE_URL", provider.to_ascii_uppercase())
}

/// The variable to set for `provider`'s API key: `OPENAI_API_KEY` for OpenAI (which also reads
/// `ENSEMBLE_PROVIDER_OPENAI_API_KEY`), `ENSEMBLE_PROVIDER_<NAME>_API_KEY` for the others.
pub fn key_variable(provider: &str) -> String {
    match provider {
        "openai" => "OPENAI_API_KEY".to_owned(),
        other => format!("{ENV_PREFIX}{}_API_KEY", other.to_ascii_uppercase()),
    }
}

/// The providers the server can reach besides the offline `local`: `openai`, plus one per
/// `ENSEMBLE_PROVIDER_<NAME>_BASE_URL`, sorted by name.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    endpoints: Vec<(String, Endpoint)>,
}

/// OpenAI alone, without a key: what an empty environment configures.
impl Default for ProviderSettings {
    fn default() -> Self {
        Self::from_vars([])
    }
}

impl ProviderSettings {
    /// The providers the process environment configures.
    pub fn from_env() -> Self {
        // `vars()` panics on a non-Unicode variable; such variables cannot configure us anyway.
        Self::from_vars(
            std::env::vars_os().filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?))),
        )
    }

    /// The providers `vars` configure. Empty values count as unset; `local` stays the offline
    /// provider.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars: HashMap<String, String> = vars.into_iter().filter(|(_, value)| !value.trim().is_empty()).collect();
        let var = |name: &str| vars.get(name).cloned();
        let openai_key = ["ENSEMBLE_PROVIDER_OPENAI_API_KEY", "OPENAI_API_KEY"]
            .into_iter()
            .find_map(|name| Some((name, var(name)?)));
        let openai = Endpoint {
            base_url: var("ENSEMBLE_PROVIDER_OPENAI_BASE_URL").unwrap_or_else(|| OPENAI_BASE_URL.to_owned()),
            key_variable: openai_key.as_ref().map_or_else(|| key_variable("openai"), |(name, _)| (*name).to_owned()),
            api_key: openai_key.map(|(_, key)| key),
        };
        let mut endpoints = vec![("openai".to_owned(), openai)];
        for (key, base_url) in &vars {
            let Some(name) = key.strip_prefix(ENV_PREFIX).and_then(|rest| rest.strip_suffix("_BASE_URL")) else {
                continue;
            };
            let lowercase = name.to_ascii_lowercase();
            if !matches!(lowercase.as_str(), "" | "openai" | "local") {
                let key_variable = format!("{ENV_PREFIX}{name}_API_KEY");
                let api_key = var(&key_variable);
                endpoints.push((lowercase, Endpoint { base_url: base_url.clone(), api_key, key_variable }));
            }
        }
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        Self { endpoints }
    }

    /// Every configured provider but `local`, by name.
    pub fn endpoints(&self) -> &[(String, Endpoint)] {
        &self.endpoints
    }

    /// Whether `provider/…` models can be reached: the offline `local`, OpenAI, or a provider
    /// with a base URL.
    pub fn known(&self, provider: &str) -> bool {
        provider == "local" || self.endpoints.iter().any(|(name, _)| name == provider)
    }

    /// The variable to set for `provider`'s API key, when the provider is configured without
    /// one (`local` needs none; an unknown provider is the spec's problem, not this).
    pub fn missing_key(&self, provider: &str) -> Option<String> {
        let (_, endpoint) = self.endpoints.iter().find(|(name, _)| name == provider)?;
        endpoint.api_key.is_none().then(|| endpoint.key_variable.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<const N: usize>(vars: [(&str, &str); N]) -> ProviderSettings {
        ProviderSettings::from_vars(vars.map(|(key, value)| (key.to_owned(), value.to_owned())))
    }

    #[test]
    fn endpoints_come_from_provider_variables() {
        let providers = settings([
            ("OPENAI_API_KEY", "sk-openai"),
            ("ENSEMBLE_PROVIDER_OLLAMA_BASE_URL", "http://localhost:11434/v1"),
            ("ENSEMBLE_PROVIDER_GROQ_BASE_URL", "https://api.groq.com/openai/v1"),
            ("ENSEMBLE_PROVIDER_GROQ_API_KEY", "gsk-1"),
            ("ENSEMBLE_PROVIDER_LOCAL_BASE_URL", "http://elsewhere"),
            ("ENSEMBLE_PROVIDER_EMPTY_BASE_URL", ""),
            ("PATH", "/usr/bin"),
        ]);
        let summary: Vec<_> = providers
            .endpoints()
            .iter()
            .map(|(name, e)| (name.as_str(), e.base_url.as_str(), e.api_key.as_deref(), e.key_variable.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("groq", "https://api.groq.com/openai/v1", Some("gsk-1"), "ENSEMBLE_PROVIDER_GROQ_API_KEY"),
                ("ollama", "http://localhost:11434/v1", None, "ENSEMBLE_PROVIDER_OLLAMA_API_KEY"),
                ("openai", OPENAI_BASE_URL, Some("sk-openai"), "OPENAI_API_KEY"),
            ]
        );
    }

    #[test]
    fn an_empty_base_url_is_unset_for_specs_as_for_runs() {
        let providers = settings([("ENSEMBLE_PROVIDER_ACME_BASE_URL", ""), ("ENSEMBLE_PROVIDER_BLANK_BASE_URL", "  ")]);
        assert!(!providers.known("acme") && !providers.known("blank"), "{providers:?}");
        assert_eq!(providers.missing_key("acme"), None);
        assert!(providers.known("local") && providers.known("openai"));
        let set = settings([("ENSEMBLE_PROVIDER_ACME_BASE_URL", "http://acme/v1")]);
        assert!(set.known("acme"));
        assert_eq!(set.missing_key("acme").as_deref(), Some("ENSEMBLE_PROVIDER_ACME_API_KEY"));
    }

    #[test]
    fn the_openai_specific_variables_win_over_the_generic_key() {
        let providers = settings([
            ("OPENAI_API_KEY", "sk-generic"),
            ("ENSEMBLE_PROVIDER_OPENAI_API_KEY", "sk-ensemble"),
            ("ENSEMBLE_PROVIDER_OPENAI_BASE_URL", "http://proxy/v1"),
        ]);
        let endpoints = providers.endpoints();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(
            (endpoints[0].1.base_url.as_str(), endpoints[0].1.api_key.as_deref(), endpoints[0].1.key_variable.as_str()),
            ("http://proxy/v1", Some("sk-ensemble"), "ENSEMBLE_PROVIDER_OPENAI_API_KEY")
        );
        let keyless = settings([("ENSEMBLE_PROVIDER_OPENAI_BASE_URL", "http://proxy/v1")]);
        let openai = &keyless.endpoints()[0].1;
        assert_eq!((openai.api_key.as_deref(), openai.key_variable.as_str()), (None, "OPENAI_API_KEY"));
    }

    #[test]
    fn an_endpoints_debug_hides_its_key() {
        let endpoint = Endpoint {
            base_url: OPENAI_BASE_URL.into(),
            api_key: Some("sk-test-123".into()),
            key_variable: "OPENAI_API_KEY".into(),
        };
        let debug = format!("{endpoint:?}");
        assert!(!debug.contains("sk-test-123") && debug.contains("<redacted>"), "{debug}");
    }
}
