//! sandstorm.json's `triggers` and `webhook_url`, checked now so a config
//! written for Python Sandstorm 0.9.2 loads, and so a mistake in them is
//! caught at start-up. Neither acts yet: runs fired by triggers and the
//! webhook told when a run ends come with "triggers and webhooks", and
//! until then the server warns at start-up that they do nothing.

use std::collections::BTreeSet;

use serde_json::Value;

/// Checks `triggers`: a list of objects, each with a unique `name` (a
/// slug), a `type` of `webhook` or `cron`, a non-empty `prompt`, and for a
/// webhook a unique `path` under `/`, for cron a five-field `schedule`.
/// The error is the field at fault (`triggers[1].path`) and why.
pub(crate) fn check(triggers: &[Value]) -> Result<(), (String, String)> {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for (index, trigger) in triggers.iter().enumerate() {
        let at = |field: &str| format!("triggers[{index}].{field}");
        let Value::Object(trigger) = trigger else {
            return Err((format!("triggers[{index}]"), "must be an object".into()));
        };
        let text = |field: &str| trigger.get(field).and_then(Value::as_str);
        let name = text("name").unwrap_or_default();
        if !is_slug(name) {
            return Err((
                at("name"),
                "must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
                    .into(),
            ));
        }
        if !names.insert(name) {
            return Err((at("name"), format!("{name:?} names another trigger too")));
        }
        if text("prompt").is_none_or(|p| p.trim().is_empty()) {
            return Err((at("prompt"), "must be a non-empty string".into()));
        }
        match text("type") {
            Some("webhook") => {
                let path = text("path").unwrap_or_default();
                if !path.starts_with('/')
                    || path.len() < 2
                    || !path[1..]
                        .split('/')
                        .all(|part| !part.is_empty() && part.chars().all(is_path_char))
                {
                    return Err((
                        at("path"),
                        "must start with / and hold only letters, digits, '-', '_' and \
                         single slashes"
                            .into(),
                    ));
                }
                if let Some(route) = RESERVED
                    .iter()
                    .find(|r| path == **r || path.starts_with(&format!("{r}/")))
                {
                    return Err((
                        at("path"),
                        format!("{path:?} is under {route}, a route of ours"),
                    ));
                }
                if !paths.insert(path) {
                    return Err((
                        at("path"),
                        format!("{path:?} is another trigger's path too"),
                    ));
                }
                if trigger.get("secret").is_some_and(|s| !s.is_string()) {
                    return Err((at("secret"), "must be a string".into()));
                }
            }
            Some("cron") => {
                let schedule = text("schedule").unwrap_or_default();
                if schedule.split_whitespace().count() != 5 {
                    return Err((
                        at("schedule"),
                        "must be a five-field cron schedule (minute hour day month weekday)".into(),
                    ));
                }
            }
            Some("reaction") => {
                return Err((
                    at("type"),
                    "reaction triggers are Slack's, and Slack is not supported yet".into(),
                ));
            }
            _ => return Err((at("type"), "must be \"webhook\" or \"cron\"".into())),
        }
    }
    Ok(())
}

/// Checks `webhook_url`: an absolute http or https URL with a host.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed)
            if matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some() =>
        {
            Ok(())
        }
        _ => Err("must be an absolute http:// or https:// URL".into()),
    }
}

/// Paths a webhook trigger may not take: our routes, and Python
/// Sandstorm's own (`/slack`, `/webhooks`).
const RESERVED: [&str; 6] = [
    "/query",
    "/runs",
    "/health",
    "/openapi.json",
    "/slack",
    "/webhooks",
];

/// A trigger's name, as Python Sandstorm 0.9.2 has it.
fn is_slug(name: &str) -> bool {
    name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field_of(triggers: Value) -> String {
        let Value::Array(triggers) = triggers else {
            panic!("a list")
        };
        check(&triggers).expect_err("refused").0
    }

    #[test]
    fn webhook_and_cron_triggers_pass() {
        let triggers = json!([
            {"name": "triage", "type": "webhook", "path": "/github/issues", "secret": "${S}",
             "prompt": "Triage {{body.issue.title}}"},
            {"name": "digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
             "timezone": "Europe/Prague", "prompt": "Write the digest"}
        ]);
        assert_eq!(check(triggers.as_array().expect("list")), Ok(()));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let hook = |extra: Value| {
            let mut t = json!({"name": "a", "type": "webhook", "path": "/a", "prompt": "p"});
            for (k, v) in extra.as_object().expect("object") {
                t[k] = v.clone();
            }
            t
        };
        let one_field_wrong = [
            (json!({"name": "A b"}), "name"),
            (json!({"name": "-a"}), "name"),
            (json!({"path": "/runs/x"}), "path"),
            (json!({"path": "/health"}), "path"),
            (json!({"prompt": " "}), "prompt"),
            (json!({"type": "email"}), "type"),
            (json!({"path": "a"}), "path"),
            (json!({"path": "/a//b"}), "path"),
            (json!({"secret": 1}), "secret"),
        ];
        for (extra, field) in one_field_wrong {
            assert_eq!(
                field_of(json!([hook(extra.clone())])),
                format!("triggers[0].{field}"),
                "{extra}"
            );
        }
        for (triggers, field) in [
            (json!([1]), "triggers[0]"),
            // The second of two triggers repeats the first's path, or name.
            (
                json!([hook(json!({})), hook(json!({"name": "b"}))]),
                "triggers[1].path",
            ),
            (
                json!([hook(json!({})), hook(json!({"path": "/b"}))]),
                "triggers[1].name",
            ),
            (
                json!([{"name": "c", "type": "cron", "schedule": "daily", "prompt": "p"}]),
                "triggers[0].schedule",
            ),
            (
                json!([{"name": "r", "type": "reaction", "emoji": "eyes", "prompt": "p"}]),
                "triggers[0].type",
            ),
        ] {
            assert_eq!(field_of(triggers.clone()), field, "{triggers}");
        }
    }

    #[test]
    fn webhook_urls_must_be_http() {
        assert_eq!(check_webhook_url("https://hooks.example.com/x"), Ok(()));
        assert!(check_webhook_url("hooks.example.com").is_err());
        assert!(check_webhook_url("file:///etc/passwd").is_err());
    }
}
