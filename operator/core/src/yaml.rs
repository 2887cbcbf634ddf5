//! YAML in and out, with limits on what one input may cost.
//!
//! ```text
//! text --size check--> streaming parser (per-document budget: depth, flow nesting, events)
//!      --> one serde_json::Value per non-empty document, or the first error with its line
//! ```
//!
//! Everything Weir reads as YAML (local mode's directory, `weir-webhook inject`) goes
//! through [`documents`], so a hostile or broken file is refused in milliseconds with an
//! error that says where, instead of holding a core while a parser recurses.

use serde_json::Value;

/// Largest YAML input read at all. Kubernetes objects are at most ~1.5 MiB each; a
/// directory file may hold many of them.
pub const MAX_INPUT_BYTES: usize = 64 << 20;
/// Deepest nesting of mappings and sequences in one document. Kubernetes objects stay
/// under 20 levels (a pod template in a CronJob is about 12).
pub const MAX_DEPTH: usize = 64;
/// Most parser events (scalars, mapping and sequence starts and ends) in one document.
pub const MAX_EVENTS_PER_DOCUMENT: usize = 1_000_000;

/// Why a YAML input was refused.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// Larger than [`MAX_INPUT_BYTES`].
    #[error("{bytes} bytes is more than the {MAX_INPUT_BYTES} bytes read from one file; split it")]
    TooLarge {
        /// Size of the input.
        bytes: usize,
    },
    /// Not YAML, nested too deeply, or too many nodes; the message says which and where.
    #[error("document {document}: {message}")]
    Invalid {
        /// 0-based index among the non-empty documents.
        document: usize,
        /// The parser's message, with the line and column.
        message: String,
    },
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_INPUT_BYTES);
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_events = MAX_EVENTS_PER_DOCUMENT;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Kubernetes tooling (sigs.k8s.io/yaml) lets a repeated key win; so do we.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
    options.with_snippet = false;
    options
}

/// Every non-empty document of `text`, in order. A document that is YAML but not JSON-like
/// data is an error for that document only; a syntax error or an exceeded limit ends the
/// input (the parser cannot find the next document reliably after one).
pub fn documents(text: &str) -> Vec<Result<Value, YamlError>> {
    if text.len() > MAX_INPUT_BYTES {
        return vec![Err(YamlError::TooLarge { bytes: text.len() })];
    }
    let mut reader = text.as_bytes();
    serde_saphyr::read_with_options::<_, Value>(&mut reader, options())
        .enumerate()
        .map(|(document, parsed)| {
            parsed.map_err(|err| YamlError::Invalid {
                document,
                message: err.to_string(),
            })
        })
        .collect()
}

/// One document, as [`documents`] would read it; `null` when the text holds none.
pub fn document(text: &str) -> Result<Value, YamlError> {
    documents(text)
        .into_iter()
        .next()
        .unwrap_or(Ok(Value::Null))
}

/// `value` as block-style YAML.
pub fn to_string<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("serde values without non-string keys serialize to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_read_in_order_skipping_empty_ones() {
        let docs = documents("a: 1\n---\n---\nb: [x, {c: true}]\n");
        let docs: Vec<Value> = docs.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            docs,
            vec![
                serde_json::json!({"a": 1}),
                serde_json::json!({"b": ["x", {"c": true}]})
            ]
        );
    }

    #[test]
    fn deep_nesting_is_refused_with_a_reason() {
        // A parser that recursed 100,000 levels would overflow the stack instead.
        let text = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let docs = documents(&text);
        let err = docs.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("document 0: recursion limit exceeded at line 1"),
            "{err}"
        );
    }

    #[test]
    fn round_trips_through_to_string() {
        let value = serde_json::json!({"kind": "Pod", "spec": {"containers": [{"name": "x", "args": ["--a", "1"]}]}, "on": "yes"});
        assert_eq!(document(&to_string(&value)).unwrap(), value);
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let text = " ".repeat(MAX_INPUT_BYTES + 1);
        assert!(matches!(
            documents(&text).as_slice(),
            [Err(YamlError::TooLarge { .. })]
        ));
    }
}
