//! The registry, the environment rewrite and URL joining; the endpoint
//! itself is exercised over a real socket in `egress/tests.rs`.

use super::sigv4::AwsSigner;
use super::*;

const ENDPOINT: &str = "http://127.0.0.1:3128";

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn routes() -> ModelRoutes {
    ModelRoutes::new().expect("the client builds")
}

#[test]
fn an_api_key_becomes_a_placeholder() {
    let routes = routes();
    let mut envs = env(&[("ANTHROPIC_API_KEY", "sk-ant-real"), ("OTHER", "kept")]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("a valid base URL")
        .expect("keyless");
    let token = guard.token().to_owned();
    assert!(token.starts_with("sk-ant-sandstorm-placeholder-"));
    assert_eq!(token.len(), "sk-ant-sandstorm-placeholder-".len() + 32);
    assert_eq!(
        envs,
        env(&[
            ("ANTHROPIC_API_KEY", &token),
            ("ANTHROPIC_BASE_URL", ENDPOINT),
            ("OTHER", "kept"),
        ])
    );
    let route = routes.get(&token).expect("registered");
    assert_eq!(route.auth, ModelAuth::ApiKey(Secret::new("sk-ant-real")));
    assert_eq!(route.base_url.as_str(), "https://api.anthropic.com/");
}

/// What key resolution leaves for OpenRouter: a custom base URL, a token,
/// and an emptied API key that must stay empty.
#[test]
fn a_bearer_token_wins_and_an_empty_key_stays_empty() {
    let routes = routes();
    let mut envs = env(&[
        ("ANTHROPIC_API_KEY", ""),
        ("ANTHROPIC_AUTH_TOKEN", "sk-or-real"),
        ("ANTHROPIC_BASE_URL", "https://openrouter.ai/api"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("a valid base URL")
        .expect("keyless");
    assert_eq!(
        envs,
        env(&[
            ("ANTHROPIC_API_KEY", ""),
            ("ANTHROPIC_AUTH_TOKEN", guard.token()),
            ("ANTHROPIC_BASE_URL", ENDPOINT),
        ])
    );
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(route.auth, ModelAuth::Bearer(Secret::new("sk-or-real")));
    assert_eq!(route.base_url.as_str(), "https://openrouter.ai/api");
}

#[test]
fn both_keys_set_means_bearer_upstream_and_placeholders_in_both() {
    let routes = routes();
    let mut envs = env(&[
        ("ANTHROPIC_API_KEY", "sk-ant-real"),
        ("ANTHROPIC_AUTH_TOKEN", "tok-real"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("a valid base URL")
        .expect("keyless");
    assert_eq!(envs["ANTHROPIC_API_KEY"], guard.token());
    assert_eq!(envs["ANTHROPIC_AUTH_TOKEN"], guard.token());
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(route.auth, ModelAuth::Bearer(Secret::new("tok-real")));
}

#[test]
fn no_key_or_a_bad_base_url_leaves_the_environment_alone() {
    let routes = routes();
    for pairs in [
        &[("OTHER", "x")][..],
        &[("ANTHROPIC_API_KEY", ""), ("ANTHROPIC_AUTH_TOKEN", "")],
        &[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", "us-east-1"),
        ],
    ] {
        let mut envs = env(pairs);
        assert!(
            keyless(&mut envs, &routes, ENDPOINT, None)
                .expect("no error")
                .is_none(),
            "{pairs:?}"
        );
        assert_eq!(envs, env(pairs));
    }
    for bad in ["not a url", "ftp://example.test/"] {
        let mut envs = env(&[
            ("ANTHROPIC_API_KEY", "sk-ant-real"),
            ("ANTHROPIC_BASE_URL", bad),
        ]);
        let err = keyless(&mut envs, &routes, ENDPOINT, None).expect_err(bad);
        assert!(
            err.contains("ANTHROPIC_BASE_URL") && !err.contains(bad),
            "{err}"
        );
    }
    assert_eq!(crate::sync::lock(&routes.inner.routes).len(), 0);
}

#[test]
fn a_route_lives_as_long_as_its_guard() {
    let routes = routes();
    let route = ModelRoute {
        base_url: Url::parse("https://api.anthropic.com").expect("url"),
        auth: ModelAuth::ApiKey(Secret::new("k")),
        spend: None,
    };
    let first = routes.register(route.clone());
    let second = routes.clone().register(route);
    assert_ne!(first.token(), second.token());
    let token = first.token().to_owned();
    assert!(routes.get(&token).is_some());
    drop(first);
    assert!(routes.get(&token).is_none());
    assert!(routes.get(second.token()).is_some());
}

#[test]
fn debug_output_holds_no_secret() {
    let route = ModelRoute {
        base_url: Url::parse("https://user:hunter2@proxy.test/api?key=sk-in-query").expect("url"),
        auth: ModelAuth::Bearer(Secret::new("sk-ant-very-secret")),
        spend: None,
    };
    let routes = routes();
    let guard = routes.register(route.clone());
    let shown = format!("{route:?} {routes:?} {guard:?}");
    for secret in [
        "sk-ant-very-secret",
        "hunter2",
        "sk-in-query",
        guard.token(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("https://proxy.test/api"), "{shown}");
}

#[test]
fn request_paths_join_the_base_path() {
    let join = |base: &str, path: &str| {
        upstream_url(&Url::parse(base).expect("url"), path).map(|u| u.to_string())
    };
    let cases = [
        (
            "https://api.anthropic.com",
            "/v1/messages",
            Some("https://api.anthropic.com/v1/messages"),
        ),
        (
            "https://openrouter.ai/api",
            "/v1/messages?beta=true",
            Some("https://openrouter.ai/api/v1/messages?beta=true"),
        ),
        (
            "https://openrouter.ai/api/",
            "/v1/models",
            Some("https://openrouter.ai/api/v1/models"),
        ),
        (
            "http://127.0.0.1:9/x/y?drop=me#frag",
            "/v1/messages",
            Some("http://127.0.0.1:9/x/y/v1/messages"),
        ),
        ("https://openrouter.ai/api", "/../other", None),
        ("https://openrouter.ai/api", "/v1/%2E%2e/x", None),
        ("https://openrouter.ai/api", "/v1/./x", None),
        ("https://openrouter.ai/api", "/v1\\..\\x", None),
        (
            "https://openrouter.ai/api",
            "/v1/..x/",
            Some("https://openrouter.ai/api/v1/..x/"),
        ),
    ];
    for (base, path, expected) in cases {
        assert_eq!(join(base, path).as_deref(), expected, "{base} + {path}");
    }
}

#[test]
fn tokens_come_from_either_header() {
    let mut headers = HeaderMap::new();
    assert_eq!(tokens(&headers).count(), 0);
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer  tok-b "),
    );
    assert_eq!(tokens(&headers).collect::<Vec<_>>(), ["tok-b"]);
    headers.insert(X_API_KEY, HeaderValue::from_static("tok-a"));
    assert_eq!(tokens(&headers).collect::<Vec<_>>(), ["tok-a", "tok-b"]);
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcg=="),
    );
    assert_eq!(tokens(&headers).collect::<Vec<_>>(), ["tok-a"]);
}

/// A throwaway service account (a fresh RSA key, nobody's), as a key file.
fn service_account(token_uri: &str) -> String {
    use aws_lc_rs::encoding::AsDer;
    use base64::Engine;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("key");
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).expect("pkcs8");
    let base64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let body: Vec<&str> = base64
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("ascii"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        body.join("\n")
    );
    serde_json::json!({
        "type": "service_account",
        "project_id": "sandstorm-test",
        "private_key_id": "test",
        "private_key": pem,
        "client_email": "runner@sandstorm-test.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The sandbox's base URL for a route: the endpoint with the token in
/// its path.
fn in_path(guard: &RouteGuard) -> String {
    format!("{ENDPOINT}/sandstorm/{}", guard.token())
}

#[test]
fn bedrock_keys_stay_out_and_the_cli_skips_its_own_auth() {
    let routes = routes();
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_BEDROCK", "1"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-real"),
        ("AWS_SESSION_TOKEN", "aws-session-real"),
        // Claude Code uses Bedrock when it is on: the Anthropic key and
        // the other clouds' keys have no business inside either.
        ("ANTHROPIC_API_KEY", "sk-ant-real"),
        ("AZURE_API_KEY", "azure-real"),
        ("OTHER", "kept"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    assert_eq!(
        envs,
        env(&[
            ("ANTHROPIC_BEDROCK_BASE_URL", &in_path(&guard)),
            ("AWS_REGION", "eu-west-1"),
            ("CLAUDE_CODE_SKIP_BEDROCK_AUTH", "1"),
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("OTHER", "kept"),
        ])
    );
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(
        route.base_url.as_str(),
        "https://bedrock-runtime.eu-west-1.amazonaws.com/"
    );
    assert_eq!(
        route.auth,
        ModelAuth::Bedrock(AwsSigner {
            region: "eu-west-1".to_owned(),
            access_key_id: Secret::new("AKIAREAL"),
            secret_access_key: Secret::new("aws-secret-real"),
            session_token: Some(Secret::new("aws-session-real")),
        })
    );
}

#[test]
fn bedrock_takes_the_operators_base_url_a_bearer_key_and_the_default_region() {
    let routes = routes();
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_BEDROCK", "true"),
        ("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-real"),
        (
            "ANTHROPIC_BEDROCK_BASE_URL",
            "https://vpce-1.bedrock.example.test/x",
        ),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    assert_eq!(envs["ANTHROPIC_BEDROCK_BASE_URL"], in_path(&guard));
    assert!(!envs.contains_key("AWS_BEARER_TOKEN_BEDROCK"));
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(
        route.base_url.as_str(),
        "https://vpce-1.bedrock.example.test/x"
    );
    assert_eq!(
        route.auth,
        ModelAuth::Bearer(Secret::new("bedrock-api-key-real"))
    );

    // No region: the CLI's own default, which the signature must name too.
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_BEDROCK", "1"),
        ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-real"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(
        route.base_url.as_str(),
        "https://bedrock-runtime.us-east-1.amazonaws.com/"
    );
    assert!(matches!(&route.auth, ModelAuth::Bedrock(s) if s.region == "us-east-1"));
}

#[test]
fn a_region_that_is_not_one_is_refused_before_it_names_a_host() {
    let routes = routes();
    for region in ["evil.example.test/", "us-east-1.attacker", "US-EAST-1", ""] {
        let mut envs = env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_REGION", region),
            ("AWS_DEFAULT_REGION", region),
            ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-real"),
        ]);
        let before = envs.clone();
        match keyless(&mut envs, &routes, ENDPOINT, None) {
            // Empty is unset: the default region.
            Ok(Some(_)) if region.is_empty() => {}
            Err(e) => {
                assert!(e.contains("AWS_REGION") && !e.contains("aws-secret"), "{e}");
                assert_eq!(envs, before);
            }
            other => panic!("{region:?}: {other:?}"),
        }
    }
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "x.evil.test#"),
        (
            crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE,
            &service_account("https://oauth2.googleapis.com/token"),
        ),
    ]);
    let e = keyless(&mut envs, &routes, ENDPOINT, None).expect_err("bad region");
    assert!(e.contains("CLOUD_ML_REGION"), "{e}");
    assert!(!envs.contains_key(crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE));
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_FOUNDRY", "1"),
        ("AZURE_API_KEY", "azure-real"),
        ("AZURE_FOUNDRY_RESOURCE", "evil.test/#"),
    ]);
    let e = keyless(&mut envs, &routes, ENDPOINT, None).expect_err("bad resource");
    assert!(e.contains("ANTHROPIC_FOUNDRY_RESOURCE"), "{e}");
    assert_eq!(crate::sync::lock(&routes.inner.routes).len(), 0);
}

#[test]
fn foundry_keys_and_resource_stay_out_under_either_name() {
    let routes = routes();
    for (key, resource) in [
        ("ANTHROPIC_FOUNDRY_API_KEY", "ANTHROPIC_FOUNDRY_RESOURCE"),
        ("AZURE_API_KEY", "AZURE_FOUNDRY_RESOURCE"),
    ] {
        let mut envs = env(&[
            ("CLAUDE_CODE_USE_FOUNDRY", "1"),
            (key, "foundry-key-real"),
            (resource, "my-resource"),
            ("ANTHROPIC_DEFAULT_SONNET_MODEL", "claude-sonnet"),
        ]);
        let guard = keyless(&mut envs, &routes, ENDPOINT, None)
            .expect("valid")
            .expect("keyless");
        // The CLI refuses a resource beside a base URL: the resource stays
        // on the host, where it names the upstream.
        assert_eq!(
            envs,
            env(&[
                ("ANTHROPIC_DEFAULT_SONNET_MODEL", "claude-sonnet"),
                ("ANTHROPIC_FOUNDRY_BASE_URL", &in_path(&guard)),
                ("CLAUDE_CODE_SKIP_FOUNDRY_AUTH", "1"),
                ("CLAUDE_CODE_USE_FOUNDRY", "1"),
            ]),
            "{key}"
        );
        let route = routes.get(guard.token()).expect("registered");
        assert_eq!(
            route.base_url.as_str(),
            "https://my-resource.services.ai.azure.com/anthropic"
        );
        assert_eq!(
            route.auth,
            ModelAuth::ApiKey(Secret::new("foundry-key-real"))
        );
    }
}

#[test]
fn vertex_gets_no_key_file_and_shares_one_token_source_per_account() {
    let routes = routes();
    let account = service_account("https://oauth2.googleapis.com/token");
    let envs_for = |region: &str| {
        env(&[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", region),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "sandstorm-test"),
            (crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE, &account),
            // A file path from an older plan: nothing to point at inside.
            ("GOOGLE_APPLICATION_CREDENTIALS", "/home/user/sa.json"),
        ])
    };
    let mut envs = envs_for("us-east5");
    let first = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    assert_eq!(
        envs,
        env(&[
            ("ANTHROPIC_VERTEX_BASE_URL", &in_path(&first)),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "sandstorm-test"),
            ("CLAUDE_CODE_SKIP_VERTEX_AUTH", "1"),
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
        ])
    );
    let route = routes.get(first.token()).expect("registered");
    assert_eq!(
        route.base_url.as_str(),
        "https://us-east5-aiplatform.googleapis.com/v1"
    );
    for (region, base) in [
        ("global", "https://aiplatform.googleapis.com/v1"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com/v1"),
    ] {
        let mut envs = envs_for(region);
        let guard = keyless(&mut envs, &routes, ENDPOINT, None)
            .expect("valid")
            .expect("keyless");
        let other = routes.get(guard.token()).expect("registered");
        assert_eq!(other.base_url.as_str(), base);
        assert_eq!(other.auth, route.auth, "one account, one token source");
    }
    let shown = format!("{route:?}");
    assert!(
        !shown.contains("PRIVATE KEY") && !shown.contains("runner@"),
        "{shown}"
    );
}

#[test]
fn vertex_without_the_key_files_contents_is_left_to_the_cli() {
    // What an E2B emulator's local sandbox gets: the file was uploaded.
    let routes = routes();
    let pairs = [
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "us-east5"),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            "/home/user/.config/gcloud/sa.json",
        ),
    ];
    let mut envs = env(&pairs);
    assert!(
        keyless(&mut envs, &routes, ENDPOINT, None)
            .expect("valid")
            .is_none()
    );
    assert_eq!(envs, env(&pairs));
}

#[test]
fn a_key_file_that_is_not_one_is_refused_without_quoting_it() {
    let routes = routes();
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "us-east5"),
        (
            crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE,
            r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nnot-base64-secret\n", "client_email": 7}"#,
        ),
    ]);
    let e = keyless(&mut envs, &routes, ENDPOINT, None).expect_err("not a key file");
    assert!(
        e.contains("failed to deserialize ApplicationCredentials") && !e.contains("not-base64"),
        "{e}"
    );
    assert!(!envs.contains_key(crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE));
    // A key file whose key is not one.
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLOUD_ML_REGION", "us-east5"),
        (
            crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE,
            r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LXNlY3JldA==\n-----END PRIVATE KEY-----\n",
                "client_email": "a@b", "token_uri": "https://t"}"#,
        ),
    ]);
    let e = keyless(&mut envs, &routes, ENDPOINT, None).expect_err("not a key");
    assert!(
        e.contains("cannot be used: ") && !e.contains("bm90LWEt"),
        "{e}"
    );
}

#[test]
fn bedrock_wins_over_foundry_and_vertex_as_in_the_cli() {
    let routes = routes();
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_VERTEX", "1"),
        ("CLAUDE_CODE_USE_FOUNDRY", "1"),
        ("CLAUDE_CODE_USE_BEDROCK", "1"),
        ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-real"),
        ("ANTHROPIC_FOUNDRY_API_KEY", "foundry-key-real"),
        ("ANTHROPIC_FOUNDRY_RESOURCE", "r1"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    assert!(envs.contains_key("ANTHROPIC_BEDROCK_BASE_URL"));
    assert!(!envs.contains_key("ANTHROPIC_FOUNDRY_API_KEY"));
    let route = routes.get(guard.token()).expect("registered");
    assert!(matches!(route.auth, ModelAuth::Bedrock(_)));
    // A switch that is off is off.
    let mut envs = env(&[
        ("CLAUDE_CODE_USE_BEDROCK", "0"),
        ("CLAUDE_CODE_USE_FOUNDRY", "1"),
        ("ANTHROPIC_FOUNDRY_API_KEY", "foundry-key-real"),
        ("ANTHROPIC_FOUNDRY_BASE_URL", "http://127.0.0.1:9/anthropic"),
    ]);
    let guard = keyless(&mut envs, &routes, ENDPOINT, None)
        .expect("valid")
        .expect("keyless");
    let route = routes.get(guard.token()).expect("registered");
    assert_eq!(route.base_url.as_str(), "http://127.0.0.1:9/anthropic");
    assert_eq!(envs["ANTHROPIC_FOUNDRY_BASE_URL"], in_path(&guard));
}

#[test]
fn a_token_in_the_path_is_taken_out_of_it() {
    let split = |uri: &str| {
        path_token(&uri.parse().expect("uri")).map(|(token, rest)| (token, rest.to_string()))
    };
    assert_eq!(
        split("/sandstorm/tok/model/m%3A0/invoke?x=1"),
        Some(("tok".to_owned(), "/model/m%3A0/invoke?x=1".to_owned()))
    );
    assert_eq!(
        split("/sandstorm/tok?x=1"),
        Some(("tok".to_owned(), "/?x=1".to_owned()))
    );
    assert_eq!(split("/sandstorm/"), Some((String::new(), "/".to_owned())));
    assert_eq!(split("/v1/messages"), None);
    assert_eq!(split("/sandstormtok/v1"), None);
}

#[test]
fn bedrocks_lists_go_to_its_control_plane() {
    let route = |base: &str| ModelRoute {
        base_url: Url::parse(base).expect("url"),
        auth: ModelAuth::ApiKey(Secret::new("k")),
        spend: None,
    };
    let runtime = route("https://bedrock-runtime.us-west-2.amazonaws.com");
    assert_eq!(
        runtime
            .base_for("/inference-profiles?type=SYSTEM_DEFINED")
            .as_str(),
        "https://bedrock.us-west-2.amazonaws.com/"
    );
    assert_eq!(
        runtime.base_for("/model/m/invoke").as_str(),
        "https://bedrock-runtime.us-west-2.amazonaws.com/"
    );
    // An operator's base URL answers everything.
    let own = route("https://vpce.example.test/bedrock");
    assert_eq!(
        own.base_for("/inference-profiles").as_str(),
        "https://vpce.example.test/bedrock"
    );
}

#[test]
fn a_vertex_call_goes_to_the_host_of_its_location() {
    let route = |base: &str| ModelRoute {
        base_url: Url::parse(base).expect("url"),
        auth: ModelAuth::ApiKey(Secret::new("k")),
        spend: None,
    };
    let call = |location: &str| {
        format!("/projects/p/locations/{location}/publishers/anthropic/models/m:streamRawPredict")
    };
    let default = route("https://us-east5-aiplatform.googleapis.com/v1");
    for (location, base) in [
        ("us-east5", "https://us-east5-aiplatform.googleapis.com/v1"),
        (
            "europe-west1",
            "https://europe-west1-aiplatform.googleapis.com/v1",
        ),
        ("global", "https://aiplatform.googleapis.com/v1"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com/v1"),
        // Not a region: the route's own host, never one made of it.
        (
            "evil.test%2F",
            "https://us-east5-aiplatform.googleapis.com/v1",
        ),
        (
            "x.evil.test",
            "https://us-east5-aiplatform.googleapis.com/v1",
        ),
    ] {
        assert_eq!(
            default.base_for(&call(location)).as_str(),
            base,
            "{location}"
        );
    }
    let global = route("https://aiplatform.googleapis.com/v1");
    assert_eq!(
        global.base_for(&call("us-east5")).as_str(),
        "https://us-east5-aiplatform.googleapis.com/v1"
    );
    let own = route("http://127.0.0.1:9/v1");
    assert_eq!(
        own.base_for(&call("europe-west1")).as_str(),
        "http://127.0.0.1:9/v1"
    );
}

#[test]
fn the_split_config_makes_the_same_route_elsewhere() {
    // What the E2B model proxy does with its environment: the route it
    // makes from the split's variables alone is the one the host made.
    let accounts = Accounts::default();
    let account = service_account("https://oauth2.googleapis.com/token");
    let cases = [
        env(&[("ANTHROPIC_API_KEY", "sk-ant-real"), ("OTHER", "x")]),
        env(&[
            ("ANTHROPIC_AUTH_TOKEN", "or-real"),
            ("ANTHROPIC_BASE_URL", "https://openrouter.ai/api"),
        ]),
        env(&[
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIAREAL"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-real"),
            ("AWS_SESSION_TOKEN", "aws-session-real"),
            ("ANTHROPIC_API_KEY", "sk-ant-real"),
        ]),
        env(&[
            ("CLAUDE_CODE_USE_FOUNDRY", "1"),
            ("AZURE_API_KEY", "azure-real"),
            ("AZURE_FOUNDRY_RESOURCE", "my-resource"),
        ]),
        env(&[
            ("CLAUDE_CODE_USE_VERTEX", "1"),
            ("CLOUD_ML_REGION", "us-east5"),
            ("ANTHROPIC_VERTEX_PROJECT_ID", "p"),
            (crate::keys::VERTEX_SERVICE_ACCOUNT_VARIABLE, &account),
        ]),
    ];
    for mut envs in cases {
        let before = envs.clone();
        let split = split(&mut envs, ENDPOINT, &accounts, None)
            .expect("valid")
            .expect("a credential");
        let elsewhere = ModelRoute::from_config(&split.config, &accounts, None)
            .expect("valid")
            .expect("a credential");
        assert_eq!(elsewhere.base_url, split.route.base_url, "{before:?}");
        assert_eq!(elsewhere.auth, split.route.auth, "{before:?}");
        // The config holds what the route is made of, nothing else.
        assert!(!split.config.contains_key("OTHER"));
        assert!(!split.config.contains_key("ANTHROPIC_VERTEX_PROJECT_ID"));
        assert!(split.config.values().all(|v| !v.contains(&split.token)));
        // And the process none of the credentials.
        for secret in [
            "sk-ant-real",
            "or-real",
            "aws-secret-real",
            "AKIAREAL",
            "azure-real",
            &account,
        ] {
            assert!(envs.values().all(|v| v != secret), "{secret} stayed");
        }
    }
}
