//! Token counts with OpenAI's `cl100k_base` tokenizer, so budgets, context limits and usage
//! records agree with what OpenAI-style providers charge.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

use super::providers::ChatMessage;

/// Loaded once: parsing the embedded vocabulary takes a noticeable fraction of a second. `None`
/// only if the embedded vocabulary failed to load, in which case counts fall back to an estimate
/// rather than failing runs.
static BPE: LazyLock<Option<CoreBPE>> = LazyLock::new(|| {
    tiktoken_rs::cl100k_base()
        .inspect_err(|error| tracing::error!(%error, "cl100k_base failed to load; token counts are estimates"))
        .ok()
});

/// Bytes per token when the tokenizer is unavailable (OpenAI's rule of thumb for English).
const BYTES_PER_TOKEN: usize = 4;

/// Tokens every chat message costs besides its content (`<|start|>`, the role, `<|end|>`), and
/// the tokens that prime the reply, as OpenAI's cookbook counts them for its chat models.
const PER_MESSAGE: u32 = 4;
const PER_REPLY: u32 = 3;

/// Loads the tokenizer now, so the first run does not pay for it on the async runtime.
pub fn preload() {
    LazyLock::force(&BPE);
}

/// How many tokens `text` is, special tokens counted as plain text.
pub fn count(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    let tokens = match &*BPE {
        Some(bpe) => bpe.encode_ordinary(text).len(),
        None => text.len().div_ceil(BYTES_PER_TOKEN),
    };
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

/// How many prompt tokens `messages` cost a chat model: contents plus per-message overhead.
pub fn count_messages(messages: &[ChatMessage]) -> u32 {
    messages.iter().fold(PER_REPLY, |total, message| total.saturating_add(count_message(message)))
}

/// What one message adds to `count_messages`: its content and its overhead.
pub fn count_message(message: &ChatMessage) -> u32 {
    count(&message.content).saturating_add(PER_MESSAGE)
}

/// The longest prefix of `text` that is at most `max_tokens` tokens, cut on a char boundary.
pub fn truncate(text: &str, max_tokens: u32) -> &str {
    let max = usize::try_from(max_tokens).unwrap_or(usize::MAX);
    let Some(bpe) = &*BPE else {
        return &text[..text.floor_char_boundary(max.saturating_mul(BYTES_PER_TOKEN))];
    };
    let tokens = bpe.encode_ordinary(text);
    // A prefix can tokenize differently from the whole (BPE merges are not prefix-stable), so
    // shrink until the prefix itself fits.
    for keep in (0..=max.min(tokens.len())).rev() {
        let bytes = bpe.decode_bytes(&tokens[..keep]).map_or(0, |bytes| bytes.len());
        let prefix = &text[..text.floor_char_boundary(bytes)];
        if keep == tokens.len() || count(prefix) <= max_tokens {
            return prefix;
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::providers::Role;

    #[test]
    fn known_strings_have_their_cl100k_counts() {
        assert_eq!(count("hello world"), 2);
        assert_eq!(count("The quick brown fox jumps over the lazy dog."), 10);
        assert_eq!(count(""), 0);
    }

    #[test]
    fn special_tokens_in_text_are_counted_as_plain_text() {
        assert!(count("<|endoftext|>") > 1);
    }

    #[test]
    fn each_role_name_is_one_token_as_the_overhead_assumes() {
        for role in [Role::System, Role::User, Role::Assistant] {
            assert_eq!(count(&role.to_string()), 1);
        }
    }

    #[test]
    fn messages_cost_their_contents_plus_overhead() {
        let messages = [
            ChatMessage { role: Role::System, content: "Be brief.".into() },
            ChatMessage { role: Role::User, content: "hello world".into() },
        ];
        assert_eq!(count_messages(&messages), count("Be brief.") + 2 + 2 * PER_MESSAGE + PER_REPLY);
        assert_eq!(count_messages(&[]), PER_REPLY);
    }

    #[test]
    fn truncate_keeps_a_prefix_within_the_budget() {
        let text = "The quick brown fox jumps over the lazy dog.";
        assert_eq!(truncate(text, 4), "The quick brown fox");
        assert_eq!(truncate(text, 100), text);
        assert_eq!(truncate(text, 0), "");
    }

    #[test]
    fn truncate_never_splits_a_character() {
        let text = "日本語のテキストを途中で切る";
        for max in 0..count(text) {
            let prefix = truncate(text, max);
            assert!(text.starts_with(prefix) && count(prefix) <= max, "{max}: {prefix}");
        }
    }
}
