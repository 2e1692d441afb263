//! The operation a request runs, alone. A document holding several operations (a README block
//! pasted into GraphiQL) is cut down to the one `operationName` selects and the fragments it
//! spreads, so validation, the depth and complexity limits and the rate limit measure what runs
//! rather than the whole document (docs/transport.md).

use std::collections::HashSet;

use async_graphql::{
    Name,
    parser::types::{DocumentOperations, ExecutableDocument, FragmentDefinition, Selection, SelectionSet},
};

type Fragments = std::collections::HashMap<Name, async_graphql::Positioned<FragmentDefinition>>;

/// Whether `doc` holds operations other than the one `name` selects.
pub fn has_others(doc: &ExecutableDocument, name: Option<&str>) -> bool {
    match (&doc.operations, name) {
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.len() > 1 && operations.keys().any(|n| n.as_str() == name)
        }
        _ => false,
    }
}

/// Keeps the operation `name` selects, the fragments it spreads, and the fragments no operation
/// spreads (validation still reports those). A document where `name` selects nothing, or that
/// holds one operation, is left as it is.
pub fn keep_selected(doc: &mut ExecutableDocument, name: Option<&str>) {
    if !has_others(doc, name) {
        return;
    }
    let DocumentOperations::Multiple(operations) = &mut doc.operations else {
        return;
    };
    let others: Vec<_> = operations.extract_if(|n, _| Some(n.as_str()) != name).map(|(_, op)| op).collect();
    let kept = operations.values().map(|op| &op.node.selection_set.node).collect();
    let used = spread_fragments(&doc.fragments, kept);
    let used_elsewhere =
        spread_fragments(&doc.fragments, others.iter().map(|op| &op.node.selection_set.node).collect());
    doc.fragments.retain(|fragment, _| used.contains(fragment) || !used_elsewhere.contains(fragment));
}

/// The fragments `sets` spread, directly or through other fragments.
fn spread_fragments<'a>(fragments: &'a Fragments, mut sets: Vec<&'a SelectionSet>) -> HashSet<Name> {
    let mut seen = HashSet::new();
    while let Some(set) = sets.pop() {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => sets.push(&field.node.selection_set.node),
                Selection::InlineFragment(inline) => sets.push(&inline.node.selection_set.node),
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(fragment) = fragments.get(name)
                        && seen.insert(name.clone())
                    {
                        sets.push(&fragment.node.selection_set.node);
                    }
                }
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(query).unwrap()
    }

    fn names(doc: &ExecutableDocument) -> (Vec<String>, Vec<String>) {
        let operations = match &doc.operations {
            DocumentOperations::Single(_) => vec!["<anonymous>".to_owned()],
            DocumentOperations::Multiple(ops) => ops.keys().map(ToString::to_string).collect(),
        };
        let mut fragments: Vec<String> = doc.fragments.keys().map(ToString::to_string).collect();
        fragments.sort();
        (operations, fragments)
    }

    #[test]
    fn the_selected_operation_keeps_its_fragments_and_the_unused_ones() {
        let mut doc = parse(
            "query A { ...Both ...OnlyA } query B { ...Both ...OnlyB } \
             fragment Both on Query { a } fragment OnlyA on Query { ...Deep } fragment Deep on Query { d } \
             fragment OnlyB on Query { b } fragment Nobody on Query { n }",
        );
        keep_selected(&mut doc, Some("A"));
        assert_eq!(
            names(&doc),
            (vec!["A".to_owned()], ["Both", "Deep", "Nobody", "OnlyA"].map(String::from).to_vec()),
            "OnlyB went with B; Nobody stays for validation to report"
        );
    }

    #[test]
    fn a_document_is_left_alone_when_the_name_selects_nothing_or_nothing_else_is_there() {
        for (query, name) in [
            ("query A { a } query B { b }", Some("C")),
            ("query A { a } query B { b }", None),
            ("query A { a }", Some("A")),
            ("{ a }", None),
        ] {
            let mut doc = parse(query);
            let before = names(&doc);
            keep_selected(&mut doc, name);
            assert_eq!(names(&doc).0.len(), before.0.len(), "{query} {name:?}");
        }
    }

    #[test]
    fn fragment_cycles_end() {
        let mut doc = parse("query A { ...X } query B { b } fragment X on Query { ...Y } fragment Y on Query { ...X }");
        keep_selected(&mut doc, Some("A"));
        assert_eq!(names(&doc).1, ["X", "Y"]);
    }
}
