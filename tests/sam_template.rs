//! `template.yaml`, checked offline with AWS's own tools from PyPI:
//! `cfn-lint` on the SAM template, then AWS's SAM translator turns it into
//! the CloudFormation `sam deploy` would create, which is linted too and
//! checked for what matters: a streaming Function URL, the Lambda settings,
//! the history table, and a role that can read the one secret and make the
//! history store's calls on its table, and nothing else.

mod common;

use std::process::Command;

use common::doors::ds_schedules;
use common::tools::{CFN_LINT_PIP, manifest_dir, tool};
use serde_json::{Value, json};

const SAM_TRANSLATOR_PIP: &str = "aws-sam-translator==1.115.0";

fn cfn_lint(path: &std::path::Path) {
    let output = Command::new(tool("cfn-lint", CFN_LINT_PIP))
        .arg(path)
        .output()
        .expect("run cfn-lint");
    assert!(
        output.status.success(),
        "cfn-lint {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The SAM template and its CloudFormation, from tests/sam/transform.py.
fn transformed() -> (Value, Value) {
    transformed_at(&manifest_dir().join("template.yaml"))
}

/// The SAM template at `path` and its CloudFormation.
fn transformed_at(path: &std::path::Path) -> (Value, Value) {
    let output = Command::new(tool("python3", SAM_TRANSLATOR_PIP))
        .arg(manifest_dir().join("tests/sam/transform.py"))
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "the SAM transform failed (pip install '{SAM_TRANSLATOR_PIP}' '{CFN_LINT_PIP}'):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let both: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    (both["template"].clone(), both["transformed"].clone())
}

fn of_type<'a>(template: &'a Value, kind: &str) -> Vec<(&'a String, &'a Value)> {
    template["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .collect()
}

#[test]
fn cfn_lint_passes_on_template_yaml() {
    cfn_lint(&manifest_dir().join("template.yaml"));
}

#[test]
fn the_deployed_function_streams_from_a_public_url_and_reads_only_its_secret() {
    let (template, cloudformation) = transformed();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("transformed.json");
    std::fs::write(&path, cloudformation.to_string()).expect("write");
    cfn_lint(&path);

    // Built by cargo lambda (sam build), the bootstrap binary.
    let function = &template["Resources"]["SandstormFunction"];
    assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda");
    assert_eq!(
        function["Metadata"]["BuildProperties"]["Binary"],
        "bootstrap"
    );

    let functions = of_type(&cloudformation, "AWS::Lambda::Function");
    assert_eq!(functions.len(), 1);
    let properties = &functions[0].1["Properties"];
    assert_eq!(properties["Runtime"], "provided.al2023");
    assert_eq!(properties["Handler"], "bootstrap");
    assert_eq!(properties["Architectures"], json!(["arm64"]));
    assert_eq!(properties["Timeout"], 900);
    let variables = &properties["Environment"]["Variables"];
    assert_eq!(
        variables["SANDSTORM_SECRET_ID"],
        json!({"Ref": "SecretArn"})
    );
    assert_eq!(
        variables["SANDSTORM_ALLOW_ANONYMOUS"],
        json!({"Ref": "AllowAnonymous"})
    );
    assert_eq!(
        cloudformation["Parameters"]["AllowAnonymous"]["Default"], "0",
        "anonymous access is off unless the deployer turns it on"
    );

    let urls = of_type(&cloudformation, "AWS::Lambda::Url");
    assert_eq!(urls.len(), 1);
    let (url_id, url) = urls[0];
    assert_eq!(url["Properties"]["InvokeMode"], "RESPONSE_STREAM");
    assert_eq!(url["Properties"]["AuthType"], "NONE");
    assert_eq!(
        cloudformation["Outputs"]["FunctionUrl"]["Value"],
        json!({"Fn::GetAtt": [url_id, "FunctionUrl"]})
    );

    // The role: Lambda's basic logging policy, GetSecretValue on the
    // secret, and kms:Decrypt only when a customer-managed key is named.
    let roles = of_type(&cloudformation, "AWS::IAM::Role");
    assert_eq!(roles.len(), 1);
    let role = &roles[0].1["Properties"];
    assert_eq!(
        role["ManagedPolicyArns"],
        json!(["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"])
    );
    let mut grants = Vec::new();
    for policy in role["Policies"].as_array().expect("policies") {
        let (document, condition) = match policy.get("Fn::If") {
            Some(branches) => (&branches[1]["PolicyDocument"], branches[0].as_str()),
            None => (&policy["PolicyDocument"], None),
        };
        for statement in document["Statement"].as_array().expect("statements") {
            let actions = match &statement["Action"] {
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                Value::String(a) => vec![a.as_str()],
                other => panic!("action {other}"),
            };
            grants.push((actions, statement["Resource"].to_string(), condition));
        }
    }
    assert_eq!(grants.len(), 4, "{grants:?}");
    assert_eq!(grants[0].0, ["secretsmanager:GetSecretValue"]);
    assert!(
        grants[0].1.contains("\"Ref\":\"SecretArn\""),
        "{}",
        grants[0].1
    );
    assert_eq!(grants[0].2, None);
    assert_eq!(grants[1].0, ["kms:Decrypt"]);
    assert!(grants[1].1.contains("SecretKmsKeyArn"), "{}", grants[1].1);
    assert_eq!(grants[1].2, Some("HasKmsKey"));
    // The history: the store's four calls, on its table and its index,
    // and nothing broader.
    assert_eq!(
        grants[2].0,
        [
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:GetItem"
        ]
    );
    assert_eq!(grants[2].1, r#"{"Fn::GetAtt":["HistoryTable","Arn"]}"#);
    assert_eq!(grants[2].2, None);
    assert_eq!(grants[3].0, ["dynamodb:Query"]);
    assert_eq!(
        grants[3].1,
        r#"{"Fn::Sub":"${HistoryTable.Arn}/index/by-owner"}"#
    );
    assert_eq!(grants[3].2, None);
}

#[test]
fn the_history_table_is_the_one_the_store_reads_and_its_records_expire() {
    let (_, cloudformation) = transformed();
    let tables = of_type(&cloudformation, "AWS::DynamoDB::Table");
    assert_eq!(tables.len(), 1);
    let (id, table) = tables[0];
    assert_eq!(id, "HistoryTable");
    // A table of prompts outlives the stack that made it.
    assert_eq!(table["DeletionPolicy"], "Retain");
    assert_eq!(table["UpdateReplacePolicy"], "Retain");
    let properties = &table["Properties"];
    assert_eq!(properties["BillingMode"], "PAY_PER_REQUEST");
    // The keys src/history/dynamodb.rs reads and writes.
    assert_eq!(
        properties["KeySchema"],
        json!([{"AttributeName": "run_id", "KeyType": "HASH"}])
    );
    let indexes = properties["GlobalSecondaryIndexes"]
        .as_array()
        .expect("indexes");
    assert_eq!(indexes.len(), 1);
    assert_eq!(indexes[0]["IndexName"], "by-owner");
    assert_eq!(
        indexes[0]["KeySchema"],
        json!([
            {"AttributeName": "owner", "KeyType": "HASH"},
            {"AttributeName": "created", "KeyType": "RANGE"}
        ])
    );
    assert_eq!(indexes[0]["Projection"], json!({"ProjectionType": "ALL"}));
    for attribute in properties["AttributeDefinitions"]
        .as_array()
        .expect("attributes")
    {
        assert_eq!(attribute["AttributeType"], "S", "{attribute}");
    }
    assert_eq!(
        properties["TimeToLiveSpecification"],
        json!({"AttributeName": "expires_at", "Enabled": true})
    );
    assert_eq!(
        properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"],
        true
    );

    // The function is told the table and the retention.
    let functions = of_type(&cloudformation, "AWS::Lambda::Function");
    let variables = &functions[0].1["Properties"]["Environment"]["Variables"];
    assert_eq!(
        variables["SANDSTORM_HISTORY_TABLE"],
        json!({"Ref": "HistoryTable"})
    );
    assert_eq!(
        variables["SANDSTORM_HISTORY_RETENTION_DAYS"],
        json!({"Ref": "HistoryRetentionDays"})
    );
    assert_eq!(
        cloudformation["Parameters"]["HistoryRetentionDays"]["Default"],
        30
    );
    // Stored events are off unless the stack asks for them.
    assert_eq!(
        variables["SANDSTORM_STORE_EVENTS"],
        json!({"Ref": "StoreEvents"})
    );
    assert_eq!(cloudformation["Parameters"]["StoreEvents"]["Default"], "0");
}

#[test]
fn cargo_lambda_builds_the_bootstrap_with_its_feature() {
    // `sam build` and `cargo lambda build` read this section of Cargo.toml:
    // without it they would build no Lambda door (it needs the feature).
    let cargo_toml = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("read");
    let section = cargo_toml
        .split("[package.metadata.lambda.build]")
        .nth(1)
        .expect("a [package.metadata.lambda.build] section")
        .split("\n[")
        .next()
        .expect("section body");
    assert!(section.contains("features = [\"lambda\"]"), "{section}");
    assert!(section.contains("bin = [\"bootstrap\"]"), "{section}");
}

/// Vercel and a `cargo lambda deploy` get the history's rights from
/// infra/iam-policy-history.json: the same calls as the template's role.
#[test]
fn the_history_policy_for_the_other_doors_grants_what_the_template_grants() {
    let text = std::fs::read_to_string(manifest_dir().join("infra/iam-policy-history.json"))
        .expect("read the policy");
    let policy: Value = serde_json::from_str(&text).expect("JSON");
    let statements = policy["Statement"].as_array().expect("statements");
    assert_eq!(statements.len(), 2, "{policy}");
    assert_eq!(
        statements[0]["Action"],
        json!([
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:GetItem"
        ])
    );
    assert!(
        statements[0]["Resource"]
            .as_str()
            .is_some_and(|r| r.ends_with(":table/TABLE_NAME")),
        "{policy}"
    );
    assert_eq!(statements[1]["Action"], "dynamodb:Query");
    assert!(
        statements[1]["Resource"]
            .as_str()
            .is_some_and(|r| r.ends_with(":table/TABLE_NAME/index/by-owner")),
        "{policy}"
    );
}

/// The repository has no sandstorm.json, so no cron triggers: its template
/// holds the empty block, and `--check` (what CI runs) agrees.
#[test]
fn the_repositorys_template_matches_its_sandstorm_json() {
    let (code, said) = ds_schedules(manifest_dir(), &["--sam", "--check"]);
    assert_eq!(code, 0, "{said}");
    let template = std::fs::read_to_string(manifest_dir().join("template.yaml")).expect("read");
    assert!(template.contains("  # BEGIN ds schedules"), "{template}");
}

/// A sandstorm.json with two cron triggers (one at 09:00 on weekdays in
/// Prague with 90 s of jitter, one every 15 minutes in UTC) and a webhook:
/// `ds schedules --sam` writes two schedules and their role into a copy of
/// template.yaml, which cfn-lint and the SAM translator take, and which
/// invoke the function with what the Lambda door reads.
#[test]
fn schedules_made_from_sandstorm_json_pass_cfn_lint_and_the_sam_translator() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        manifest_dir().join("template.yaml"),
        dir.path().join("template.yaml"),
    )
    .expect("copy the template");
    std::fs::copy(
        manifest_dir().join("tests/fixtures/schedules/sandstorm.json"),
        dir.path().join("sandstorm.json"),
    )
    .expect("copy sandstorm.json");
    let (code, said) = ds_schedules(dir.path(), &["--sam"]);
    assert_eq!(code, 0, "{said}");
    let (code, said) = ds_schedules(dir.path(), &["--sam", "--check"]);
    assert_eq!(code, 0, "{said}");
    let path = dir.path().join("template.yaml");
    cfn_lint(&path);
    let (_, cloudformation) = transformed_at(&path);
    let out = dir.path().join("transformed.json");
    std::fs::write(&out, cloudformation.to_string()).expect("write");
    cfn_lint(&out);

    let resources = &cloudformation["Resources"];
    let schedules = of_type(&cloudformation, "AWS::Scheduler::Schedule");
    assert_eq!(
        schedules.len(),
        2,
        "one per cron trigger, none for the webhook"
    );
    let digest = &resources["SandstormScheduleDailyDigest"]["Properties"];
    assert_eq!(digest["ScheduleExpression"], "cron(0 9 ? * MON-FRI *)");
    assert_eq!(digest["ScheduleExpressionTimezone"], "Europe/Prague");
    assert_eq!(
        digest["FlexibleTimeWindow"],
        json!({"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 2}),
        "90 s of jitter, in whole minutes"
    );
    let heartbeat = &resources["SandstormScheduleHeartbeat"]["Properties"];
    assert_eq!(heartbeat["ScheduleExpression"], "cron(0/15 * * * ? *)");
    assert_eq!(heartbeat["ScheduleExpressionTimezone"], "UTC");
    assert_eq!(heartbeat["FlexibleTimeWindow"], json!({"Mode": "OFF"}));
    for (name, schedule) in [("daily-digest", digest), ("heartbeat", heartbeat)] {
        let target = &schedule["Target"];
        assert_eq!(
            target["Arn"],
            json!({"Fn::GetAtt": ["SandstormFunction", "Arn"]})
        );
        assert_eq!(
            target["RoleArn"],
            json!({"Fn::GetAtt": ["SandstormScheduleRole", "Arn"]})
        );
        let input: Value =
            serde_json::from_str(target["Input"].as_str().expect("an input")).expect("JSON");
        assert_eq!(
            input,
            json!({
                "sandstorm_trigger": name,
                "scheduled_time": "<aws.scheduler.scheduled-time>",
                "execution_id": "<aws.scheduler.execution-id>",
                "attempt": "<aws.scheduler.attempt-number>",
            })
        );
        assert!(target["RetryPolicy"]["MaximumEventAgeInSeconds"].is_u64());
    }

    // The role EventBridge Scheduler assumes: trusted by that service in
    // this account only, and able to invoke the one function, nothing else.
    let role = &resources["SandstormScheduleRole"]["Properties"];
    assert_eq!(
        role["AssumeRolePolicyDocument"]["Statement"],
        json!([{
            "Effect": "Allow",
            "Principal": {"Service": "scheduler.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
        }])
    );
    let policies = role["Policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1);
    assert_eq!(
        policies[0]["PolicyDocument"]["Statement"],
        json!([{
            "Effect": "Allow",
            "Action": "lambda:InvokeFunction",
            "Resource": {"Fn::GetAtt": ["SandstormFunction", "Arn"]}
        }])
    );
    assert!(role.get("ManagedPolicyArns").is_none(), "{role}");
    // The function's own role is untouched beside it.
    assert_eq!(of_type(&cloudformation, "AWS::IAM::Role").len(), 2);

    // A schedule edited by hand: --check fails and names it.
    let template = std::fs::read_to_string(&path).expect("read");
    std::fs::write(
        &path,
        template.replace("cron(0/15 * * * ? *)", "cron(0/5 * * * ? *)"),
    )
    .expect("write");
    let (code, said) = ds_schedules(dir.path(), &["--sam", "--check"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("SandstormScheduleHeartbeat differs")
            && said.contains("cron(0/15 * * * ? *)"),
        "{said}"
    );
}

/// docs/triggers-platforms.md stays true: its `ds schedules` commands
/// parse, and its sandstorm.json example is a valid one with a cron trigger
/// EventBridge can express.
#[test]
fn the_platform_docs_commands_parse_and_their_example_loads() {
    use clap::Parser;
    let text = std::fs::read_to_string(manifest_dir().join("docs/triggers-platforms.md"))
        .expect("docs/triggers-platforms.md");
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match &mut open {
            None => {
                if let Some(lang) = line.strip_prefix("```") {
                    open = Some((lang.to_owned(), String::new()));
                }
            }
            Some((lang, body)) => {
                if line == "```" {
                    blocks.push((std::mem::take(lang), std::mem::take(body)));
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    let mut commands = 0;
    for (_, body) in blocks.iter().filter(|(lang, _)| lang == "bash") {
        for line in body.lines().filter(|l| l.starts_with("ds ")) {
            let words: Vec<String> = shlex::split(line)
                .expect("balanced quotes")
                .into_iter()
                .take_while(|w| !w.starts_with('#'))
                .collect();
            if let Err(e) = sandstorm::cli::Cli::try_parse_from(&words) {
                panic!("{line:?} does not parse: {e}");
            }
            commands += 1;
        }
    }
    assert!(commands >= 5, "only {commands} ds commands");
    let (_, example) = blocks
        .iter()
        .find(|(lang, _)| lang == "json")
        .expect("a sandstorm.json example");
    let config =
        sandstorm::config::SandstormConfig::parse(example.as_bytes(), std::path::Path::new("doc"))
            .expect("a valid sandstorm.json");
    let definitions =
        sandstorm::triggers::definition::parse(config.triggers.as_deref().unwrap_or(&[]))
            .expect("valid triggers");
    assert_eq!(definitions.len(), 1);
    let sandstorm::triggers::Source::Cron { schedule, .. } = &definitions[0].source else {
        panic!("a cron trigger")
    };
    assert_eq!(
        sandstorm::triggers::eventbridge::expression(schedule).as_deref(),
        Ok("cron(0 9 ? * MON-FRI *)")
    );
}
