//! The documentation stays true: the annotation reference is the code's own table, and every
//! `wavelink.dev/*` key the docs mention is one the code knows.

use std::path::Path;

use wavelink_core::container::OWNER_LABEL;
use wavelink_core::spec::{ANNOTATIONS, FUNCTION_LABEL, annotation_key, markdown_table};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

#[test]
fn the_annotation_reference_is_the_table_the_parser_uses() {
    let doc = read("docs/annotations.md");
    assert!(
        doc.contains(&markdown_table()),
        "docs/annotations.md is out of date: paste the output of `wavelink annotations` into it"
    );
    for key in ANNOTATIONS {
        assert!(doc.contains(&format!("`{}`", key.name)), "{} is not documented", key.name);
    }
}

#[test]
fn every_documented_key_is_known_to_the_code() {
    let manifests = ["namespace", "config", "proxy", "wavelet", "controller", "example-function", "network-policies"]
        .map(|m| format!("manifests/{m}.yaml"));
    // Labels only the manifests use (no code reads them): the namespaces metrics scrapers run in.
    let manifest_labels = ["wavelink.dev/metrics"];
    for label in manifest_labels {
        assert!(read("manifests/network-policies.yaml").contains(label), "{label} is no longer used by the manifests");
    }
    let docs = ["README.md", "docs/annotations.md", "docs/architecture.md", "docs/operations.md", "wavelink.yaml"];
    for path in docs.iter().map(|d| d.to_string()).chain(manifests) {
        let path = path.as_str();
        let text = read(path);
        for (start, _) in text.match_indices("wavelink.dev/") {
            let key: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '*'))
                .collect();
            let key = key.trim_end_matches(['.', '-']);
            if key == "wavelink.dev/"
                || key.ends_with('*')
                || key == FUNCTION_LABEL
                || key == OWNER_LABEL
                || manifest_labels.contains(&key)
            {
                continue;
            }
            assert!(annotation_key(key).is_some(), "{path} mentions {key}, which the code does not know");
        }
    }
}

#[test]
fn every_metric_the_operations_guide_names_exists() {
    let sources: String = ["proxy/src/metrics.rs", "wavelet/src/metrics.rs", "controller/src/metrics.rs"]
        .iter()
        .map(|p| read(p))
        .collect();
    let guide = read("docs/operations.md");
    let mut named = 0;
    // The metrics table: rows that start with a metric name.
    for row in guide.lines().filter(|l| l.starts_with("| `wavelink_")) {
        let name: String = row[3..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        named += 1;
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "docs/operations.md names {name}, which no component exports"
        );
    }
    assert!(named >= 10, "the guide should name the metrics to watch");
}
