//! Which field a serde error is about, in the dotted form our error bodies
//! and messages use (`files.a.txt`, `mcp_servers.db.command`).
//!
//! One place for what the request and sandstorm.json both need:
//! `serde_path_to_error` reports where the deserializer was, but unknown
//! and missing fields are reported at their parent's path, with the field's
//! own name only in the message.

use serde_path_to_error::Path;

/// The dotted path of the field an error is about, or `None` when it is
/// about the document as a whole.
pub(crate) fn field_at_fault(path: &Path, message: &str) -> Option<String> {
    let path = path.to_string();
    let named = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|kind| message.starts_with(kind))
        .then(|| message.split('`').nth(1))
        .flatten();
    match named {
        Some(name) if path == "." => Some(name.to_owned()),
        // Unknown fields are reported at their own path already.
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => Some(path),
        Some(name) => Some(format!("{path}.{name}")),
        None if path == "." => None,
        None => Some(path),
    }
}

/// serde_json appends " at line L column C"; for a one-line body it only
/// adds noise to a message that already names the field.
pub(crate) fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        items: Option<std::collections::BTreeMap<String, Inner>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        x: u32,
    }

    fn fault(json: &str) -> Option<String> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let err = serde_path_to_error::deserialize::<_, Outer>(de).expect_err("invalid");
        field_at_fault(err.path(), &err.inner().to_string())
    }

    #[test]
    fn names_the_field_of_unknown_missing_and_mistyped_values() {
        assert_eq!(
            fault(r#"{"inner":{"x":1},"nope":1}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(fault(r#"{}"#).as_deref(), Some("inner"));
        assert_eq!(fault(r#"{"inner":{}}"#).as_deref(), Some("inner.x"));
        assert_eq!(fault(r#"{"inner":{"x":"1"}}"#).as_deref(), Some("inner.x"));
        assert_eq!(
            fault(r#"{"inner":{"x":1,"y":2}}"#).as_deref(),
            Some("inner.y")
        );
        assert_eq!(
            fault(r#"{"inner":{"x":1,"x":2}}"#).as_deref(),
            Some("inner.x")
        );
    }

    #[test]
    fn a_field_whose_name_ends_like_another_is_not_mistaken_for_it() {
        // `items.ax` is missing `x`: the path ends in "x" but not in ".x".
        assert_eq!(
            fault(r#"{"inner":{"x":1},"items":{"ax":{}}}"#).as_deref(),
            Some("items.ax.x")
        );
    }

    #[test]
    fn positions_are_stripped() {
        assert_eq!(strip_position("bad at line 1 column 9"), "bad");
        assert_eq!(strip_position("bad"), "bad");
    }
}
