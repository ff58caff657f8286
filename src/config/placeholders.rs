//! `${VAR}` and `${VAR:-default}` in MCP server configs, as Python
//! Sandstorm 0.9.2 writes them: a server's token stays in the environment
//! (or `.env`), not in sandstorm.json.
//!
//! They are resolved when a run is planned, after the request's
//! `allowed_mcp_servers` has narrowed the servers, so a variable missing
//! for a server the run does not use does not stop it. A missing variable
//! is an error naming it; a value is never part of an error.

use std::collections::{BTreeMap, BTreeSet};

use super::McpServer;

/// One `${...}` in a string.
#[derive(Debug, PartialEq, Eq)]
struct Placeholder<'a> {
    /// Where it starts and ends (after the closing `}`) in the string.
    span: std::ops::Range<usize>,
    /// The variable.
    name: &'a str,
    /// The text after `:-`, if any.
    default: Option<&'a str>,
}

/// The placeholders of `text`, in order. A `$` that does not start a
/// well-formed `${NAME}` or `${NAME:-default}` is plain text.
fn placeholders(text: &str) -> Vec<Placeholder<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("${").map(|i| from + i) {
        let body_start = at + 2;
        let Some(end) = text[body_start..].find('}').map(|i| body_start + i) else {
            break;
        };
        let body = &text[body_start..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if is_variable_name(name) {
            found.push(Placeholder {
                span: at..end + 1,
                name,
                default,
            });
            from = end + 1;
        } else {
            from = body_start;
        }
    }
    found
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every variable the servers' strings name.
pub(crate) fn variables<'a>(servers: impl IntoIterator<Item = &'a McpServer>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for server in servers {
        for text in strings(server) {
            names.extend(placeholders(text).into_iter().map(|p| p.name.to_owned()));
        }
    }
    names
}

/// `text` with its placeholders filled from `lookup`, and the values that
/// came from it. The error is the variable that is set nowhere and has no
/// default.
pub(crate) fn fill_text(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut values = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for placeholder in placeholders(text) {
        out.push_str(&text[last..placeholder.span.start]);
        match (lookup(placeholder.name), placeholder.default) {
            (Some(value), _) => {
                out.push_str(&value);
                values.push(value);
            }
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(placeholder.name.to_owned()),
        }
        last = placeholder.span.end;
    }
    out.push_str(&text[last..]);
    Ok((out, values))
}

/// `text` with its placeholders filled from `lookup`; the error is the
/// variable that is set nowhere and has no default.
pub(crate) fn fill(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    fill_text(text, lookup).map(|(filled, _)| filled)
}

/// Each string of a server.
fn strings(server: &McpServer) -> Vec<&String> {
    match server {
        McpServer::Stdio { command, args, env } => std::iter::once(command)
            .chain(args)
            .chain(env.values())
            .collect(),
        McpServer::Http { url, headers } | McpServer::Sse { url, headers } => {
            std::iter::once(url).chain(headers.values()).collect()
        }
    }
}

/// A server with its placeholders filled.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The server, as the SDK gets it.
    pub server: McpServer,
    /// The values that came from the environment, to scrub from events:
    /// they are often tokens.
    pub values: Vec<String>,
}

/// Fills `server`'s placeholders from `lookup`. The error names the field
/// and the variable, never a value.
pub(crate) fn resolve(
    name: &str,
    server: &McpServer,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, String> {
    let mut values = Vec::new();
    let mut fill = |field: &str, text: &str| -> Result<String, String> {
        let (filled, from_env) = fill_text(text, &lookup).map_err(|variable| {
            format!(
                "mcp_servers.{name}.{field} needs the environment variable {variable}, which is \
                 not set (set it, or give a default as ${{{variable}:-default}})"
            )
        })?;
        values.extend(from_env);
        Ok(filled)
    };
    let map = |field: &str,
               values: &BTreeMap<String, String>,
               fill: &mut dyn FnMut(&str, &str) -> Result<String, String>|
     -> Result<BTreeMap<String, String>, String> {
        values
            .iter()
            .map(|(key, value)| Ok((key.clone(), fill(&format!("{field}.{key}"), value)?)))
            .collect()
    };
    let server = match server {
        McpServer::Stdio { command, args, env } => McpServer::Stdio {
            command: fill("command", command)?,
            args: args
                .iter()
                .enumerate()
                .map(|(i, arg)| fill(&format!("args[{i}]"), arg))
                .collect::<Result<_, _>>()?,
            env: map("env", env, &mut fill)?,
        },
        McpServer::Http { url, headers } => McpServer::Http {
            url: fill("url", url)?,
            headers: map("headers", headers, &mut fill)?,
        },
        McpServer::Sse { url, headers } => McpServer::Sse {
            url: fill("url", url)?,
            headers: map("headers", headers, &mut fill)?,
        },
    };
    Ok(Resolved { server, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio(command: &str, args: &[&str], env: &[(&str, &str)]) -> McpServer {
        McpServer::Stdio {
            command: command.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn lookup(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret-value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn every_string_is_filled_and_defaults_apply_only_when_unset() {
        let server = stdio(
            "${BIN:-npx}",
            &["--token=${TOKEN}", "$HOME", "${not a var}", "${EMPTY:-x}"],
            &[("API_KEY", "${TOKEN}"), ("PLAIN", "as is $ {TOKEN}")],
        );
        let resolved = resolve("linear", &server, lookup).expect("resolves");
        assert_eq!(
            resolved.server,
            stdio(
                "npx",
                &["--token=s3cret-value", "$HOME", "${not a var}", ""],
                &[("API_KEY", "s3cret-value"), ("PLAIN", "as is $ {TOKEN}")],
            )
        );
        assert_eq!(resolved.values, ["s3cret-value", "", "s3cret-value"]);

        let http = McpServer::Http {
            url: "https://${HOST:-mcp.example.com}/mcp".into(),
            headers: [("Authorization".into(), "Bearer ${TOKEN}".into())].into(),
        };
        let resolved = resolve("web", &http, lookup).expect("resolves");
        assert_eq!(
            resolved.server,
            McpServer::Http {
                url: "https://mcp.example.com/mcp".into(),
                headers: [("Authorization".into(), "Bearer s3cret-value".into())].into(),
            }
        );
    }

    #[test]
    fn a_missing_variable_is_named_with_its_field_and_no_value() {
        let server = stdio("npx", &[], &[("A", "${TOKEN}"), ("B", "${LINEAR_API_KEY}")]);
        let error = resolve("linear", &server, lookup).expect_err("missing");
        assert!(error.contains("mcp_servers.linear.env.B"), "{error}");
        assert!(error.contains("LINEAR_API_KEY"), "{error}");
        assert!(!error.contains("s3cret-value"), "{error}");
    }

    #[test]
    fn variables_lists_each_name_once() {
        let servers = [
            stdio("${A}", &["${B:-1}", "${A}"], &[]),
            McpServer::Sse {
                url: "https://${C}".into(),
                headers: BTreeMap::new(),
            },
        ];
        assert_eq!(
            variables(&servers).into_iter().collect::<Vec<_>>(),
            ["A", "B", "C"]
        );
    }
}
