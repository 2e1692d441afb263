//! Masks the secrets of connection URLs (`DATABASE_URL`, `REDIS_URL`) in any text: a URL's
//! password, `?password=`-like query values, and the same secrets where a driver echoes them.

use std::sync::LazyLock;

use regex::Regex;

const MASK: &str = "***";

/// `scheme://user:PASSWORD@`: the password runs to the last `@` of the word, so a password
/// holding `@`, `/` or `?` (which no URL parser accepts, but drivers echo) is masked whole.
static USERINFO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?P<keep>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@'"`]*:)(?P<secret>[^\s'"`]*)@"#)
        .expect("a valid pattern")
});

/// `?password=…`, `&sslpassword=…`, `&token=…`: query values that are secrets.
static QUERY_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(?P<keep>[?&][^\s=&#'"`]*(?:pass|pwd|secret|token)[^\s=&#'"`]*=)(?P<secret>[^\s&#'"`]*)"#)
        .expect("a valid pattern")
});

/// The URL with its password and secret query values replaced by `***`, fit for messages.
pub fn url(raw: &str) -> String {
    text(raw, raw)
}

/// `text` with every URL password and secret query value masked, and every secret of `url`
/// masked wherever else it appears (a driver may echo the URL, or a part of it).
pub fn text(text: &str, url: &str) -> String {
    let masked = USERINFO.replace_all(text, format!("${{keep}}{MASK}@"));
    let mut masked = QUERY_SECRET.replace_all(&masked, format!("${{keep}}{MASK}")).into_owned();
    for secret in secrets(url) {
        masked = masked.replace(&secret, MASK);
    }
    masked
}

/// The secrets `url` carries, as written and percent-decoded. A password equal to the user
/// name (or shorter than 4 characters) is left to the structural masking above: masking every
/// occurrence of such a word would mangle the rest of the message and hide nothing more.
fn secrets(url: &str) -> Vec<String> {
    let user = url.split_once("://").map(|(_, rest)| rest.split([':', '@', '/']).next().unwrap_or_default());
    let found = USERINFO.captures_iter(url).chain(QUERY_SECRET.captures_iter(url));
    let raw: Vec<&str> = found.filter_map(|c| c.name("secret")).map(|m| m.as_str()).collect();
    let mut all: Vec<String> = raw.iter().flat_map(|s| [s.to_string(), percent_decoded(s)]).collect();
    all.retain(|s| s.chars().count() >= 4 && Some(s.as_str()) != user);
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
    all
}

fn percent_decoded(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={}", value.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_userinfo_is_masked() {
        assert_eq!(
            url("postgres://app:hunter2@db.internal:5432/ensemble"),
            "postgres://app:***@db.internal:5432/ensemble"
        );
    }

    #[test]
    fn a_password_no_url_parser_accepts_is_masked_whole() {
        assert_eq!(url("postgres://app:hun@ter/2@h:99999/db"), "postgres://app:***@h:99999/db");
    }

    #[test]
    fn password_query_parameters_are_masked() {
        assert_eq!(
            url("postgres://app@h/db?sslmode=require&password=hunter2&sslpassword=x"),
            "postgres://app@h/db?sslmode=require&password=***&sslpassword=***"
        );
    }

    #[test]
    fn urls_without_secrets_are_shown_as_they_are() {
        for plain in ["sqlite://data/ensemble.db", "postgres://h:5432/db", "redis://127.0.0.1:6379"] {
            assert_eq!(url(plain), plain);
        }
    }

    #[test]
    fn a_driver_echoing_the_url_or_the_password_alone_is_masked() {
        let dsn = "postgres://app:hunter%232@h/db";
        let echoed = "The connection string 'postgres://app:hunter%232@h/db' cannot be parsed; hunter#2 hunter%232";
        let shown = text(echoed, dsn);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("'postgres://app:***@h/db'"), "{shown}");
    }

    #[test]
    fn a_password_equal_to_the_user_name_leaves_the_rest_readable() {
        let dsn = "postgres://postgres:postgres@127.0.0.1/postgres";
        assert_eq!(
            text("role \"postgres\" at postgres://postgres:postgres@127.0.0.1/postgres", dsn),
            "role \"postgres\" at postgres://postgres:***@127.0.0.1/postgres"
        );
    }
}
