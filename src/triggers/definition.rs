//! A trigger as sandstorm.json declares it, read into types once.
//!
//! sandstorm.json is checked with this when it is loaded, so a mistake in
//! a trigger names its field (`triggers[1].path`) at start-up. The
//! `${VAR}` in a webhook's `secret` stays unresolved here: the settings
//! resolve it from the environment ([`super::Triggers::resolve`]).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::schedule::Schedule;

/// The most runs a trigger starts in one minute, unless it says otherwise.
pub(crate) const DEFAULT_RATE_PER_MINUTE: u32 = 10;
/// The most runs of one trigger at once, unless it says otherwise.
pub(crate) const DEFAULT_MAX_CONCURRENT: u32 = 2;
/// The longest random delay a cron trigger may add to its fire time.
const MAX_JITTER: Duration = Duration::from_secs(3600);

/// One trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Its name: a slug, unique among the triggers.
    pub name: String,
    /// The prompt template (see [`super::template`]).
    pub prompt: String,
    /// What fires it.
    pub source: Source,
    /// The `/query` fields its runs are started with, besides `prompt`
    /// (`model`, `max_turns`, `timeout`, `webhook_url`, ...). Checked as a
    /// request would be when the file is loaded.
    pub run: Map<String, Value>,
    /// The most runs it starts in a minute; past it, 429.
    pub rate_per_minute: u32,
    /// The most of its runs going at once; past it, 429 (a cron trigger
    /// skips the fire).
    pub max_concurrent: u32,
    /// Whether values filled into the prompt are wrapped in
    /// `<trigger_value path="...">` (escaped), as Python Sandstorm 0.9.2
    /// does, so a caller's text is marked as data, not instructions.
    pub wrap_values: bool,
}

/// What fires a trigger. Its `Debug` never shows a webhook's secret, which
/// sandstorm.json may hold written out rather than as `${VAR}`.
#[derive(Clone, PartialEq)]
pub enum Source {
    /// `POST <path>` from another system.
    Webhook {
        /// Its route, e.g. `/triggers/github-issue`.
        path: String,
        /// The shared secret as written (`${VAR}` unresolved); `None` only
        /// with `public`.
        secret: Option<String>,
        /// Whether it takes calls with no secret at all.
        public: bool,
    },
    /// A schedule.
    Cron {
        /// When it fires (boxed: croner's pattern is large).
        schedule: Box<Schedule>,
        /// Whether a fire may start while its previous run still goes.
        overlap: bool,
        /// The most random delay added to each fire time.
        jitter: Duration,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Webhook {
                path,
                secret,
                public,
            } => f
                .debug_struct("Webhook")
                .field("path", path)
                .field("secret", &secret.as_ref().map(|_| "<redacted>"))
                .field("public", public)
                .finish(),
            Source::Cron {
                schedule,
                overlap,
                jitter,
            } => f
                .debug_struct("Cron")
                .field("schedule", schedule)
                .field("overlap", overlap)
                .field("jitter", jitter)
                .finish(),
        }
    }
}

impl Source {
    /// `webhook` or `cron`, as sandstorm.json spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Webhook { .. } => "webhook",
            Source::Cron { .. } => "cron",
        }
    }
}

/// The fields of a trigger entry that are the trigger's own; any other is a
/// `/query` field for its runs.
const OWN_FIELDS: [&str; 13] = [
    "name",
    "type",
    "prompt",
    "path",
    "secret",
    "public",
    "schedule",
    "timezone",
    "overlap",
    "jitter",
    "rate_limit",
    "max_concurrent",
    "wrap_values",
];

/// `/query` fields a trigger may not set: its prompt is its own, a run it
/// starts is always detached and new, and keys belong in the environment.
const REFUSED_RUN_FIELDS: [&str; 4] = ["detach", "resume", "fork_session", "files"];

/// Reads sandstorm.json's `triggers`. The error is the field at fault
/// (`triggers[1].path`) and why.
pub fn parse(entries: &[Value]) -> Result<Vec<Definition>, (String, String)> {
    let mut names = BTreeSet::new();
    let mut paths = BTreeSet::new();
    let mut definitions = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let at = |field: &str| format!("triggers[{index}].{field}");
        let Value::Object(entry) = entry else {
            return Err((format!("triggers[{index}]"), "must be an object".into()));
        };
        let definition = parse_one(entry).map_err(|(field, why)| (at(&field), why))?;
        if !names.insert(definition.name.clone()) {
            return Err((
                at("name"),
                format!("{:?} names another trigger too", definition.name),
            ));
        }
        if let Source::Webhook { path, .. } = &definition.source
            && !paths.insert(path.clone())
        {
            return Err((
                at("path"),
                format!("{path:?} is another trigger's path too"),
            ));
        }
        definitions.push(definition);
    }
    Ok(definitions)
}

type FieldError = (String, String);

fn refuse(field: &str, why: impl Into<String>) -> FieldError {
    (field.to_owned(), why.into())
}

fn parse_one(entry: &Map<String, Value>) -> Result<Definition, FieldError> {
    let text = |field: &str| entry.get(field).and_then(Value::as_str);
    let name = text("name").unwrap_or_default();
    if !is_slug(name) {
        return Err(refuse(
            "name",
            "must be 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
        ));
    }
    let prompt = text("prompt").unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(refuse("prompt", "must be a non-empty string"));
    }
    let source = match text("type") {
        Some("webhook") => webhook(entry)?,
        Some("cron") => cron(entry)?,
        Some("reaction") => {
            return Err(refuse(
                "type",
                "reaction triggers are Slack's, and Slack is not supported yet",
            ));
        }
        _ => return Err(refuse("type", "must be \"webhook\" or \"cron\"")),
    };
    let run: Map<String, Value> = entry
        .iter()
        .filter(|(key, _)| !OWN_FIELDS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    check_run_fields(&run)?;
    Ok(Definition {
        name: name.to_owned(),
        prompt: prompt.to_owned(),
        source,
        run,
        rate_per_minute: count(entry, "rate_limit", DEFAULT_RATE_PER_MINUTE)?,
        max_concurrent: count(entry, "max_concurrent", DEFAULT_MAX_CONCURRENT)?,
        wrap_values: flag(entry, "wrap_values", true)?,
    })
}

fn webhook(entry: &Map<String, Value>) -> Result<Source, FieldError> {
    for field in ["schedule", "timezone", "overlap", "jitter"] {
        if entry.contains_key(field) {
            return Err(refuse(field, "is a cron trigger's; this one is a webhook"));
        }
    }
    let path = entry
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !path.starts_with('/')
        || path.len() < 2
        || !path[1..]
            .split('/')
            .all(|part| !part.is_empty() && part.chars().all(is_path_char))
    {
        return Err(refuse(
            "path",
            "must start with / and hold only letters, digits, '-', '_' and single slashes",
        ));
    }
    if let Some(route) = RESERVED
        .iter()
        .find(|r| path == **r || path.starts_with(&format!("{r}/")))
    {
        return Err(refuse(
            "path",
            format!("{path:?} is under {route}, a route of ours"),
        ));
    }
    let secret = match entry.get("secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(refuse("secret", "must be a string")),
    };
    let public = flag(entry, "public", false)?;
    match (&secret, public) {
        (None, false) => Err(refuse(
            "secret",
            "is required: anyone who knows the URL could start runs. Set a secret \
             (\"${MY_TRIGGER_SECRET}\" reads it from the environment), or \"public\": true \
             to take calls with none",
        )),
        (Some(_), true) => Err(refuse(
            "public",
            "a public trigger takes no secret; remove one of them",
        )),
        _ => Ok(Source::Webhook {
            path: path.to_owned(),
            secret,
            public,
        }),
    }
}

fn cron(entry: &Map<String, Value>) -> Result<Source, FieldError> {
    for field in ["path", "secret", "public"] {
        if entry.contains_key(field) {
            return Err(refuse(field, "is a webhook trigger's; this one is cron"));
        }
    }
    let schedule = entry
        .get("schedule")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let timezone = match entry.get("timezone") {
        None | Some(Value::Null) => None,
        Some(Value::String(zone)) => Some(zone.as_str()),
        Some(_) => return Err(refuse("timezone", "must be an IANA time zone name")),
    };
    let schedule = Box::new(Schedule::parse(schedule, timezone)?);
    let jitter = match entry.get("jitter") {
        None | Some(Value::Null) => Duration::ZERO,
        Some(value) => {
            let seconds = value
                .as_u64()
                .ok_or_else(|| refuse("jitter", "must be a whole number of seconds"))?;
            let jitter = Duration::from_secs(seconds);
            if jitter > MAX_JITTER {
                return Err(refuse(
                    "jitter",
                    format!("must be at most {} seconds", MAX_JITTER.as_secs()),
                ));
            }
            jitter
        }
    };
    Ok(Source::Cron {
        schedule,
        overlap: flag(entry, "overlap", false)?,
        jitter,
    })
}

/// Checks a trigger's run fields as a `/query` body would be checked, with
/// a stand-in prompt, so a wrong `model` or `timeout` is a start-up error.
fn check_run_fields(run: &Map<String, Value>) -> Result<(), FieldError> {
    if let Some(field) = REFUSED_RUN_FIELDS.iter().find(|f| run.contains_key(**f)) {
        let why = match *field {
            "files" => "is not taken: a trigger's runs carry no files",
            _ => "is not taken: a trigger always starts a new detached run",
        };
        return Err(refuse(field, why));
    }
    if let Some(field) = run.keys().find(|k| k.ends_with("_api_key")) {
        return Err(refuse(
            field,
            "a trigger may not hold keys: set them in the environment or .env",
        ));
    }
    let mut body = run.clone();
    body.insert("prompt".into(), Value::String("trigger".into()));
    let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
    crate::request::Query::from_json(&bytes, &[]).map_err(|e| match e {
        crate::error::ApiError::Invalid {
            field: Some(field),
            message,
        } => (field, message),
        other => (String::from("run"), other.to_string()),
    })?;
    Ok(())
}

fn count(entry: &Map<String, Value>, field: &str, default: u32) -> Result<u32, FieldError> {
    match entry.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| refuse(field, "must be a whole number, at least 1")),
    }
}

fn flag(entry: &Map<String, Value>, field: &str, default: bool) -> Result<bool, FieldError> {
    match entry.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(refuse(field, "must be true or false")),
    }
}

/// Paths a webhook trigger may not take: our routes, and Python
/// Sandstorm's own (`/slack`, `/webhooks`).
const RESERVED: [&str; 8] = [
    "/query",
    "/runs",
    "/health",
    "/openapi.json",
    "/dashboard",
    "/slack",
    "/webhooks",
    "/triggers/cron",
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

    fn parsed(triggers: &Value) -> Result<Vec<Definition>, (String, String)> {
        parse(triggers.as_array().expect("a list"))
    }

    fn field_of(triggers: &Value) -> String {
        parsed(triggers).expect_err("refused").0
    }

    #[test]
    fn webhook_and_cron_triggers_are_read_with_their_run_fields() {
        let triggers = parsed(&json!([
            {"name": "triage", "type": "webhook", "path": "/github/issues", "secret": "${S}",
             "prompt": "Triage {{body.issue.title}}", "model": "haiku", "max_turns": 3},
            {"name": "digest", "type": "cron", "schedule": "0 9 * * MON-FRI",
             "timezone": "Europe/Prague", "prompt": "Write the digest", "jitter": 30,
             "rate_limit": 2}
        ]))
        .expect("valid");
        assert_eq!(
            triggers[0].source,
            Source::Webhook {
                path: "/github/issues".into(),
                secret: Some("${S}".into()),
                public: false
            }
        );
        assert_eq!(
            triggers[0].run,
            json!({"model": "haiku", "max_turns": 3})
                .as_object()
                .expect("object")
                .clone()
        );
        assert_eq!(triggers[0].rate_per_minute, DEFAULT_RATE_PER_MINUTE);
        let Source::Cron {
            overlap, jitter, ..
        } = &triggers[1].source
        else {
            panic!("cron")
        };
        assert!(!overlap);
        assert_eq!(*jitter, Duration::from_secs(30));
        assert_eq!(triggers[1].rate_per_minute, 2);
        assert!(triggers[1].run.is_empty());
    }

    #[test]
    fn a_secret_written_out_is_never_shown() {
        let triggers = parsed(&json!([{"name": "a", "type": "webhook", "path": "/a",
                                       "secret": "hunter2-written-out", "prompt": "p"}]))
        .expect("valid");
        let shown = format!("{triggers:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_webhook_without_a_secret_must_say_it_is_public() {
        let open = json!([{"name": "a", "type": "webhook", "path": "/a", "prompt": "p"}]);
        assert_eq!(field_of(&open), "triggers[0].secret");
        let public = json!([{"name": "a", "type": "webhook", "path": "/a", "prompt": "p",
                             "public": true}]);
        assert!(matches!(
            parsed(&public).expect("public")[0].source,
            Source::Webhook {
                public: true,
                secret: None,
                ..
            }
        ));
    }

    #[test]
    fn each_mistake_names_its_field() {
        let hook = |extra: Value| {
            let mut t = json!({"name": "a", "type": "webhook", "path": "/a", "secret": "s",
                               "prompt": "p"});
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
            (json!({"path": "/triggers/cron/x"}), "path"),
            (json!({"prompt": " "}), "prompt"),
            (json!({"type": "email"}), "type"),
            (json!({"path": "a"}), "path"),
            (json!({"path": "/a//b"}), "path"),
            (json!({"secret": 1}), "secret"),
            (json!({"schedule": "* * * * *"}), "schedule"),
            (json!({"model": 7}), "model"),
            (json!({"max_turns": 0}), "max_turns"),
            (json!({"resume": "run_x"}), "resume"),
            (json!({"detach": false}), "detach"),
            (json!({"files": {}}), "files"),
            (
                json!({"anthropic_api_key": "sk-ant-x"}),
                "anthropic_api_key",
            ),
            (json!({"rate_limit": 0}), "rate_limit"),
            (json!({"max_concurrent": "2"}), "max_concurrent"),
            (json!({"wrap_values": "no"}), "wrap_values"),
            (json!({"public": true}), "public"),
        ];
        for (extra, field) in one_field_wrong {
            assert_eq!(
                field_of(&json!([hook(extra.clone())])),
                format!("triggers[0].{field}"),
                "{extra}"
            );
        }
        let cron = |extra: Value| {
            let mut t = json!({"name": "c", "type": "cron", "schedule": "0 9 * * *",
                               "prompt": "p"});
            for (k, v) in extra.as_object().expect("object") {
                t[k] = v.clone();
            }
            t
        };
        for (extra, field) in [
            (json!({"schedule": "daily"}), "schedule"),
            (json!({"schedule": "0 9 * * * *"}), "schedule"),
            (json!({"timezone": "Mars/Olympus"}), "timezone"),
            (json!({"jitter": 7200}), "jitter"),
            (json!({"overlap": 1}), "overlap"),
            (json!({"path": "/c"}), "path"),
        ] {
            assert_eq!(
                field_of(&json!([cron(extra.clone())])),
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
                json!([{"name": "r", "type": "reaction", "emoji": "eyes", "prompt": "p"}]),
                "triggers[0].type",
            ),
        ] {
            assert_eq!(field_of(&triggers), field, "{triggers}");
        }
    }
}
