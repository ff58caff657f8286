//! `GET /openapi.json`: the API described in OpenAPI 3.1.
//!
//! The document is hand-written (`openapi.json` beside this file) because
//! most of what a client needs from it is prose: the limits, the events and
//! how a run ends. The tests below keep it honest: its request schema lists
//! exactly the fields [`QueryRequest`](crate::request::QueryRequest)
//! accepts plus each sandbox provider's credential field, with the same
//! limits, and schemathesis runs it against a real server
//! (`tests/openapi_schemathesis.rs`).

use serde_json::{Value, json};

use crate::sandbox::provider::Credential;

/// The hand-written document, less the sandbox providers' credential fields,
/// which each provider declares.
pub(crate) const TEMPLATE: &str = include_str!("openapi.json");

/// The document as served: [`TEMPLATE`] with one request property per
/// provider credential in `credentials`.
pub(crate) fn document(credentials: &[Credential]) -> String {
    // TEMPLATE is ours and a test parses it; should it ever not parse,
    // serving it unchanged beats serving nothing.
    let Ok(mut doc) = serde_json::from_str::<Value>(TEMPLATE) else {
        return TEMPLATE.to_owned();
    };
    if let Some(properties) =
        doc["components"]["schemas"]["QueryRequest"]["properties"].as_object_mut()
    {
        for credential in credentials {
            properties.insert(
                credential.field.to_owned(),
                json!({
                    "type": ["string", "null"],
                    "description": format!(
                        "{} An empty string means not given.",
                        credential.description
                    ),
                }),
            );
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| TEMPLATE.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::{self, Deserializer, Visitor};
    use serde_json::{Value, json};

    use crate::doors::PROVIDERS;
    use crate::outputs::{DEFAULT_LIMITS, MAX_PATTERNS};
    use crate::request::{
        DEFAULT_TIMEOUT_SECS, MAX_FILES, MAX_FILES_BYTES, MAX_PROMPT_CHARS, Query, QueryRequest,
        TIMEOUT_RANGE,
    };
    use crate::sandbox::provider::{Credential, credential_fields};

    fn credentials() -> Vec<Credential> {
        credential_fields(PROVIDERS)
    }

    fn document() -> Value {
        serde_json::from_str::<Value>(super::TEMPLATE).expect("src/openapi.json is JSON");
        serde_json::from_str(&super::document(&credentials())).expect("the served document")
    }

    fn parse(body: &[u8]) -> Result<Query, crate::error::ApiError> {
        Query::from_json(body, &credentials())
    }

    fn request_schema() -> Value {
        document()["components"]["schemas"]["QueryRequest"].clone()
    }

    /// The field names serde's derive gives `deserialize_struct`: exactly
    /// the fields `QueryRequest` accepts, read from the type itself.
    fn query_request_fields() -> BTreeSet<&'static str> {
        struct Probe;
        #[derive(Debug)]
        struct Fields(&'static [&'static str]);
        impl std::fmt::Display for Fields {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::error::Error for Fields {}
        impl de::Error for Fields {
            fn custom<T: std::fmt::Display>(msg: T) -> Self {
                panic!("QueryRequest is not read as a struct: {msg}")
            }
        }
        impl<'de> Deserializer<'de> for Probe {
            type Error = Fields;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
                panic!("QueryRequest is not read as a struct")
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                _visitor: V,
            ) -> Result<V::Value, Fields> {
                Err(Fields(fields))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let mut fields: BTreeSet<&'static str> =
            match <QueryRequest as serde::Deserialize>::deserialize(Probe) {
                Err(Fields(fields)) => fields.iter().copied().collect(),
                Ok(_) => unreachable!("the probe never yields a value"),
            };
        fields.extend(credentials().iter().map(|c| c.field));
        fields
    }

    #[test]
    fn the_document_is_openapi_3_1_with_the_crate_version() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for (path, method) in [
            ("/query", "post"),
            ("/health", "get"),
            ("/openapi.json", "get"),
            ("/", "get"),
            ("/runs/{id}/ended", "post"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
    }

    #[test]
    fn the_request_schema_lists_exactly_the_fields_query_request_accepts() {
        let schema = request_schema();
        let documented: BTreeSet<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            documented,
            query_request_fields(),
            "src/openapi.json and QueryRequest disagree on the request's fields"
        );
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], json!(["prompt"]));
    }

    #[test]
    fn a_body_with_every_documented_field_is_accepted() {
        let schema = request_schema();
        let mut body = serde_json::Map::new();
        for name in schema["properties"].as_object().expect("properties").keys() {
            let value = match name.as_str() {
                "prompt" => json!("hello"),
                "anthropic_api_key" | "openrouter_api_key" => json!("key-12345678"),
                name if credentials().iter().any(|c| c.field == name) => json!("key-12345678"),
                "model" => json!("sonnet"),
                "max_turns" => json!(3),
                "timeout" => json!(60),
                "files" => json!({"data/a.csv": "a,b\n"}),
                "outputs" => json!(["output/**", "*.png"]),
                "detach" => json!(true),
                "keep_alive" => json!(60),
                "resume" => json!("run_00000000000000000000000000000000"),
                "fork_session" => json!(true),
                "output_format" => json!({"type": "json_schema", "schema": {"type": "object"}}),
                "allowed_tools" => json!(["Read", "Bash"]),
                // Names of sandstorm.json's are checked when the run is
                // planned; here, their shape.
                "allowed_mcp_servers" | "allowed_agents" => json!(["reviewer"]),
                "allowed_skills" => json!(["owasp-top-10"]),
                "extra_agents" => {
                    json!({"reviewer": {"description": "Reviews", "prompt": "Review"}})
                }
                "extra_skills" => json!({"owasp-top-10": "# OWASP"}),
                "max_budget_usd" | "max_cost_usd" => json!(0.5),
                "max_tokens" => json!(100_000),
                "team_id" | "user_id" | "channel_id" => json!("T123"),
                "webhook_url" => json!("https://hooks.example.com/run-ended?token=t"),
                // Documented only to say it is refused, with why.
                "remember" => continue,
                other => panic!("no example value for the new field {other:?}; add one here"),
            };
            body.insert(name.clone(), value);
        }
        let bytes = serde_json::to_vec(&body).expect("json");
        parse(&bytes).expect("a body with every documented field is valid");
    }

    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let p = &request_schema()["properties"];
        assert_eq!(p["prompt"]["minLength"], 1);
        assert_eq!(p["prompt"]["maxLength"], MAX_PROMPT_CHARS);
        assert_eq!(p["timeout"]["minimum"], *TIMEOUT_RANGE.start());
        assert_eq!(p["timeout"]["maximum"], *TIMEOUT_RANGE.end());
        assert!(
            p["timeout"]["description"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!("else {DEFAULT_TIMEOUT_SECS}."))),
            "timeout's default is described"
        );
        assert_eq!(p["max_turns"]["minimum"], 1);
        assert_eq!(p["max_turns"]["maximum"], u32::MAX);
        assert_eq!(p["files"]["maxProperties"], MAX_FILES);
        assert_eq!(p["outputs"]["maxItems"], MAX_PATTERNS);
        assert_eq!(
            p["keep_alive"]["maximum"],
            crate::request::MAX_KEEP_ALIVE_SECS
        );
        let described = |field: &str, text: String| {
            let description = p[field]["description"].as_str().expect("description");
            assert!(
                description.contains(&text),
                "{field}: {description:?} says {text:?}"
            );
        };
        described("files", format!("{MAX_FILES_BYTES} bytes"));
        let limits = DEFAULT_LIMITS;
        described(
            "outputs",
            format!(
                "At most {} files, {} MiB each and {} MiB in all",
                limits.max_files,
                limits.max_file_bytes >> 20,
                limits.max_total_bytes >> 20
            ),
        );

        // Each bound is where validation starts to refuse.
        let accepts = |body: Value| parse(body.to_string().as_bytes()).is_ok();
        let prompt = |n: usize| "x".repeat(n);
        assert!(accepts(json!({"prompt": prompt(MAX_PROMPT_CHARS)})));
        assert!(!accepts(json!({"prompt": prompt(MAX_PROMPT_CHARS + 1)})));
        assert!(!accepts(json!({"prompt": ""})));
        for (timeout, ok) in [(4, false), (5, true), (3600, true), (3601, false)] {
            assert_eq!(
                accepts(json!({"prompt": "x", "timeout": timeout})),
                ok,
                "{timeout}"
            );
        }
        assert!(!accepts(json!({"prompt": "x", "max_turns": 0})));
        assert_eq!(
            p["webhook_url"]["maxLength"],
            crate::request::MAX_WEBHOOK_URL_BYTES
        );
        let url = |n: usize| format!("https://h.example/{}", "a".repeat(n - 18));
        assert_eq!(url(100).len(), 100);
        let max = crate::request::MAX_WEBHOOK_URL_BYTES;
        assert!(accepts(json!({"prompt": "x", "webhook_url": url(max)})));
        assert!(!accepts(
            json!({"prompt": "x", "webhook_url": url(max + 1)})
        ));
        assert!(!accepts(
            json!({"prompt": "x", "webhook_url": "ftp://h.example/"})
        ));
        assert!(!accepts(
            json!({"prompt": "x", "webhook_url": "h.example/done"})
        ));
        let files = |n: usize| -> Value {
            (0..n)
                .map(|i| (format!("f{i}"), json!("")))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        assert!(accepts(json!({"prompt": "x", "files": files(MAX_FILES)})));
        assert!(!accepts(
            json!({"prompt": "x", "files": files(MAX_FILES + 1)})
        ));
        let outputs = |n: usize| vec!["*.txt"; n];
        assert!(accepts(
            json!({"prompt": "x", "outputs": outputs(MAX_PATTERNS)})
        ));
        assert!(!accepts(
            json!({"prompt": "x", "outputs": outputs(MAX_PATTERNS + 1)})
        ));
    }

    #[test]
    fn null_means_absent_for_every_optional_field_as_documented() {
        let schema = request_schema();
        for (name, property) in schema["properties"].as_object().expect("properties") {
            if name == "prompt" {
                continue;
            }
            let types = property["type"].as_array().expect("a type list");
            assert!(
                types.contains(&json!("null")),
                "{name} is documented as nullable"
            );
            let body = json!({"prompt": "x", name.as_str(): null});
            parse(body.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{name}: null is accepted: {e}"));
        }
    }

    #[test]
    fn every_error_type_and_status_is_documented() {
        use crate::error::ApiError;
        let doc = document();
        let responses = &doc["paths"]["/query"]["post"]["responses"];
        let kinds = &doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["properties"]
            ["type"]["enum"];
        // A new variant stops this compiling until it is listed below.
        let _every_variant_is_listed = |e: &ApiError| match e {
            ApiError::Invalid { .. }
            | ApiError::BadRequest { .. }
            | ApiError::MissingKey { .. }
            | ApiError::TooLarge { .. }
            | ApiError::UnsupportedMediaType
            | ApiError::Unauthorized
            | ApiError::Config { .. }
            | ApiError::Internal(_)
            | ApiError::Overloaded
            // `/query` answers these for `resume`, as `/runs` does.
            | ApiError::NoSuchRun
            | ApiError::Provider { .. }
            | ApiError::TurnRunning { .. }
            | ApiError::RunOver { .. } => (),
            // Only the trigger routes answer it; documented with them.
            ApiError::TooManyRuns { .. } => (),
        };
        let errors = [
            ApiError::invalid("f", "m"),
            ApiError::BadRequest {
                message: "m".into(),
            },
            ApiError::MissingKey {
                field: "f".into(),
                message: "m".into(),
            },
            ApiError::TooLarge {
                field: None,
                message: "m".into(),
            },
            ApiError::UnsupportedMediaType,
            ApiError::Unauthorized,
            ApiError::Config {
                message: "m".into(),
            },
            ApiError::Internal("d".into()),
            ApiError::Overloaded,
            ApiError::NoSuchRun,
            ApiError::Provider {
                message: "m".into(),
            },
            ApiError::TurnRunning {
                message: "m".into(),
            },
            ApiError::RunOver {
                message: "m".into(),
            },
        ];
        let documented = |path: &str, responses: &Value, error: &ApiError| {
            let status = error.status().as_u16().to_string();
            assert!(
                responses[&status].is_object(),
                "status {status} is documented for {path}"
            );
            assert!(
                kinds
                    .as_array()
                    .expect("enum")
                    .contains(&json!(error.kind())),
                "error type {} is documented",
                error.kind()
            );
        };
        // A follow-up turn is refused as `/query` is, and then some.
        let messages = &doc["paths"]["/runs/{id}/messages"]["post"]["responses"];
        // A replay is refused as a follow-up is: it reads a run, then
        // plans one.
        let replay = &doc["paths"]["/runs/{id}/replay"]["post"]["responses"];
        for error in &errors {
            documented("/query", responses, error);
            if !matches!(error, ApiError::Overloaded) {
                documented("/runs/{id}/messages", messages, error);
                documented("/runs/{id}/replay", replay, error);
            }
        }
        // And those only `/runs/{id}/events` answers, under it.
        let runs = &doc["paths"]["/runs/{id}/events"]["get"]["responses"];
        for error in [
            ApiError::NoSuchRun,
            ApiError::Provider {
                message: "m".into(),
            },
            ApiError::Unauthorized,
            ApiError::invalid("after", "m"),
        ] {
            documented("/runs/{id}/events", runs, &error);
        }
    }

    #[test]
    fn no_type_the_runner_may_not_send_is_documented_as_an_agent_event() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let excluded = schemas["OtherAgentEvent"]["properties"]["type"]["not"]["enum"]
            .as_array()
            .expect("OtherAgentEvent excludes the known types");
        let known = [
            "system",
            "assistant",
            "user",
            "result",
            "error",
            "file",
            "warning",
        ];
        for kind in crate::run::shape::SERVER_OWNED.into_iter().chain(known) {
            assert!(excluded.contains(&json!(kind)), "{kind} is not excluded");
        }
        // Each type the server sends on the API has its own schema.
        for (kind, schema) in [
            ("stderr", "StderrEvent"),
            ("stdout", "StdoutEvent"),
            ("done", "DoneEvent"),
            ("run", "RunEvent"),
            ("detached", "DetachedEvent"),
            ("turn", "TurnEvent"),
            ("replay", "ReplayEvent"),
            ("omitted", "OmittedEvent"),
        ] {
            assert_eq!(schemas[schema]["properties"]["type"]["const"], kind);
            let listed = schemas["Event"]["anyOf"]
                .as_array()
                .expect("Event is anyOf")
                .contains(&json!({"$ref": format!("#/components/schemas/{schema}")}));
            assert!(listed, "{schema} is not an Event");
        }
    }

    #[test]
    fn every_error_event_type_is_documented() {
        use crate::events::ErrorKind;
        let doc = document();
        let documented =
            &doc["components"]["schemas"]["ErrorEvent"]["properties"]["error_type"]["enum"];
        // A new variant stops this compiling until it is listed below.
        let _every_variant_is_listed = |k: ErrorKind| match k {
            ErrorKind::Timeout
            | ErrorKind::Sandbox
            | ErrorKind::StreamCut
            | ErrorKind::RunnerFailed
            | ErrorKind::RunnerError
            | ErrorKind::OutputTooLarge
            | ErrorKind::Shutdown
            | ErrorKind::Cancelled
            | ErrorKind::BudgetExceeded => (),
        };
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::Sandbox,
            ErrorKind::StreamCut,
            ErrorKind::RunnerFailed,
            ErrorKind::RunnerError,
            ErrorKind::OutputTooLarge,
            ErrorKind::Shutdown,
            ErrorKind::Cancelled,
            ErrorKind::BudgetExceeded,
        ] {
            let name = serde_json::to_value(kind).expect("kind");
            assert!(
                documented.as_array().expect("enum").contains(&name),
                "{name}"
            );
        }
    }
}
