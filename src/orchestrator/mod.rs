//! Running teams: the TeamSpec, routing, retries and fallbacks, and the model providers.

pub mod estimate;
pub mod executor;
pub mod prompts;
pub mod providers;
pub mod routing;
pub mod spec;
pub mod tokens;

/// Whether `provider/…` models can be reached: the offline `local`, OpenAI, or a provider
/// configured with `ENSEMBLE_PROVIDER_<NAME>_BASE_URL`.
pub fn known_provider(name: &str) -> bool {
    matches!(name, "local" | "openai")
        || std::env::var(format!("ENSEMBLE_PROVIDER_{}_BASE_URL", name.to_ascii_uppercase())).is_ok()
}
