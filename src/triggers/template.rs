//! A trigger's prompt template: `{{body.issue.title}}`,
//! `{{headers.x-github-event}}`, `{{trigger.name}}`.
//!
//! It only looks values up. There is no logic, no filter and no code, and
//! a value is put in as text once, never read again as template, so a
//! caller's `{{...}}` stays literal. A path that leads nowhere renders
//! empty, so one template serves payloads with optional fields. Objects
//! and arrays render as compact JSON; a number in a path indexes an array
//! (`{{body.commits.0.message}}`).
//!
//! As in Python Sandstorm 0.9.2, each value is by default wrapped as
//! `<trigger_value path="body.issue.title">...</trigger_value>`, with `&`,
//! `<` and `>` escaped, so the model can tell a caller's text from the
//! template's instructions and a value cannot close its own wrapper.

use serde_json::{Map, Value};

/// Headers never offered to a template: they carry the trigger's secret or
/// a caller's credentials.
const HIDDEN_HEADERS: [&str; 5] = [
    "authorization",
    "cookie",
    "x-sandstorm-trigger-secret",
    "x-hub-signature",
    "x-hub-signature-256",
];

/// What a template's paths are looked up in.
#[derive(Debug, Default)]
pub struct Sources {
    /// `{{body.*}}`: the request's JSON body.
    pub body: Option<Value>,
    /// `{{headers.*}}`: the request's headers, names in lower case.
    pub headers: Map<String, Value>,
    /// `{{trigger.*}}`: the trigger's name and type, and when it fired.
    pub trigger: Map<String, Value>,
}

impl Sources {
    /// The sources of a call to a trigger named `name` of `kind`.
    pub fn new(name: &str, kind: &str, fired_at: &str) -> Self {
        let mut trigger = Map::new();
        trigger.insert("name".into(), Value::String(name.to_owned()));
        trigger.insert("type".into(), Value::String(kind.to_owned()));
        trigger.insert("fired_at".into(), Value::String(fired_at.to_owned()));
        Sources {
            trigger,
            ..Sources::default()
        }
    }

    /// With a request's headers (those that may be shown).
    #[must_use]
    pub fn with_headers(mut self, headers: &http::HeaderMap) -> Self {
        for (name, value) in headers {
            let name = name.as_str();
            if HIDDEN_HEADERS.contains(&name) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                self.headers
                    .insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        self
    }

    fn root(&self, name: &str) -> Option<Value> {
        match name {
            "body" => self.body.clone(),
            "headers" => Some(Value::Object(self.headers.clone())),
            "trigger" => Some(Value::Object(self.trigger.clone())),
            _ => None,
        }
    }
}

/// Fills `template` from `sources`; `wrap` wraps each value (see the
/// module's note).
pub fn render(template: &str, sources: &Sources, wrap: bool) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = after[..close].trim();
        if is_path(inner) {
            let value = lookup(sources, inner).map(|v| text(&v)).unwrap_or_default();
            if wrap && !value.is_empty() {
                out.push_str("<trigger_value path=\"");
                out.push_str(inner);
                out.push_str("\">");
                out.push_str(&escaped(&value));
                out.push_str("</trigger_value>");
            } else {
                out.push_str(&value);
            }
        } else {
            // Not a placeholder: kept as written.
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// `root.segment.segment`, where each segment is letters, digits, `_` or
/// `-` and the root starts with a letter.
fn is_path(inner: &str) -> bool {
    let mut segments = inner.split('.');
    let root_ok = segments
        .next()
        .is_some_and(|root| root.chars().next().is_some_and(|c| c.is_ascii_alphabetic()));
    root_ok
        && inner.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

fn lookup(sources: &Sources, path: &str) -> Option<Value> {
    let mut segments = path.split('.');
    let mut value = sources.root(segments.next()?)?;
    for segment in segments {
        value = match value {
            Value::Object(mut object) => object.remove(segment)?,
            Value::Array(mut items) => {
                let index: usize = segment.parse().ok()?;
                if index >= items.len() {
                    return None;
                }
                items.swap_remove(index)
            }
            _ => return None,
        };
    }
    Some(value)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn escaped(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn github() -> Sources {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-github-event", "issues".parse().expect("header"));
        headers.insert("x-hub-signature-256", "sha256=abc".parse().expect("header"));
        headers.insert(
            "x-sandstorm-trigger-secret",
            "hunter2".parse().expect("header"),
        );
        let mut sources =
            Sources::new("triage", "webhook", "2026-12-06T08:00:00Z").with_headers(&headers);
        sources.body = Some(json!({
            "action": "opened",
            "issue": {"title": "Login <b>broken</b>", "number": 42, "labels": [{"name": "bug"}]},
            "sender": {"login": "octocat"},
            "note": "{{trigger.name}}"
        }));
        sources
    }

    #[test]
    fn paths_fill_from_the_body_the_headers_and_the_trigger() {
        let rendered = render(
            "[{{ trigger.name }}] #{{body.issue.number}} {{body.issue.title}} by \
             {{body.sender.login}} ({{headers.x-github-event}}, {{body.issue.labels.0.name}})",
            &github(),
            false,
        );
        assert_eq!(
            rendered,
            "[triage] #42 Login <b>broken</b> by octocat (issues, bug)"
        );
    }

    #[test]
    fn missing_paths_render_empty_and_objects_as_json() {
        let rendered = render(
            "a={{body.nope.deeper}} b={{body.issue.labels}} c={{headers.x-none}} \
             d={{body.issue.number.x}} e={{env.HOME}} f={{body.issue.labels.9}}",
            &github(),
            false,
        );
        assert_eq!(rendered, "a= b=[{\"name\":\"bug\"}] c= d= e= f=");
    }

    #[test]
    fn a_value_is_never_read_again_as_template() {
        assert_eq!(
            render("{{body.note}}", &github(), false),
            "{{trigger.name}}"
        );
    }

    #[test]
    fn secrets_in_headers_are_not_offered() {
        assert_eq!(
            render(
                "{{headers.x-sandstorm-trigger-secret}}{{headers.x-hub-signature-256}}",
                &github(),
                false
            ),
            ""
        );
    }

    #[test]
    fn wrapped_values_are_escaped_and_marked_with_their_path() {
        assert_eq!(
            render("Triage: {{body.issue.title}}{{body.nope}}", &github(), true),
            "Triage: <trigger_value path=\"body.issue.title\">Login &lt;b&gt;broken&lt;/b&gt;\
             </trigger_value>"
        );
    }

    #[test]
    fn text_that_is_not_a_placeholder_stays() {
        assert_eq!(
            render("{{ not a path }} {{unclosed", &github(), false),
            "{{ not a path }} {{unclosed"
        );
    }
}
