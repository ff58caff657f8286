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
