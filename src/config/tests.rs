//! What `sandstorm.json` accepts, and how it says what is wrong.

use super::*;

fn parse(json: &str) -> Result<SandstormConfig, ConfigError> {
    SandstormConfig::parse(json.as_bytes(), Path::new("sandstorm.json"))
}

fn field_of(json: &str) -> (String, String) {
    match parse(json) {
        Err(ConfigError::Field { field, message, .. }) => (field, message),
        other => panic!("expected a field error for {json}, got {other:?}"),
    }
}

#[test]
fn the_originals_examples_parse() {
    let config = parse(
        r#"{
        "system_prompt": "You are a due diligence analyst.",
        "model": "sonnet",
        "max_turns": 20,
        "output_format": {"type": "json_schema", "schema": {"type": "object"}},
        "agents": {
            "scraper": {"description": "Crawls", "prompt": "Scrape", "tools": ["Bash"], "model": "sonnet"},
            "report-writer": {"description": "Reads", "prompt": "Write"}
        },
        "mcp_servers": {
            "sqlite": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-sqlite"]},
            "remote-api": {"type": "sse", "url": "https://api.example.com/mcp/sse",
                           "headers": {"Authorization": "Bearer t"}},
            "web": {"type": "http", "url": "https://api.example.com/mcp"},
            "local": {"type": "stdio", "command": "node", "env": {"A": "1"}}
        }
    }"#,
    )
    .expect("valid");
    assert_eq!(config.max_turns, Some(20));
    let servers = config.mcp_servers.expect("servers");
    assert!(matches!(servers["sqlite"], McpServer::Stdio { .. }));
    assert!(matches!(servers["remote-api"], McpServer::Sse { .. }));
    assert!(matches!(servers["web"], McpServer::Http { .. }));
}

#[test]
fn mcp_servers_serialize_in_the_sdk_shape() {
    let config = parse(r#"{"mcp_servers":{"s":{"command":"npx","args":["x"]}}}"#).expect("valid");
    let json = serde_json::to_value(&config).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({"mcp_servers":{"s":{"type":"stdio","command":"npx","args":["x"]}}})
    );
}

#[test]
fn an_empty_object_is_the_default() {
    assert_eq!(parse("{}").expect("valid"), SandstormConfig::default());
}

#[test]
fn wrong_types_name_the_field_and_the_expected_type() {
    let (field, message) = field_of(r#"{"max_turns": "20"}"#);
    assert_eq!(field, "max_turns");
    assert!(message.contains("expected a JSON number"), "{message}");
    let (field, message) = field_of(r#"{"system_prompt": 3}"#);
    assert_eq!(field, "system_prompt");
    assert!(message.contains("expected a string"), "{message}");
    let (field, _) = field_of(r#"{"agents": {"a": {"description": "d", "prompt": 1}}}"#);
    assert_eq!(field, "agents.a.prompt");
}

#[test]
fn a_boolean_is_not_a_number() {
    let (field, _) = field_of(r#"{"max_turns": true}"#);
    assert_eq!(field, "max_turns");
}

#[test]
fn unknown_fields_are_errors_not_silently_dropped() {
    let (field, message) = field_of(r#"{"system_promt": "typo"}"#);
    assert_eq!(field, "system_promt");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn agents_need_a_description_and_a_prompt() {
    let (field, message) = field_of(r#"{"agents": {"a": {"prompt": "p"}}}"#);
    assert_eq!(field, "agents.a.description");
    assert!(message.contains("missing field"), "{message}");
}

#[test]
fn mcp_servers_are_checked_by_type() {
    let (field, message) = field_of(r#"{"mcp_servers": {"s": {"type": "sse"}}}"#);
    assert_eq!(field, "mcp_servers.s.url", "{message}");
    let (field, message) = field_of(r#"{"mcp_servers": {"s": {"type": "grpc", "url": "x"}}}"#);
    assert_eq!(field, "mcp_servers.s");
    assert!(
        message.contains("\"stdio\", \"http\" or \"sse\""),
        "{message}"
    );
    let (field, _) = field_of(r#"{"mcp_servers": {"s": {"type": "http", "url": "ftp://x"}}}"#);
    assert_eq!(field, "mcp_servers.s.url");
    let (field, _) = field_of(r#"{"mcp_servers": {"s": {"command": ""}}}"#);
    assert_eq!(field, "mcp_servers.s.command");
}

#[test]
fn output_format_must_be_a_json_schema() {
    let (field, _) = field_of(r#"{"output_format": {"type": "xml", "schema": {}}}"#);
    assert_eq!(field, "output_format.type");
    let (field, _) = field_of(r#"{"output_format": {"type": "json_schema"}}"#);
    assert_eq!(field, "output_format.schema");
}

#[test]
fn not_an_object_or_not_json_is_a_syntax_error() {
    assert!(matches!(parse("[1]"), Err(ConfigError::Syntax { .. })));
    assert!(matches!(parse("{"), Err(ConfigError::Syntax { .. })));
}

#[test]
fn a_missing_default_file_is_fine_a_missing_explicit_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        SandstormConfig::load(None, dir.path()).expect("absent is fine"),
        SandstormConfig::default()
    );
    let missing = dir.path().join("custom.json");
    assert!(matches!(
        SandstormConfig::load(Some(&missing), dir.path()),
        Err(ConfigError::Unreadable { .. })
    ));
    std::fs::write(dir.path().join(FILE_NAME), r#"{"model":"opus"}"#).expect("write");
    let loaded = SandstormConfig::load(None, dir.path()).expect("reads");
    assert_eq!(loaded.model.as_deref(), Some("opus"));
}

#[test]
fn limits_and_network_parse() {
    let config = parse(
        r#"{
        "limits": {"memory_mb": 2048, "processes": 512, "disk_mb": 2048, "cpu_seconds": 14400},
        "network": {"allow": ["pypi.org", "*.github.com"]}
    }"#,
    )
    .expect("valid");
    assert_eq!(
        config.limits,
        Some(LimitsConfig {
            memory_mb: Some(2048),
            processes: Some(512),
            disk_mb: Some(2048),
            cpu_seconds: Some(14400),
        })
    );
    let allow = config.network.and_then(|n| n.allow).expect("allow");
    assert_eq!(allow, ["pypi.org", "*.github.com"]);
    // Every field is optional, and null is absent.
    let config = parse(r#"{"limits": {"memory_mb": null}, "network": {}}"#).expect("valid");
    assert_eq!(config.limits, Some(LimitsConfig::default()));
    assert_eq!(config.network, Some(NetworkConfig::default()));
}

#[test]
fn every_limit_out_of_range_names_its_field_and_range() {
    for (json, field, range) in [
        (
            r#"{"limits": {"memory_mb": 32}}"#,
            "limits.memory_mb",
            "between 64 and 1048576",
        ),
        (
            r#"{"limits": {"memory_mb": 1048577}}"#,
            "limits.memory_mb",
            "between 64 and 1048576",
        ),
        (
            r#"{"limits": {"processes": 0}}"#,
            "limits.processes",
            "between 16 and 65536",
        ),
        (
            r#"{"limits": {"disk_mb": 2000000}}"#,
            "limits.disk_mb",
            "between 64 and 1048576",
        ),
        (
            r#"{"limits": {"cpu_seconds": 1}}"#,
            "limits.cpu_seconds",
            "between 10 and 604800",
        ),
    ] {
        let (got, message) = field_of(json);
        assert_eq!(got, field, "{json}");
        assert_eq!(message, format!("must be {range}"), "{json}");
    }
    let error = parse(r#"{"limits": {"memory_mb": 32}}"#).expect_err("refused");
    assert_eq!(
        error.to_string(),
        "sandstorm.json: field `limits.memory_mb`: must be between 64 and 1048576"
    );
}

#[test]
fn limits_must_be_whole_numbers() {
    for json in [
        r#"{"limits": {"memory_mb": "2048"}}"#,
        r#"{"limits": {"memory_mb": -1}}"#,
        r#"{"limits": {"memory_mb": 2048.5}}"#,
        r#"{"limits": {"memory_mb": true}}"#,
    ] {
        let (field, _) = field_of(json);
        assert_eq!(field, "limits.memory_mb", "{json}");
    }
    // A whole float is a whole number, as for max_turns.
    let config = parse(r#"{"limits": {"cpu_seconds": 600.0}}"#).expect("valid");
    assert_eq!(config.limits.and_then(|l| l.cpu_seconds), Some(600));
}

#[test]
fn unknown_keys_inside_limits_and_network_are_refused() {
    let (field, message) = field_of(r#"{"limits": {"memory_gb": 2}}"#);
    assert_eq!(field, "limits.memory_gb");
    assert!(message.contains("unknown field"), "{message}");
    let (field, message) = field_of(r#"{"network": {"deny": ["x.com"]}}"#);
    assert_eq!(field, "network.deny");
    assert!(message.contains("unknown field"), "{message}");
    let (field, _) = field_of(r#"{"limits": 2048}"#);
    assert_eq!(field, "limits");
}

#[test]
fn a_bad_allow_entry_is_named_by_its_index() {
    let (field, message) =
        field_of(r#"{"network": {"allow": ["pypi.org", "https://github.com"]}}"#);
    assert_eq!(field, "network.allow[1]");
    assert!(message.contains("scheme"), "{message}");
    let (field, message) = field_of(r#"{"network": {"allow": ["*"]}}"#);
    assert_eq!(field, "network.allow[0]");
    assert!(message.contains("bare *"), "{message}");
    let (field, _) = field_of(r#"{"network": {"allow": ["pypi.org", 3]}}"#);
    assert_eq!(field, "network.allow[1]");
    let (field, _) = field_of(r#"{"network": {"allow": "pypi.org"}}"#);
    assert_eq!(field, "network.allow");
}

#[test]
fn python_sandstorm_s_fields_load() {
    let config = parse(
        r#"{
        "system_prompt": {"type": "preset", "preset": "claude_code", "append": "Be brief."},
        "system_prompt_append": "Cite sources.",
        "allowed_tools": ["Read", "Glob", "mcp__linear__*"],
        "timeout": 600,
        "skills_dir": "skills",
        "template_skills": true,
        "webhook_url": "https://hooks.example.com/done",
        "e2b_webhook_url": "https://sandstorm.example.com",
        "triggers": [{"name": "daily", "type": "cron", "schedule": "0 9 * * *", "prompt": "Go"}],
        "outputs": "auto"
    }"#,
    )
    .expect("valid");
    assert!(matches!(
        config.system_prompt,
        Some(SystemPrompt::Preset(_))
    ));
    assert_eq!(config.timeout, Some(600));
    assert_eq!(config.outputs, Some(crate::outputs::Outputs::Auto));
    assert_eq!(
        config
            .inert_fields()
            .iter()
            .map(|(f, _)| *f)
            .collect::<Vec<_>>(),
        Vec::<&str>::new()
    );
    assert_eq!(
        config.completion_webhook_url(),
        Some("https://hooks.example.com/done")
    );
}

#[test]
fn python_sandstorm_s_lifecycle_address_is_not_a_completion_webhook() {
    // 0.9.2 registered sandstorm.json's webhook_url with E2B, for its
    // lifecycle events, at the server's own /webhooks/e2b.
    for url in [
        "https://my-server.example.com/webhooks/e2b",
        "https://my-server.example.com/webhooks/e2b/",
    ] {
        let config = parse(&format!(r#"{{"webhook_url": "{url}"}}"#)).expect("valid");
        assert_eq!(config.completion_webhook_url(), None, "{url}");
        let inert = config.inert_fields();
        assert_eq!(inert.len(), 1, "{inert:?}");
        assert_eq!(inert[0].0, "webhook_url");
        assert!(inert[0].1.contains("lifecycle"), "{}", inert[0].1);
    }
}

#[test]
fn each_bad_value_of_python_sandstorm_s_fields_names_its_field() {
    for (json, field) in [
        (
            r#"{"system_prompt": {"type": "preset", "preset": "other"}}"#,
            "system_prompt",
        ),
        (r#"{"timeout": 4}"#, "timeout"),
        (r#"{"timeout": 3601}"#, "timeout"),
        (r#"{"allowed_tools": ["Read", " "]}"#, "allowed_tools[1]"),
        (r#"{"allowed_tools": "Read"}"#, "allowed_tools"),
        (r#"{"template_skills": "yes"}"#, "template_skills"),
        (r#"{"webhook_url": "hooks.example.com"}"#, "webhook_url"),
        (
            r#"{"e2b_webhook_url": "ftp://sandstorm.example.com"}"#,
            "e2b_webhook_url",
        ),
        (
            r#"{"triggers": [{"name": "x", "type": "cron", "schedule": "daily", "prompt": "p"}]}"#,
            "triggers[0].schedule",
        ),
        (r#"{"agents": [{"name": "a"}]}"#, "agents"),
        (
            r#"{"agents": {"a": {"description": "d", "prompt": "p", "maxTurns": 0}}}"#,
            "agents.a.maxTurns",
        ),
        (r#"{"model": " "}"#, "model"),
    ] {
        let (got, message) = field_of(json);
        assert_eq!(got, field, "{json}: {message}");
    }
}

#[test]
fn slack_channels_are_refused_saying_so() {
    let (field, message) = field_of(r#"{"channels": {"C123": {"prompt": "x"}}}"#);
    assert_eq!(field, "channels");
    assert!(
        message.contains("Slack") && message.contains("not supported"),
        "{message}"
    );
}

#[test]
fn skills_come_from_skills_dir_or_beside_an_existing_sandstorm_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let skill = dir.path().join(".claude/skills/owasp/SKILL.md");
    std::fs::create_dir_all(skill.parent().expect("parent")).expect("mkdir");
    std::fs::write(&skill, "# OWASP").expect("write");
    // No sandstorm.json: a stray .claude/skills is not anyone's config.
    let config = SandstormConfig::load(None, dir.path()).expect("loads");
    assert!(config.skills.is_empty());
    // With one, the default folder beside it.
    std::fs::write(dir.path().join(FILE_NAME), "{}").expect("write");
    let config = SandstormConfig::load(None, dir.path()).expect("loads");
    assert_eq!(config.skills.keys().collect::<Vec<_>>(), ["owasp"]);
    // A skills_dir that is not there is an error naming it.
    std::fs::write(dir.path().join(FILE_NAME), r#"{"skills_dir": "nope"}"#).expect("write");
    match SandstormConfig::load(None, dir.path()) {
        Err(ConfigError::Field { field, message, .. }) => {
            assert_eq!(field, "skills_dir");
            assert!(message.contains("nope"), "{message}");
        }
        other => panic!("expected a skills_dir error, got {other:?}"),
    }
}

#[test]
fn spending_caps_are_checked() {
    let config = parse(r#"{"max_cost_usd": 2.5, "max_tokens": 1000000}"#).expect("valid");
    assert_eq!(
        (config.max_cost_usd, config.max_tokens),
        (Some(2.5), Some(1_000_000))
    );
    for (json, field) in [
        (r#"{"max_cost_usd": 0}"#, "max_cost_usd"),
        (r#"{"max_cost_usd": -3}"#, "max_cost_usd"),
        (r#"{"max_tokens": 0}"#, "max_tokens"),
        (r#"{"max_tokens": 2.5}"#, "max_tokens"),
    ] {
        assert_eq!(field_of(json).0, field, "{json}");
    }
}
