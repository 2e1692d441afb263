//! Names people give things (teams, templates, categories, API keys, conversation titles,
//! display names, backup labels, agents and rules): trimmed, bounded, and free of characters
//! that change how text around them reads. Rules and reasons: docs/teams.md, "Names".

use crate::error::Problem;

/// A name as it is stored: trimmed, 1 to its field's limit of characters, no control
/// characters (line breaks, tabs, NUL), no bidirectional formatting characters and no
/// invisible characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    /// `value` trimmed and checked as the name at `field` (a problem path such as `input.name`),
    /// at most `max` characters.
    pub fn parse(field: &str, value: &str, max: usize) -> Result<Self, Problem> {
        let value = value.trim();
        if value.is_empty() || value.chars().count() > max {
            return Err(Problem::new(field, format!("must be 1 to {max} characters")));
        }
        if let Some(why) = hidden_character(value) {
            return Err(Problem::new(field, why));
        }
        Ok(Self(value.to_string()))
    }

    /// Like `parse`, pushing the problem onto `problems` instead.
    pub fn check(field: &str, value: &str, max: usize, problems: &mut Vec<Problem>) -> Option<Self> {
        Self::parse(field, value, max).map_err(|problem| problems.push(problem)).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Why `text` may not be a name, from its first character that hides or rearranges text:
/// `None` when there is none.
pub fn hidden_character(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.iter().enumerate().find_map(|(i, &c)| {
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        refusal(c, before, after)
            .map(|kind| format!("must not contain {kind} (U+{:04X} at character {})", c as u32, i + 1))
    })
}

/// What kind of character `c` is when a name may not hold it where it stands, between
/// `before` and `after`.
fn refusal(c: char, before: Option<char>, after: Option<char>) -> Option<&'static str> {
    match c {
        '\u{2028}' | '\u{2029}' => Some("line breaks"),
        c if c.is_control() => Some("control characters such as line breaks, tabs or NUL"),
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Some("bidirectional formatting characters")
        }
        // Joiners shape emoji sequences and Arabic-script and Indic words; between two ASCII
        // characters they only make look-alikes of plain names.
        '\u{200C}' | '\u{200D}' if joins(before) && joins(after) => None,
        // Tag characters spell subdivision flags after a black flag (🏴), and nothing else.
        '\u{E0020}'..='\u{E007F}' if before.is_some_and(|b| b == '\u{1F3F4}' || is_tag(b)) => None,
        '\u{00AD}'
        | '\u{034F}'
        | '\u{115F}'
        | '\u{1160}'
        | '\u{17B4}'
        | '\u{17B5}'
        | '\u{180E}'
        | '\u{200B}'
        | '\u{200C}'
        | '\u{200D}'
        | '\u{2060}'..='\u{2064}'
        | '\u{3164}'
        | '\u{FEFF}'
        | '\u{FFA0}' => Some("invisible characters"),
        '\u{E0000}'..='\u{E007F}' => Some("invisible characters"),
        _ => None,
    }
}

/// A character a zero-width joiner may stand next to: a visible one outside ASCII.
fn joins(c: Option<char>) -> bool {
    c.is_some_and(|c| !c.is_ascii() && !c.is_whitespace() && refusal(c, None, None).is_none())
}

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007F}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(value: &str) -> String {
        Name::parse("name", value, 100).unwrap_err().message
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::parse("name", "  Support ", 100).unwrap().as_str(), "Support");
        assert_eq!(refused("   "), "must be 1 to 100 characters");
        assert_eq!(refused(&"é".repeat(101)), "must be 1 to 100 characters");
        assert!(Name::parse("name", &"é".repeat(100), 100).is_ok());
    }

    #[test]
    fn control_characters_are_refused_naming_the_first() {
        assert_eq!(
            refused("a\nb"),
            "must not contain control characters such as line breaks, tabs or NUL (U+000A at character 2)"
        );
        for value in ["a\rb", "a\0b", "a\tb", "a\u{7f}b", "a\u{85}b"] {
            assert!(refused(value).contains("control characters"), "{value:?}");
        }
        assert!(refused("a\u{2028}b").contains("line breaks"));
    }

    #[test]
    fn bidirectional_formatting_characters_are_refused() {
        for c in ['\u{202E}', '\u{202A}', '\u{2066}', '\u{2069}', '\u{200F}', '\u{061C}'] {
            assert!(refused(&format!("invoice{c}fdp.exe")).contains("bidirectional"), "{c:?}");
        }
    }

    #[test]
    fn invisible_characters_are_refused_but_joiners_inside_words_and_emoji_stay() {
        for value in ["ad\u{200B}min", "ad\u{200D}min", "ad\u{200C}min", "\u{FEFF}admin", "x\u{2060}", "a\u{00AD}b"] {
            assert!(refused(value).contains("invisible"), "{value:?}");
        }
        assert!(refused("admin\u{E0041}\u{E0042}").contains("invisible"), "tag characters smuggle text");
        for value in [
            "👩\u{200D}💻 Devs",
            "می\u{200C}خواهم",
            "क्\u{200D}ष",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} Team",
            "Ünïcödé 日本語 ❤\u{FE0F}",
        ] {
            assert!(Name::parse("name", value, 100).is_ok(), "{value:?}");
        }
    }
}
