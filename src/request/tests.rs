//! The validation rules of `POST /query`, one by one.

use super::*;
use axum::http::StatusCode;

/// A sandbox provider's credential field, as any provider declares one.
const SANDBOX: Credential = Credential {
    field: "acme_api_key",
    variable: "ACME_API_KEY",
    description: "the Acme sandbox key",
};

fn parse(body: &str) -> Result<Query, ApiError> {
    Query::from_json(body.as_bytes(), &[SANDBOX])
}

fn rejected(body: &str) -> ApiError {
    match parse(body) {
        Ok(q) => panic!("accepted {body}: {q:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_minimal_request_gets_the_defaults() {
    let q = parse(r#"{"prompt":"hi"}"#).expect("valid");
    assert_eq!(q.prompt, "hi");
    assert_eq!(q.timeout, None, "left to sandstorm.json, then 300");
    assert!(q.files.is_empty());
    assert!(q.model.is_none() && q.max_turns.is_none());
}

#[test]
fn every_field_of_the_original_is_accepted() {
    let q = parse(
        r#"{"prompt":"p","anthropic_api_key":"a","openrouter_api_key":"o","acme_api_key":"e",
            "model":"opus","max_turns":7,"timeout":60,"files":{"a.txt":"x"}}"#,
    )
    .expect("valid");
    assert_eq!(q.keys.anthropic.as_ref().map(Secret::expose), Some("a"));
    assert_eq!(q.keys.openrouter.as_ref().map(Secret::expose), Some("o"));
    assert_eq!(
        q.keys.sandbox("acme_api_key").map(Secret::expose),
        Some("e")
    );
    assert_eq!(q.model.as_deref(), Some("opus"));
    assert_eq!(q.max_turns, Some(7));
    assert_eq!(q.timeout, Some(Duration::from_secs(60)));
    assert_eq!(q.files[0].path, "a.txt");
}

#[test]
fn empty_keys_count_as_not_given() {
    let q = parse(r#"{"prompt":"p","anthropic_api_key":""}"#).expect("valid");
    assert!(q.keys.anthropic.is_none());
}

#[test]
fn prompt_is_required_and_named() {
    let e = rejected(r#"{"model":"x"}"#);
    assert_eq!(e.field(), Some("prompt"));
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[test]
fn prompt_must_not_be_empty() {
    let e = rejected(r#"{"prompt":""}"#);
    assert_eq!(e.field(), Some("prompt"));
}

#[test]
fn prompt_limit_counts_characters_not_bytes() {
    let at_limit = "é".repeat(MAX_PROMPT_CHARS);
    let body = serde_json::json!({ "prompt": at_limit }).to_string();
    assert!(
        parse(&body).is_ok(),
        "1,000,000 two-byte characters are allowed"
    );
    let over = serde_json::json!({ "prompt": "a".repeat(MAX_PROMPT_CHARS + 1) }).to_string();
    let e = rejected(&over);
    assert_eq!(e.field(), Some("prompt"));
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e.to_string().contains("1000000"), "{e}");
}

#[test]
fn timeout_range_is_5_to_3600() {
    for ok in [5, 300, 3600] {
        assert!(
            parse(&format!(r#"{{"prompt":"p","timeout":{ok}}}"#)).is_ok(),
            "{ok}"
        );
    }
    for bad in [0, 4, 3601] {
        let e = rejected(&format!(r#"{{"prompt":"p","timeout":{bad}}}"#));
        assert_eq!(e.field(), Some("timeout"), "{bad}");
        assert!(e.to_string().contains("between 5 and 3600"), "{e}");
    }
}

#[test]
fn wrong_types_name_the_field() {
    let e = rejected(r#"{"prompt":"p","max_turns":"ten"}"#);
    assert_eq!(e.field(), Some("max_turns"));
    assert!(e.to_string().contains("expected a JSON number"), "{e}");
    let e = rejected(r#"{"prompt":"p","timeout":-1}"#);
    assert_eq!(e.field(), Some("timeout"));
    let e = rejected(r#"{"prompt":"p","files":{"a":3}}"#);
    assert_eq!(e.field(), Some("files.a"));
}

#[test]
fn max_turns_must_be_positive() {
    assert_eq!(
        rejected(r#"{"prompt":"p","max_turns":0}"#).field(),
        Some("max_turns")
    );
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let e = rejected(r#"{"prompt":"p","max_turn":3}"#);
    assert_eq!(e.field(), Some("max_turn"));
    assert!(e.to_string().contains("unknown field"), "{e}");
}

#[test]
fn broken_json_is_a_bad_request() {
    let e = rejected(r#"{"prompt":"#);
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    let e = rejected(r#"["prompt"]"#);
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
}

#[test]
fn at_most_20_files() {
    let files: BTreeMap<String, String> = (0..=MAX_FILES)
        .map(|i| (format!("f{i}"), String::new()))
        .collect();
    let body = serde_json::json!({"prompt":"p","files":files}).to_string();
    let e = rejected(&body);
    assert_eq!(e.field(), Some("files"));
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e.to_string().contains("limit is 20"), "{e}");
}

#[test]
fn at_most_10_mb_of_files() {
    let half = "x".repeat(MAX_FILES_BYTES / 2);
    let ok = serde_json::json!({"prompt":"p","files":{"a":half,"b":half}}).to_string();
    assert!(parse(&ok).is_ok());
    let over = serde_json::json!({"prompt":"p","files":{"a":half,"b":format!("{half}x")}});
    let e = rejected(&over.to_string());
    assert_eq!(e.field(), Some("files"));
    assert!(e.to_string().contains("10000000"), "{e}");
}

#[test]
fn paths_are_normalized() {
    assert_eq!(normalize_path("a.txt").as_deref(), Ok("a.txt"));
    assert_eq!(
        normalize_path("./src//main.py").as_deref(),
        Ok("src/main.py")
    );
    assert_eq!(normalize_path("src/../b.txt").as_deref(), Ok("b.txt"));
    assert_eq!(normalize_path("logs/").as_deref(), Ok("logs"));
}

#[test]
fn dangerous_paths_are_refused() {
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../../x",
        ".",
        "./",
        "a/..",
        "a\0b",
    ] {
        assert!(normalize_path(bad).is_err(), "{bad:?} must be refused");
    }
    let long_name = "n".repeat(256);
    assert!(normalize_path(&long_name).is_err());
}

#[test]
fn a_bad_path_names_the_file_field() {
    let e = rejected(r#"{"prompt":"p","files":{"../../etc/passwd":"x"}}"#);
    assert_eq!(e.field(), Some("files.../../etc/passwd"));
    assert!(e.to_string().contains("escapes"), "{e}");
}

#[test]
fn two_names_for_one_path_are_refused() {
    let e = rejected(r#"{"prompt":"p","files":{"a.txt":"1","./a.txt":"2"}}"#);
    assert!(e.to_string().contains("same path"), "{e}");
}

#[test]
fn whole_numbers_may_be_written_as_floats() {
    let q = parse(r#"{"prompt":"p","timeout":14.0,"max_turns":3.0}"#).expect("valid");
    assert_eq!(q.timeout, Some(Duration::from_secs(14)));
    assert_eq!(q.max_turns, Some(3));
    for bad in [
        r#""timeout":14.5"#,
        r#""timeout":-5"#,
        r#""max_turns":1e20"#,
        r#""timeout":"14""#,
    ] {
        let e = rejected(&format!(r#"{{"prompt":"p",{bad}}}"#));
        assert!(
            matches!(e.field(), Some("timeout" | "max_turns")),
            "{bad}: {e}"
        );
    }
}

#[test]
fn data_after_the_object_is_refused() {
    for body in [
        r#"{"prompt":"hi"} trailing"#,
        r#"{"prompt":"hi"}{"prompt":"again"}"#,
    ] {
        let e = rejected(body);
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(e.to_string().contains("after the JSON object"), "{e}");
    }
    // Whitespace after the object is fine.
    parse("{\"prompt\":\"hi\"}\n  ").expect("trailing whitespace");
}

#[test]
fn a_key_given_twice_anywhere_is_refused_naming_it() {
    let e = rejected(r#"{"prompt":"a","prompt":"b"}"#);
    assert_eq!(e.field(), Some("prompt"));
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let e = rejected(r#"{"prompt":"p","files":{"a.txt":"1","a.txt":"2"}}"#);
    assert_eq!(e.field(), Some("files.a.txt"), "{e}");
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e.to_string().contains("duplicate"), "{e}");
}

#[test]
fn a_file_inside_another_files_path_is_refused() {
    for files in [
        r#"{"a":"1","a/b":"2"}"#,
        r#"{"d/a":"1","d/a/b/c":"2"}"#,
        r#"{"x/../a":"1","a/b":"2"}"#,
    ] {
        let e = rejected(&format!(r#"{{"prompt":"p","files":{files}}}"#));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{files}");
        assert!(e.field().is_some_and(|f| f.starts_with("files.")), "{e:?}");
        assert!(e.to_string().contains("clash"), "{e}");
    }
    // Siblings and shared folders are fine.
    parse(r#"{"prompt":"p","files":{"a/b":"1","a/c":"2","ab":"3"}}"#).expect("no clash");
}

#[test]
fn a_number_that_does_not_fit_says_so() {
    let e = rejected(r#"{"prompt":"p","timeout":1e400}"#);
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert!(e.to_string().contains("number out of range"), "{e}");
}

#[test]
fn python_sandstorm_s_fields_are_taken_and_checked() {
    let q = parse(
        r##"{"prompt":"p","output_format":{"type":"json_schema","schema":{"type":"object"}},
            "allowed_tools":["Read"],"allowed_mcp_servers":[],"allowed_skills":["s-1"],
            "allowed_agents":["a"],"extra_agents":{"a":{"description":"d","prompt":"p","maxTurns":3}},
            "extra_skills":{"s-1":"# S"},"max_budget_usd":0.25,
            "max_cost_usd":1.5,"max_tokens":200000.0,
            "team_id":"T1","user_id":"U1","channel_id":"C1"}"##,
    )
    .expect("valid");
    assert!(matches!(
        q.agent.output_format,
        Some(OutputFormatChoice::Format(_))
    ));
    assert_eq!(q.agent.allowed_mcp_servers.as_deref(), Some(&[][..]));
    assert_eq!(q.agent.extra_agents["a"].max_turns, Some(3));
    assert_eq!(q.agent.max_budget_usd, Some(0.25));
    assert_eq!(
        q.caps,
        crate::spend::Caps {
            max_cost_usd: Some(1.5),
            max_tokens: Some(200_000)
        }
    );
    assert_eq!(
        q.labels.into_iter().collect::<Vec<_>>(),
        [
            ("channel_id", "C1".to_owned()),
            ("team_id", "T1".to_owned()),
            ("user_id", "U1".to_owned())
        ]
    );
    // `{}` turns sandstorm.json's structured output off, as in 0.9.2.
    let q = parse(r#"{"prompt":"p","output_format":{}}"#).expect("valid");
    assert_eq!(q.agent.output_format, Some(OutputFormatChoice::Off));
}

#[test]
fn each_bad_value_of_python_sandstorm_s_fields_names_its_field() {
    for (body, field) in [
        (r#"{"output_format":{"type":"xml"}}"#, "output_format"),
        (r#"{"allowed_tools":["Read",""]}"#, "allowed_tools[1]"),
        (r#"{"allowed_skills":["a b"]}"#, "allowed_skills[0]"),
        (r#"{"extra_skills":{"a b":"x"}}"#, "extra_skills.a b"),
        (r#"{"extra_skills":{"s":"  "}}"#, "extra_skills.s"),
        (
            r#"{"extra_agents":{"a":{"description":"d"}}}"#,
            "extra_agents.a.prompt",
        ),
        (
            r#"{"extra_agents":{"a":{"description":"d","prompt":"p","colour":1}}}"#,
            "extra_agents.a.colour",
        ),
        (
            r#"{"extra_agents":{"a":{"description":"d","prompt":"p","maxTurns":0}}}"#,
            "extra_agents.a.maxTurns",
        ),
        (r#"{"max_budget_usd":0}"#, "max_budget_usd"),
        (r#"{"max_budget_usd":-1.5}"#, "max_budget_usd"),
        (r#"{"max_cost_usd":0}"#, "max_cost_usd"),
        (r#"{"max_cost_usd":"1"}"#, "max_cost_usd"),
        (r#"{"max_tokens":0}"#, "max_tokens"),
        (r#"{"max_tokens":1.5}"#, "max_tokens"),
        (r#"{"max_tokens":-1}"#, "max_tokens"),
        (r#"{"team_id":""}"#, "team_id"),
        (r#"{"user_id":"a\nb"}"#, "user_id"),
    ] {
        let mut full: serde_json::Value = serde_json::from_str(body).expect("json");
        full["prompt"] = "p".into();
        let e = rejected(&full.to_string());
        assert_eq!(e.field(), Some(field), "{body}: {e}");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let long = format!(
        r#"{{"prompt":"p","channel_id":"{}"}}"#,
        "c".repeat(MAX_LABEL_BYTES + 1)
    );
    assert!(rejected(&long).to_string().contains("128 bytes"));
}

#[test]
fn remember_is_refused_saying_memory_is_not_supported_and_why() {
    let e = rejected(r#"{"prompt":"p","remember":"I like tabs"}"#);
    assert_eq!(e.field(), Some("remember"));
    assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let message = e.to_string();
    assert!(message.contains("not supported"), "{message}");
    assert!(message.contains("prompt injection"), "{message}");
    // null is the same as leaving it out.
    assert!(parse(r#"{"prompt":"p","remember":null}"#).is_ok());
}

#[test]
fn extra_skills_count_toward_the_upload_limit() {
    let half = "x".repeat(MAX_FILES_BYTES / 2 + 1);
    let body = serde_json::json!({
        "prompt": "p",
        "files": {"a.txt": half},
        "extra_skills": {"s": half},
    });
    let e = rejected(&body.to_string());
    assert_eq!(e.field(), Some("extra_skills"));
    assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn outputs_is_auto_or_a_list_of_globs() {
    let q = parse(r#"{"prompt":"p","outputs":"auto"}"#).expect("valid");
    assert_eq!(q.outputs, Some(Outputs::Auto));
    let q = parse(r#"{"prompt":"p","outputs":["*.md"]}"#).expect("valid");
    assert_eq!(q.outputs, Some(Outputs::Globs(vec!["*.md".to_owned()])));
    let e = rejected(r#"{"prompt":"p","outputs":"everything"}"#);
    assert_eq!(e.field(), Some("outputs"));
    assert!(e.to_string().contains(r#""auto""#), "{e}");
}
