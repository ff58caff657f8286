//! `moto_server` (PyPI `moto[server]`) on loopback: the AWS services the
//! serverless doors call (Secrets Manager, DynamoDB), with real SDK
//! requests.

use std::time::Duration;

use super::doors::door_command;
use super::process::Process;
use super::tools::{MOTO_PIP, tool};

/// A running `moto_server`, stopped when dropped.
pub struct Moto {
    /// Its base URL, an endpoint for any service.
    pub url: String,
    proc: Process,
}

impl Moto {
    /// What it logged.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

/// `moto_server` on port 0; it prints the address it got
/// (` * Running on http://127.0.0.1:PORT`).
pub async fn start() -> Moto {
    let mut command = door_command(tool("moto_server", MOTO_PIP), None::<(&str, &str)>);
    command.args(["-H", "127.0.0.1", "-p", "0"]);
    let (proc, url) = Process::start("moto_server", command, Duration::from_secs(60), |line| {
        let (_, rest) = line.split_once("Running on ")?;
        rest.split_whitespace().next().map(str::to_owned)
    })
    .await;
    Moto { url, proc }
}

/// The variables that point a door's AWS SDK at `endpoint`, with dummy
/// credentials (moto checks no signature).
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
    ]
}

/// The history table's name in these tests.
#[cfg(feature = "aws-dynamodb")]
pub const HISTORY_TABLE: &str = "sandstorm-runs";

/// The history table in moto, as template.yaml declares it: `run_id` the
/// key, the `by-owner` index on `owner` and `created` with every attribute
/// projected, TTL on `expires_at`.
#[cfg(feature = "aws-dynamodb")]
pub async fn create_history_table(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
    };
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute")
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key")
    };
    client
        .create_table()
        .table_name(HISTORY_TABLE)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("run_id"))
        .attribute_definitions(attribute("owner"))
        .attribute_definitions(attribute("created"))
        .key_schema(key("run_id", KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("by-owner")
                .key_schema(key("owner", KeyType::Hash))
                .key_schema(key("created", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .expect("index"),
        )
        .send()
        .await
        .expect("create the history table in moto");
    client
        .update_time_to_live()
        .table_name(HISTORY_TABLE)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .expect("ttl"),
        )
        .send()
        .await
        .expect("turn TTL on");
    client
}
