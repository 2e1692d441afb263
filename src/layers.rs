//! The layering rule of docs/architecture.md, checked: every `crate::…` path in `src/` (`use`
//! lines, `use crate::{…}` groups over several lines, and inline paths such as
//! `crate::http::clerk_webhook::receive`) names a module of its own layer or a lower one.

use std::{collections::HashMap, path::Path};

/// Each top-level module's layer (1 is the lowest), read from the table of
/// docs/architecture.md.
fn layers(doc: &str) -> HashMap<String, usize> {
    let mut layers = HashMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(rank) = cells.get(1).and_then(|c| c.parse::<usize>().ok()) else { continue };
        for module in cells.get(3).unwrap_or(&"").split('`').skip(1).step_by(2) {
            layers.insert(module.to_string(), rank);
        }
    }
    layers
}

/// The source without its comments (doc comments name paths that are not imports) and without
/// the text of its string and character literals.
fn code(source: &str) -> String {
    let mut code = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            // A raw string, r#"…"#: it ends at a quote followed by as many hashes.
            'r' if chars.peek() == Some(&'#') => {
                let hashes = chars.clone().take_while(|c| *c == '#').count();
                if source_ends_raw_opening(&mut chars, hashes) {
                    let closing: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                    let mut text = String::new();
                    for c in chars.by_ref() {
                        text.push(c);
                        if text.ends_with(&closing) {
                            break;
                        }
                    }
                    code.push_str("\"\"");
                } else {
                    code.push(c);
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                code.push_str("\"\"");
            }
            // A character literal ('"', '\'', 'x'); a lifetime has no closing quote.
            '\'' => {
                let mut ahead = chars.clone();
                let literal = match ahead.next() {
                    Some('\\') => ahead.nth(1) == Some('\'') || ahead.any(|c| c == '\''),
                    Some(_) => ahead.next() == Some('\''),
                    None => false,
                };
                if literal {
                    let escaped = chars.next() == Some('\\');
                    if escaped {
                        chars.next();
                    }
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                    code.push_str("' '");
                } else {
                    code.push(c);
                }
            }
            c => code.push(c),
        }
    }
    code
}

/// Whether `hashes` hashes and a quote follow (then consumed): a raw string opens.
fn source_ends_raw_opening(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, hashes: usize) -> bool {
    let mut ahead = chars.clone();
    let opens = ahead.by_ref().take(hashes).all(|c| c == '#') && ahead.next() == Some('"');
    if opens {
        chars.nth(hashes);
    }
    opens
}

/// The top-level modules a source names through `crate::`: the first segment of each path, and
/// of each item of a `crate::{…}` group.
fn named_modules(source: &str) -> Vec<String> {
    let code = code(source);
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if matches!(before, Some(c) if c == '$' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let path = rest.trim_start();
        if let Some(group) = path.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        found.push(ident(&group[i..]));
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(path));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

fn ident(text: &str) -> String {
    text.chars().take_while(|c| *c == '_' || c.is_alphanumeric()).collect()
}

/// Every path of `files` (relative to `src/`, with their text) that runs up the layers, or
/// names a module the table does not place.
fn violations(files: &[(String, String)], layers: &HashMap<String, usize>) -> Vec<String> {
    let mut found = Vec::new();
    for (path, source) in files {
        let module = path.split('/').next().unwrap_or_default().trim_end_matches(".rs");
        // The crate's root declares the modules; this check's own file holds paths as examples.
        if module == "lib" || module == "main" || module == "layers" {
            continue;
        }
        let Some(&own) = layers.get(module) else {
            found.push(format!("src/{path}: module `{module}` is in no layer of docs/architecture.md"));
            continue;
        };
        for named in named_modules(source) {
            match layers.get(&named) {
                None => found.push(format!("src/{path}: `crate::{named}` is in no layer of docs/architecture.md")),
                Some(&layer) if layer > own => found.push(format!(
                    "src/{path}: `{module}` (layer {own}) uses `crate::{named}` (layer {layer}), which is above it"
                )),
                Some(_) => {}
            }
        }
    }
    found
}

/// Where code outside `db` opens a transaction or locks rows: every write is one batch through
/// the write path (docs/write-path.md), which D1 can run; only `db` runs transactions.
fn transactions(files: &[(String, String)]) -> Vec<String> {
    const SIGNS: [&str; 6] = [
        "begin_write(",
        ".begin().await",
        ".begin_with_options(",
        "TransactionTrait",
        "lock_exclusive(",
        ".transaction(",
    ];
    let mut found = Vec::new();
    for (path, source) in files.iter().filter(|(path, _)| path != "db.rs" && !path.starts_with("db/")) {
        let code = code(source);
        found.extend(SIGNS.iter().filter(|sign| code.contains(*sign)).map(|sign| format!("{path}: {sign}")));
    }
    found
}

fn sources(dir: &Path, root: &Path, into: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src/ is readable").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, root, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under src/").to_string_lossy().replace('\\', "/");
            into.push((relative, std::fs::read_to_string(&path).expect("a source is readable")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../docs/architecture.md");

    fn file(path: &str, source: &str) -> (String, String) {
        (path.to_string(), source.to_string())
    }

    #[test]
    fn imports_only_go_down_the_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &root, &mut files);
        assert!(files.len() > 100, "read the whole of src/");
        let found = violations(&files, &layers(DOC));
        assert!(found.is_empty(), "imports that run up the layers:\n{}", found.join("\n"));
    }

    #[test]
    fn only_the_storage_layer_runs_transactions() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &root, &mut files);
        let found = transactions(&files);
        assert!(found.is_empty(), "transactions outside db (write one batch instead):\n{}", found.join("\n"));
        let opened = [file("service/teams.rs", "let txn = db::begin_write(db).await?; // a comment: .begin().await")];
        assert_eq!(transactions(&opened), ["service/teams.rs: begin_write("]);
    }

    #[test]
    fn the_table_places_the_layers_in_order() {
        let layers = layers(DOC);
        assert_eq!(layers.get("domain"), Some(&1));
        assert!(layers["auth"] < layers["service"]);
        assert!(layers["graphql"] < layers["http"]);
        assert!(layers["http"] < layers["startup"]);
    }

    #[test]
    fn a_path_up_the_layers_is_found_in_any_form() {
        let layers = layers(DOC);
        let up = [
            file("domain/identity.rs", "use crate::auth::Authenticator;"),
            file("cache/mod.rs", "use crate::{\n    config::Config,\n    service::users::{self, find},\n};"),
            file("auth/mod.rs", "fn f() { crate::http::clerk_webhook::receive(); }"),
            file("graphql/runs.rs", "use crate::{events::{EventBus}, http::sharing};"),
            file("service/users.rs", "let caller = crate::graphql::caller(ctx);"),
            file("db.rs", "pub(crate) use crate::{\n    error::{AppError,\n Problem},\n    startup::App,\n};"),
        ];
        for case in up {
            let found = violations(std::slice::from_ref(&case), &layers);
            assert_eq!(found.len(), 1, "{case:?} gave {found:?}");
        }
    }

    #[test]
    fn paths_down_the_layers_and_comments_pass() {
        let layers = layers(DOC);
        let fine = [
            file("http/router.rs", "use crate::{graphql, state::AppState};\nuse super::ops;"),
            file("auth/guard.rs", "use crate::{\n    domain::{Caller, TeamRole},\n    error::AppError,\n};"),
            file("cache/mod.rs", "/// Unlike `crate::service::users::find`, …\nuse crate::domain::Invalidation;"),
            file("events/mod.rs", "macro_rules! m { () => { $crate::http::x } }"),
        ];
        for case in fine {
            assert_eq!(violations(std::slice::from_ref(&case), &layers), Vec::<String>::new(), "{case:?}");
        }
    }

    #[test]
    fn strings_and_comments_are_not_paths() {
        let source = "let s = \"crate::http::x\"; let c = '\"'; // crate::http::y\nuse crate::error::AppError;";
        let raw = "let s = r#\"a \" crate::http::x\"#; fn f<'a>(x: &'a str) { crate::db::f(); }";
        assert_eq!(named_modules(raw), vec!["db".to_string()]);
        assert_eq!(named_modules(source), vec!["error".to_string()]);
    }

    #[test]
    fn a_module_the_table_does_not_place_is_refused() {
        let found = violations(&[file("newthing/mod.rs", "")], &layers(DOC));
        assert_eq!(found.len(), 1);
    }
}
