//! The registry, the environment rewrite and URL joining; the endpoint
//! itself is exercised over a real socket in `egress/tests.rs`.

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
