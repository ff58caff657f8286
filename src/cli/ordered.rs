//! A JSON value that keeps its objects' keys in the order they were
//! written, for the commands that edit a person's sandstorm.json
//! (`ds add`): `serde_json::Value` sorts keys (the crate is built without
//! `preserve_order`), which would reshuffle a file its owner laid out.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A JSON value whose objects are lists of entries in file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    /// The value under `key`, when this is an object that has one.
    pub(crate) fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            Ordered::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key`, for changing it in place.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Ordered> {
        match self {
            Ordered::Object(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key` on an object: in its place when it is there, else last.
    /// Does nothing on anything but an object.
    pub(crate) fn insert(&mut self, key: &str, value: Ordered) {
        if let Ordered::Object(entries) = self {
            match entries.iter_mut().find(|(k, _)| k == key) {
                Some((_, old)) => *old = value,
                None => entries.push((key.to_owned(), value)),
            }
        }
    }

    /// The string, when this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Ordered::String(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of JSON value this is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Ordered::Null => "null",
            Ordered::Bool(_) => "a boolean",
            Ordered::Number(_) => "a number",
            Ordered::String(_) => "a string",
            Ordered::Array(_) => "an array",
            Ordered::Object(_) => "an object",
        }
    }

    /// Every string anywhere in this value, depth first.
    pub(crate) fn strings(&self) -> Vec<&str> {
        let mut found = Vec::new();
        self.collect_strings(&mut found);
        found
    }

    fn collect_strings<'a>(&'a self, found: &mut Vec<&'a str>) {
        match self {
            Ordered::String(s) => found.push(s),
            Ordered::Array(items) => items.iter().for_each(|v| v.collect_strings(found)),
            Ordered::Object(entries) => entries.iter().for_each(|(_, v)| v.collect_strings(found)),
            Ordered::Null | Ordered::Bool(_) | Ordered::Number(_) => {}
        }
    }

    /// Pretty JSON with two-space indents and a final newline, as the
    /// starters are written.
    pub(crate) fn to_pretty(&self) -> String {
        // Serializing a tree of strings, numbers and lists cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ordered::Null => s.serialize_unit(),
            Ordered::Bool(b) => s.serialize_bool(*b),
            Ordered::Number(n) => n.serialize(s),
            Ordered::String(text) => s.serialize_str(text),
            Ordered::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Ordered::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }

    fn visit_none<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Ordered, E> {
        Ok(Ordered::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Ordered, E> {
        Ok(Ordered::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Ordered, E> {
        Ok(Ordered::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Ordered, E> {
        serde_json::Number::from_f64(n)
            .map(Ordered::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Ordered, E> {
        Ok(Ordered::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Ordered, E> {
        Ok(Ordered::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        // A repeated key keeps its first place and its last value: the
        // value serde_json::Value would read.
        let mut object = Ordered::Object(Vec::new());
        while let Some((key, value)) = map.next_entry::<String, Ordered>()? {
            object.insert(&key, value);
        }
        Ok(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_written_order_through_a_round_trip() {
        let text = r#"{"zeta": 1, "alpha": {"y": [true, null, 2.5], "b": "x"}, "mid": -3}"#;
        let value: Ordered = serde_json::from_str(text).expect("parse");
        let back = serde_json::to_string(&value).expect("serialize");
        assert_eq!(
            back,
            r#"{"zeta":1,"alpha":{"y":[true,null,2.5],"b":"x"},"mid":-3}"#
        );
    }

    #[test]
    fn insert_replaces_in_place_or_appends() {
        let mut value: Ordered = serde_json::from_str(r#"{"a": 1, "b": 2}"#).expect("parse");
        value.insert("a", Ordered::String("one".into()));
        value.insert("c", Ordered::Null);
        assert_eq!(
            serde_json::to_string(&value).expect("serialize"),
            r#"{"a":"one","b":2,"c":null}"#
        );
    }

    #[test]
    fn a_repeated_key_keeps_the_last_value_as_serde_json_does() {
        let value: Ordered = serde_json::from_str(r#"{"a": 1, "a": 2}"#).expect("parse");
        assert_eq!(
            serde_json::to_string(&value).expect("serialize"),
            r#"{"a":2}"#
        );
    }
}
