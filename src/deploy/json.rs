//! JSON that keeps the order it was written in, and a printer in
//! `vercel.json`'s style, so `ds schedules --vercel` rewrites that file
//! without shuffling what it does not own.
//!
//! (serde_json's own map sorts its keys; turning on its `preserve_order`
//! would change that for the whole crate.)

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their keys in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// How wide an object or array of plain values may be on one line.
const LINE_WIDTH: usize = 100;

impl Json {
    /// Reads `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// The value of `key`, for an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(text) => Some(text),
            _ => None,
        }
    }

    /// Sets `key` of an object, in its place, or last when it is new.
    pub(crate) fn set(&mut self, key: &str, value: Json) {
        if let Json::Object(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, old)) => *old = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// An object of string values, in this order.
    pub(crate) fn strings(pairs: &[(&str, &str)]) -> Json {
        Json::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Json::String((*v).to_owned())))
                .collect(),
        )
    }

    /// The value as text: objects and arrays of plain values on one line
    /// when they fit, the others one entry per line, indented by two.
    pub(crate) fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn is_container(&self) -> bool {
        matches!(self, Json::Array(_) | Json::Object(_))
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(&n.to_string()),
            Json::String(s) => out.push_str(&quoted(s)),
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Object(entries) if entries.is_empty() => out.push_str("{}"),
            Json::Array(items) => {
                let parts: Vec<String> = items.iter().map(|i| i.inline()).collect();
                let flat = items.iter().all(|i| !i.is_container());
                let line = format!("[{}]", parts.join(", "));
                if indent > 0 && flat && indent + line.len() <= LINE_WIDTH {
                    out.push_str(&line);
                } else {
                    out.push_str("[\n");
                    for (n, item) in items.iter().enumerate() {
                        out.push_str(&" ".repeat(indent + 2));
                        item.write(out, indent + 2);
                        out.push_str(if n + 1 < items.len() { ",\n" } else { "\n" });
                    }
                    out.push_str(&" ".repeat(indent));
                    out.push(']');
                }
            }
            Json::Object(entries) => {
                let flat = entries.iter().all(|(_, v)| !v.is_container());
                let line = self.inline();
                if indent > 0 && flat && indent + line.len() <= LINE_WIDTH {
                    out.push_str(&line);
                } else {
                    out.push_str("{\n");
                    for (n, (key, value)) in entries.iter().enumerate() {
                        out.push_str(&" ".repeat(indent + 2));
                        out.push_str(&quoted(key));
                        out.push_str(": ");
                        value.write(out, indent + 2);
                        out.push_str(if n + 1 < entries.len() { ",\n" } else { "\n" });
                    }
                    out.push_str(&" ".repeat(indent));
                    out.push('}');
                }
            }
        }
    }

    /// On one line: `{ "a": 1, "b": [1, 2] }`.
    fn inline(&self) -> String {
        match self {
            Json::Array(items) if !items.is_empty() => format!(
                "[{}]",
                items
                    .iter()
                    .map(Json::inline)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Json::Object(entries) if !entries.is_empty() => format!(
                "{{ {} }}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", quoted(k), v.inline()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => {
                let mut out = String::new();
                other.write(&mut out, 0);
                out
            }
        }
    }
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}"))
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vercel_json_prints_back_as_it_was_written() {
        let text = include_str!("../../vercel.json");
        assert_eq!(Json::parse(text).expect("JSON").pretty(), text);
    }

    #[test]
    fn keys_keep_their_order_and_a_new_one_goes_last() {
        let mut value = Json::parse(r#"{"z": 1, "a": {"y": [1, 2], "b": null}}"#).expect("JSON");
        value.set("m", Json::Bool(true));
        value.set("z", Json::String("é\"".into()));
        assert_eq!(
            value.pretty(),
            "{\n  \"z\": \"é\\\"\",\n  \"a\": {\n    \"y\": [1, 2],\n    \"b\": null\n  },\n  \"m\": true\n}\n"
        );
        assert_eq!(value.get("a").and_then(|a| a.get("b")), Some(&Json::Null));
    }

    #[test]
    fn a_line_too_long_is_broken() {
        let long = "x".repeat(120);
        let value = Json::parse(&format!(r#"{{"a": {{"b": "{long}"}}}}"#)).expect("JSON");
        assert_eq!(
            value.pretty(),
            format!("{{\n  \"a\": {{\n    \"b\": \"{long}\"\n  }}\n}}\n")
        );
    }
}
