//! What the relay lets through of the runner's output lines, and why not.

use super::*;

#[test]
fn patterns_are_checked_one_by_one() {
    assert!(validate_patterns(&["output/**".into(), "*.png".into()]).is_ok());
    for bad in ["", "/etc/*", "../x", "a/../../b", "a\0"] {
        let e = validate_patterns(&[bad.to_owned()]).expect_err(bad);
        assert!(e.contains("output pattern"), "{e}");
    }
    let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("f{i}")).collect();
    assert!(validate_patterns(&many).is_err());
}

#[test]
fn the_budget_holds_the_runner_to_the_limits() {
    let mut budget = OutputBudget::new(OutputLimits {
        max_files: 2,
        max_file_bytes: 3000,
        max_total_bytes: 4000,
    });
    assert!(budget.check(2500).is_ok());
    budget.spend(2500);
    let per_file = budget.check(3001).expect_err("per file");
    assert!(per_file.contains("per-file"), "{per_file}");
    let total = budget.check(1600).expect_err("total");
    assert!(total.contains("total"), "{total}");
    assert!(budget.check(1000).is_ok());
    budget.spend(1000);
    let count = budget.check(1).expect_err("count");
    assert!(count.contains("2 output files"), "{count}");
}

fn check(patterns: &[&str]) -> OutputCheck {
    OutputCheck::new(Some(&OutputPlan {
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        limits: DEFAULT_LIMITS,
        changed_only: false,
    }))
}

fn file_line(path: &str, content: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "file",
        "path": path,
        "size": content.len(),
        "mime": "text/plain",
        "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
    }))
    .expect("json")
}

fn json(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("json")
}

fn sent(vetted: Vetted) -> serde_json::Value {
    match vetted {
        Vetted::Send(event) => json(&event),
        other => panic!("not sent: {other:?}"),
    }
}

fn withheld(vetted: Vetted) -> serde_json::Value {
    match vetted {
        Vetted::Withheld { warning, .. } => json(&warning),
        other => panic!("not withheld: {other:?}"),
    }
}

#[test]
fn a_file_the_run_asked_for_is_sent_as_the_server_writes_it() {
    let mut check = check(&["output/**"]);
    let mut line = file_line("output/a.txt", b"hi");
    // The runner's own size and mime are not taken on trust.
    line = String::from_utf8(line)
        .expect("utf-8")
        .replace("\"size\":2", "\"size\":999")
        .replace("text/plain", "text/plain; charset=evil")
        .into_bytes();
    let event = sent(check.file(&line, &Redactor::default()));
    assert_eq!(
        event,
        serde_json::json!({"type":"file","name":"a.txt","relative_path":"output/a.txt",
            "path":"output/a.txt","size":2,"mime":"application/octet-stream","data":"aGk="})
    );
}

#[test]
fn a_path_that_is_not_plain_is_withheld_without_repeating_it() {
    for path in [
        "../../../../tmp/x",
        "output/../../x",
        "/etc/passwd",
        "output//a",
        "output/./a",
        "output/.env",
        ".ssh/id_rsa",
        "output\\..\\x",
        "C:/Windows/x",
        "output/a\nb",
        "",
    ] {
        // `**` would match every one of these.
        let warning = withheld(check(&["**"]).file(&file_line(path, b"x"), &Redactor::default()));
        assert_eq!(warning["type"], "warning", "{path:?}");
        assert!(warning.get("path").is_none(), "{path:?}: {warning}");
        assert_eq!(warning["message"], UNSAFE_PATH, "{path:?}");
    }
}

#[test]
fn a_file_outside_the_patterns_or_with_none_asked_for_is_withheld() {
    let line = file_line("notes.txt", b"x");
    let warning = withheld(check(&["output/**"]).file(&line, &Redactor::default()));
    assert_eq!(warning["path"], "notes.txt");
    let message = warning["message"].as_str().expect("message");
    assert!(message.contains("matches none"), "{message}");
    let warning = withheld(OutputCheck::new(None).file(&line, &Redactor::default()));
    let message = warning["message"].as_str().expect("message");
    assert!(message.contains("asked for no output files"), "{message}");
}

#[test]
fn a_malformed_file_line_is_withheld() {
    let redactor = Redactor::default();
    for line in [
        &br#"{"type":"file","path":"a.txt"}"#[..],
        br#"{"type":"file","path":"a.txt","size":1,"mime":"x/y","content_base64":"eA==","extra":1}"#,
        br#"{"type":"file","path":"a.txt","path":"../x","size":1,"mime":"x/y","content_base64":"eA=="}"#,
        b"not json",
    ] {
        let warning = withheld(check(&["**"]).file(line, &redactor));
        assert_eq!(warning["message"], MALFORMED_FILE);
    }
    let line = br#"{"type":"file","path":"a.txt","size":1,"mime":"x/y","content_base64":"!!!!"}"#;
    let warning = withheld(check(&["**"]).file(line, &redactor));
    assert_eq!(warning["path"], "a.txt");
}

#[test]
fn a_file_holding_a_key_or_over_a_limit_is_withheld_by_name() {
    let redactor = Redactor::new(["sk-ant-test-key-123"]);
    let line = file_line("env.txt", b"KEY=sk-ant-test-key-123\n");
    let warning = withheld(check(&["*"]).file(&line, &redactor));
    assert_eq!(warning["path"], "env.txt");
    assert!(
        warning["message"]
            .as_str()
            .expect("message")
            .contains("contains a key")
    );

    let big = vec![0u8; DEFAULT_LIMITS.max_file_bytes + 1];
    let warning = withheld(check(&["*"]).file(&file_line("big.bin", &big), &redactor));
    let message = warning["message"].as_str().expect("message");
    assert!(
        message.contains("big.bin") && message.contains("per-file"),
        "{message}"
    );
}

#[test]
fn warnings_are_rebuilt_and_need_a_plain_path_if_any() {
    let line =
        br#"{"type":"warning","path":"output/huge.bin","message":"output/huge.bin not sent"}"#;
    assert_eq!(
        sent(OutputCheck::warning(line)),
        serde_json::json!({"type":"warning","path":"output/huge.bin","message":"output/huge.bin not sent"})
    );
    let line = br#"{"type":"warning","message":"cannot list /home/user: EACCES"}"#;
    assert_eq!(
        sent(OutputCheck::warning(line))["message"],
        "cannot list /home/user: EACCES"
    );
    for line in [
        &br#"{"type":"warning","path":"../../x","message":"m"}"#[..],
        br#"{"type":"warning","message":"m","extra":true}"#,
        br#"{"type":"warning"}"#,
    ] {
        assert!(matches!(OutputCheck::warning(line), Vetted::Dropped(_)));
    }
}

#[test]
fn plain_mime_types_only() {
    for good in [
        "image/png",
        "image/svg+xml",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ] {
        assert!(plain_mime(good), "{good}");
    }
    for bad in [
        "",
        "text",
        "text/",
        "/plain",
        "text/html; charset=utf-8",
        "a/b/c",
    ] {
        assert!(!plain_mime(bad), "{bad}");
    }
}
