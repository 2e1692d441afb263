//! The offline `local/*` models: deterministic answers and scripted failures, so teams, retries
//! and fallbacks can be run and tested without a network or an API key.

use std::{collections::HashMap, time::Duration};

use super::{Completion, CompletionRequest, DeltaSink, ErrorClass, Provider, ProviderError, Role};
use crate::orchestrator::tokens;

/// The local provider; the model name picks the behaviour.
pub struct Local;

/// Longest `slow-<ms>` wait, so a typo cannot park a run for hours.
const MAX_SLOW: Duration = Duration::from_secs(600);
/// Words per streamed delta.
const WORDS_PER_DELTA: usize = 4;
/// Sentences a summary keeps.
const SUMMARY_SENTENCES: usize = 2;
const MODELS: &str = "echo, summarize, script, flaky[-N], slow-<ms>, ratelimited, context-<tokens>, down";

/// A parsed local model name.
#[derive(Debug, PartialEq)]
enum Model {
    Echo,
    Summarize,
    /// Answers the `turn`-th line of its system prompt (the last line once they run out).
    Script,
    Flaky(u32),
    Slow(Duration),
    RateLimited,
    Context(u32),
    Down,
}

impl Model {
    fn parse(name: &str) -> Result<Self, ProviderError> {
        let number = |suffix: &str| suffix.parse::<u32>().ok();
        let model = match name.split_once('-') {
            None if name == "echo" => Some(Self::Echo),
            None if name == "summarize" => Some(Self::Summarize),
            None if name == "script" => Some(Self::Script),
            None if name == "flaky" => Some(Self::Flaky(1)),
            None if name == "ratelimited" => Some(Self::RateLimited),
            None if name == "down" => Some(Self::Down),
            Some(("flaky", n)) => number(n).map(Self::Flaky),
            Some(("slow", ms)) => number(ms).map(|ms| Self::Slow(Duration::from_millis(ms.into()).min(MAX_SLOW))),
            Some(("context", limit)) => number(limit).map(Self::Context),
            _ => None,
        };
        model.ok_or_else(|| {
            ProviderError::new(ErrorClass::BadRequest, format!("unknown local model `{name}`; use one of {MODELS}"))
        })
    }
}

/// Whether `name` is a local model, and if not, what the valid ones are.
pub fn check_model(name: &str) -> Result<(), String> {
    Model::parse(name).map(|_| ()).map_err(|e| e.message)
}

#[async_trait::async_trait]
impl Provider for Local {
    async fn complete(
        &self,
        request: &CompletionRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<Completion, ProviderError> {
        let name = &request.model;
        let tokens_in = tokens::count_messages(&request.messages);
        let body = match Model::parse(name)? {
            Model::Flaky(n) if request.attempt <= n => {
                let message =
                    format!("local/{name} fails its first {n} attempts (this was attempt {})", request.attempt);
                return Err(ProviderError::new(ErrorClass::ServerError, message));
            }
            Model::RateLimited => {
                let message = format!("local/{name} always asks to retry after 1 s");
                let error = ProviderError::new(ErrorClass::RateLimited, message);
                return Err(ProviderError { retry_after: Some(Duration::from_secs(1)), ..error });
            }
            Model::Context(limit) if tokens_in > limit => {
                let message = format!("the request is {tokens_in} tokens; local/{name} accepts at most {limit}");
                return Err(ProviderError::new(ErrorClass::ContextLength, message));
            }
            Model::Down => return Err(ProviderError::new(ErrorClass::ServerError, "local/down is always down")),
            Model::Slow(wait) => {
                tokio::time::sleep(wait).await;
                echo(request)
            }
            Model::Summarize => summarize(last_user_message(request)),
            Model::Script => script_line(request),
            Model::Echo | Model::Flaky(_) | Model::Context(_) => echo(request),
        };
        Ok(answer(request, &body, tokens_in, on_delta))
    }
}

fn echo(request: &CompletionRequest) -> String {
    format!("You said: {}", last_user_message(request))
}

/// The `turn`-th non-empty line of the system prompt, or its last one once they run out: a
/// scripted critic answers "needs work" twice and then "APPROVED".
fn script_line(request: &CompletionRequest) -> String {
    let system = request.messages.iter().find(|message| message.role == Role::System).map_or("", |m| &m.content);
    let lines: Vec<&str> = system.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let turn = usize::try_from(request.turn.max(1)).unwrap_or(usize::MAX);
    lines.get(turn - 1).or(lines.last()).copied().unwrap_or_default().to_string()
}

fn last_user_message(request: &CompletionRequest) -> &str {
    request.messages.iter().rev().find(|message| message.role == Role::User).map_or("", |message| &message.content)
}

/// Signs `body` with the agent's name, cuts it to `max_tokens` and streams it.
fn answer(request: &CompletionRequest, body: &str, tokens_in: u32, on_delta: DeltaSink<'_>) -> Completion {
    let signed = format!("[{}] {body}", request.agent);
    let content = match request.max_tokens {
        Some(max) => tokens::truncate(&signed, max).to_owned(),
        None => signed,
    };
    stream(&content, on_delta);
    Completion { tokens_out: tokens::count(&content), content, tokens_in }
}

/// Sends `text` in groups of words, each group keeping its trailing space, so the pieces
/// concatenate back to `text` exactly.
fn stream(text: &str, on_delta: DeltaSink<'_>) {
    let mut start = 0;
    for (index, (at, _)) in text.match_indices(' ').enumerate() {
        if index % WORDS_PER_DELTA == WORDS_PER_DELTA - 1 {
            on_delta(&text[start..=at]);
            start = at + 1;
        }
    }
    if start < text.len() {
        on_delta(&text[start..]);
    }
}

/// The most representative sentences of `text` in their original order: each sentence scores
/// the mean frequency of its words across the text. Text of a couple of sentences is returned whole.
fn summarize(text: &str) -> String {
    let sentences = sentences(text);
    if sentences.len() <= SUMMARY_SENTENCES {
        return text.trim().to_owned();
    }
    let mut frequency: HashMap<String, usize> = HashMap::new();
    for word in sentences.iter().flat_map(|sentence| words(sentence)) {
        *frequency.entry(word).or_default() += 1;
    }
    let score = |sentence: &str| {
        let words = words(sentence);
        words.iter().map(|word| frequency.get(word).copied().unwrap_or(0)).sum::<usize>() as f64
            / words.len().max(1) as f64
    };
    let mut ranked: Vec<(usize, f64)> = sentences.iter().map(|sentence| score(sentence)).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<usize> = ranked.iter().take(SUMMARY_SENTENCES).map(|&(index, _)| index).collect();
    kept.sort_unstable();
    kept.iter().map(|&index| sentences[index]).collect::<Vec<_>>().join(" ")
}

/// Sentences end at `.`, `!` or `?` followed by whitespace or the end of the text.
fn sentences(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let at_break = chars.peek().is_none_or(|&(_, next)| next.is_whitespace());
        if matches!(c, '.' | '!' | '?') && at_break {
            found.push(text[start..=at].trim());
            start = at + 1;
        }
    }
    found.push(text[start..].trim());
    found.retain(|sentence| !sentence.is_empty());
    found
}

/// Lowercased words of more than three letters: a cheap stand-in for a stop-word list.
fn words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() > 3)
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::orchestrator::providers::ChatMessage;

    fn request(model: &str, text: &str) -> CompletionRequest {
        CompletionRequest {
            agent: "triage".into(),
            model: model.into(),
            messages: vec![
                ChatMessage { role: Role::System, content: "You sort tickets.".into() },
                ChatMessage { role: Role::User, content: text.into() },
            ],
            temperature: None,
            max_tokens: None,
            attempt: 1,
            turn: 1,
        }
    }

    /// Runs `request` and returns its result with the deltas it streamed.
    async fn run(request: &CompletionRequest) -> (Result<Completion, ProviderError>, Vec<String>) {
        let deltas = Mutex::new(Vec::new());
        let sink = |delta: &str| deltas.lock().unwrap().push(delta.to_owned());
        let result = Local.complete(request, &sink).await;
        (result, deltas.into_inner().unwrap())
    }

    async fn error_class(request: &CompletionRequest) -> ErrorClass {
        run(request).await.0.unwrap_err().class
    }

    #[tokio::test]
    async fn echo_restates_the_last_user_message_in_streamed_pieces() {
        let request = request("echo", "my printer is on fire and the office is filling with smoke");
        let (result, deltas) = run(&request).await;
        let completion = result.unwrap();
        assert_eq!(completion.content, "[triage] You said: my printer is on fire and the office is filling with smoke");
        assert!(deltas.len() > 1);
        assert_eq!(deltas.concat(), completion.content);
        assert_eq!(completion.tokens_in, tokens::count_messages(&request.messages));
        assert_eq!(completion.tokens_out, tokens::count(&completion.content));
    }

    #[tokio::test]
    async fn answers_are_cut_to_max_tokens() {
        let request = CompletionRequest { max_tokens: Some(5), ..request("echo", "one two three four five six") };
        let completion = run(&request).await.0.unwrap();
        assert_eq!(completion.tokens_out, 5);
        assert!(completion.content.starts_with("[triage]"));
    }

    #[tokio::test]
    async fn summarize_keeps_the_most_representative_sentences_in_order() {
        let text = "The billing system double charged customers. Lunch was pizza. \
            Customers saw the billing error twice on their cards. The weather is nice.";
        let completion = run(&request("summarize", text)).await.0.unwrap();
        assert_eq!(
            completion.content,
            "[triage] The billing system double charged customers. Customers saw the billing error twice on their cards."
        );
    }

    #[tokio::test]
    async fn summarize_returns_short_input_as_is() {
        let completion = run(&request("summarize", "Reset my password. Thanks!")).await.0.unwrap();
        assert_eq!(completion.content, "[triage] Reset my password. Thanks!");
    }

    #[tokio::test]
    async fn script_answers_the_line_of_its_turn_and_then_its_last_line() {
        let mut request = request("script", "Is it good?");
        request.messages[0].content = "Needs work\n\n  Still needs work \nAPPROVED\n".into();
        let mut answers = Vec::new();
        for turn in 1..=5 {
            let completion = run(&CompletionRequest { turn, ..request.clone() }).await.0.unwrap();
            answers.push(completion.content);
        }
        let expected =
            ["Needs work", "Still needs work", "APPROVED", "APPROVED", "APPROVED"].map(|a| format!("[triage] {a}"));
        assert_eq!(answers, expected, "blank lines are not turns; past the last line it repeats");
    }

    #[tokio::test]
    async fn flaky_fails_its_first_n_attempts_then_answers() {
        for attempt in 1..=2 {
            let request = CompletionRequest { attempt, ..request("flaky-2", "hi") };
            let error = run(&request).await.0.unwrap_err();
            assert_eq!(error.class, ErrorClass::ServerError);
            let expected = format!("local/flaky-2 fails its first 2 attempts (this was attempt {attempt})");
            assert_eq!(error.message, expected);
        }
        let third = CompletionRequest { attempt: 3, ..request("flaky-2", "hi") };
        assert_eq!(run(&third).await.0.unwrap().content, "[triage] You said: hi");
        assert_eq!(error_class(&request("flaky", "hi")).await, ErrorClass::ServerError);
        let second = CompletionRequest { attempt: 2, ..request("flaky", "hi") };
        assert!(run(&second).await.0.is_ok());
    }

    #[tokio::test]
    async fn slow_waits_before_answering() {
        let started = Instant::now();
        let completion = run(&request("slow-50", "hi")).await.0.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(completion.content, "[triage] You said: hi");
        assert_eq!(Model::parse("slow-99999999").unwrap(), Model::Slow(MAX_SLOW));
    }

    #[tokio::test]
    async fn ratelimited_asks_to_retry_after_a_second() {
        let error = run(&request("ratelimited", "hi")).await.0.unwrap_err();
        assert_eq!(error.class, ErrorClass::RateLimited);
        assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn context_rejects_requests_over_its_token_limit() {
        assert_eq!(error_class(&request("context-10", &"word ".repeat(20))).await, ErrorClass::ContextLength);
        assert!(run(&request("context-100", "short")).await.0.is_ok());
    }

    #[tokio::test]
    async fn down_always_fails() {
        let error = run(&request("down", "hi")).await.0.unwrap_err();
        assert_eq!((error.class, error.message.as_str()), (ErrorClass::ServerError, "local/down is always down"));
    }

    #[tokio::test]
    async fn unknown_models_are_bad_requests_listing_the_valid_ones() {
        for name in ["gpt-4o", "slow-abc", "flaky-", "context"] {
            let error = run(&request(name, "hi")).await.0.unwrap_err();
            assert_eq!(error.class, ErrorClass::BadRequest);
            assert!(error.message.contains(name) && error.message.contains("summarize"), "{}", error.message);
        }
    }
}
