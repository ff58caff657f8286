//! `ds add TOOLPACK`: wires a known MCP server into sandstorm.json.
//!
//! The same five toolpacks as the Python 0.9.2 `ds add` (the same public
//! server packages and variable names), without its prompting: secrets stay
//! `${VAR}` placeholders in sandstorm.json, resolved from the environment
//! or `.env` when a run starts, and the variables are listed in
//! `.env.example` for the person to fill in. Nothing here reads or writes a
//! secret's value.

use std::path::Path;

use super::ordered::Ordered;
use super::{Fatal, exit};
use crate::config::FILE_NAME;

/// The file `ds add` (and `ds init`) list a project's variables in.
pub(super) const ENV_EXAMPLE: &str = ".env.example";

/// A bundled MCP server and the variables it needs.
pub(super) struct Toolpack {
    /// What `ds add` is given; also the server's name in `mcp_servers`.
    pub name: &'static str,
    pub description: &'static str,
    /// The variables its `${VAR}` placeholders read.
    pub variables: &'static [&'static str],
    /// Its `mcp_servers` entry, as JSON (parsed in order, see [`Ordered`]).
    pub server: &'static str,
}

/// The bundled toolpacks, in the order `--list` shows them.
pub(super) const TOOLPACKS: &[Toolpack] = &[
    Toolpack {
        name: "linear",
        description: "Linear issues: look up, search and update them.",
        variables: &["LINEAR_API_KEY"],
        // linear-mcp reads LINEAR_ACCESS_TOKEN; the key keeps the name
        // 0.9.2 users already have in their .env.
        server: r#"{"command": "npx", "args": ["-y", "linear-mcp"], "env": {"LINEAR_ACCESS_TOKEN": "${LINEAR_API_KEY}"}}"#,
    },
    Toolpack {
        name: "notion",
        description: "Notion: read and search pages, databases and data sources.",
        variables: &["NOTION_TOKEN"],
        server: r#"{"command": "npx", "args": ["-y", "@notionhq/notion-mcp-server"], "env": {"NOTION_TOKEN": "${NOTION_TOKEN}"}}"#,
    },
    Toolpack {
        name: "firecrawl",
        description: "Firecrawl: scrape and crawl websites, extract structured data.",
        variables: &["FIRECRAWL_API_KEY"],
        server: r#"{"command": "npx", "args": ["-y", "firecrawl-mcp"], "env": {"FIRECRAWL_API_KEY": "${FIRECRAWL_API_KEY}"}}"#,
    },
    Toolpack {
        name: "exa",
        description: "Exa: web search, code search and company research.",
        variables: &["EXA_API_KEY"],
        server: r#"{"command": "npx", "args": ["-y", "exa-mcp-server"], "env": {"EXA_API_KEY": "${EXA_API_KEY}"}}"#,
    },
    Toolpack {
        name: "github",
        description: "GitHub: search repositories, code, issues and pull requests.",
        variables: &["GITHUB_TOKEN"],
        server: r#"{"command": "npx", "args": ["-y", "@fre4x/github"], "env": {"GITHUB_TOKEN": "${GITHUB_TOKEN}"}}"#,
    },
];

impl Toolpack {
    /// Its `mcp_servers` entry.
    fn server(&self) -> Ordered {
        // The texts above are constants checked by a test.
        serde_json::from_str(self.server).unwrap_or(Ordered::Null)
    }

    /// The `allowed_tools` pattern that lets the agent use every tool of it.
    fn tool_pattern(&self) -> String {
        format!("mcp__{}__*", self.name)
    }
}

/// Whether a toolpack is in a project's sandstorm.json, for `--list`.
fn status(config: Option<&Ordered>, toolpack: &Toolpack) -> &'static str {
    let Some(config) = config else {
        return "not installed (no sandstorm.json here)";
    };
    match config
        .get("mcp_servers")
        .and_then(|servers| servers.get(toolpack.name))
    {
        None => "not installed",
        Some(server) if *server == toolpack.server() => "installed",
        Some(_) => "customized (ds add --force replaces it)",
    }
}

/// `ds add --list`.
pub(super) fn list(cwd: &Path) -> u8 {
    // A broken file only loses the status column; say why once, at the end.
    let (config, problem) = match read_config(cwd) {
        Ok(config) => (config, None),
        Err(fatal) => (None, Some(fatal.message)),
    };
    println!("Toolpacks (ds add NAME):\n");
    for toolpack in TOOLPACKS {
        println!("  {:<10} {}", toolpack.name, toolpack.description);
        println!("  {:<10} needs {}", "", toolpack.variables.join(", "));
        println!("  {:<10} {}", "", status(config.as_ref(), toolpack));
    }
    if let Some(problem) = problem {
        eprintln!("note: no status shown: {problem}");
    }
    exit::OK
}

/// `ds add NAME [--force]` in `cwd`.
pub(super) fn add(cwd: &Path, name: &str, force: bool) -> Result<u8, Fatal> {
    let toolpack = find(name)?;
    let path = cwd.join(FILE_NAME);
    let existed = path.exists();
    let mut config = read_config(cwd)?.unwrap_or(Ordered::Object(Vec::new()));
    let changed = install(&mut config, toolpack, force)?;
    if changed {
        std::fs::write(&path, config.to_pretty())
            .map_err(|e| Fatal::usage(format!("cannot write {}: {e}", path.display())))?;
        let verb = if existed { "updated" } else { "created" };
        println!(
            "{} {FILE_NAME}: mcp_servers.{} runs `{}`",
            capitalised(verb),
            toolpack.name,
            command_line(&toolpack.server())
        );
    } else {
        println!(
            "{} is already in {FILE_NAME}; nothing changed",
            toolpack.name
        );
    }
    let what = format!("the {} toolpack (ds add {})", toolpack.name, toolpack.name);
    let added = append_env_example(cwd, &what, toolpack.variables)?;
    if !added.is_empty() {
        println!("added {} to {ENV_EXAMPLE}", added.join(", "));
    }
    println!(
        "set {} in the environment or .env before a run (`ds doctor` checks your setup)",
        toolpack.variables.join(", ")
    );
    Ok(exit::OK)
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `npx -y linear-mcp`, from a stdio server's entry.
fn command_line(server: &Ordered) -> String {
    let mut words: Vec<&str> = server
        .get("command")
        .and_then(Ordered::as_str)
        .into_iter()
        .collect();
    if let Some(Ordered::Array(args)) = server.get("args") {
        words.extend(args.iter().filter_map(Ordered::as_str));
    }
    words.join(" ")
}

fn find(name: &str) -> Result<&'static Toolpack, Fatal> {
    let wanted = name.trim().to_ascii_lowercase();
    TOOLPACKS.iter().find(|t| t.name == wanted).ok_or_else(|| {
        let names: Vec<&str> = TOOLPACKS.iter().map(|t| t.name).collect();
        Fatal::usage(format!(
            "unknown toolpack {name:?}; choose one of: {}",
            names.join(", ")
        ))
    })
}

/// sandstorm.json in `cwd` as written, or `None` when there is none.
fn read_config(cwd: &Path) -> Result<Option<Ordered>, Fatal> {
    let path = cwd.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Fatal::usage(format!("cannot read {}: {e}", path.display())));
        }
    };
    let value: Ordered = serde_json::from_slice(&bytes)
        .map_err(|e| Fatal::usage(format!("{} is not valid JSON: {e}", path.display())))?;
    match value {
        Ordered::Object(_) => Ok(Some(value)),
        other => Err(Fatal::usage(format!(
            "{} must hold a JSON object, not {}",
            path.display(),
            other.kind()
        ))),
    }
}

/// Puts the toolpack's server into `config`; whether anything changed.
fn install(config: &mut Ordered, toolpack: &Toolpack, force: bool) -> Result<bool, Fatal> {
    let wanted = toolpack.server();
    if config.get("mcp_servers").is_none() {
        config.insert("mcp_servers", Ordered::Object(Vec::new()));
    }
    let servers = match config.get_mut("mcp_servers") {
        Some(servers @ Ordered::Object(_)) => servers,
        Some(other) => {
            return Err(Fatal::usage(format!(
                "{FILE_NAME}: field `mcp_servers` must be an object, not {}",
                other.kind()
            )));
        }
        None => return Err(Fatal::usage(format!("{FILE_NAME}: cannot add mcp_servers"))),
    };
    let mut changed = match servers.get(toolpack.name) {
        Some(existing) if *existing == wanted => false,
        Some(_) if !force => {
            return Err(Fatal::usage(format!(
                "{FILE_NAME} already has a different mcp_servers.{name}; keep it, or replace it with `ds add {name} --force`",
                name = toolpack.name
            )));
        }
        _ => {
            servers.insert(toolpack.name, wanted);
            true
        }
    };
    // An allow-list that exists must let the new tools through, or the
    // server runs and the agent may not call it; without one every tool is
    // allowed already, so none is started.
    match config.get_mut("allowed_tools") {
        None => {}
        Some(Ordered::Array(tools)) => {
            let pattern = toolpack.tool_pattern();
            if !tools.iter().any(|t| t.as_str() == Some(&pattern)) {
                tools.push(Ordered::String(pattern));
                changed = true;
            }
        }
        Some(other) => {
            return Err(Fatal::usage(format!(
                "{FILE_NAME}: field `allowed_tools` must be a list of tool names, not {}",
                other.kind()
            )));
        }
    }
    Ok(changed)
}

/// The variable names a `.env`-style text sets or mentions in a
/// commented-out line (`# NAME=`), so that none is listed twice.
fn env_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, _) = line.split_once('=')?;
            let name = name.trim();
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            valid.then(|| name.to_owned())
        })
        .collect()
}

/// Appends `NAME=` lines for the `variables` that `.env.example` in `dir`
/// lacks, under a comment naming `what` needs them; creates the file when
/// absent. The names added.
pub(super) fn append_env_example(
    dir: &Path,
    what: &str,
    variables: &[&str],
) -> Result<Vec<String>, Fatal> {
    let path = dir.join(ENV_EXAMPLE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Fatal::usage(format!("cannot read {}: {e}", path.display())));
        }
    };
    let present = env_names(&text);
    let mut missing: Vec<String> = Vec::new();
    for name in variables {
        if !present.iter().any(|p| p == name) && !missing.iter().any(|m| m == name) {
            missing.push((*name).to_owned());
        }
    }
    if missing.is_empty() {
        return Ok(missing);
    }
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&format!("# For {what}\n"));
    for name in &missing {
        out.push_str(&format!("{name}=\n"));
    }
    std::fs::write(&path, out)
        .map_err(|e| Fatal::usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(missing)
}

/// The variables `${NAME}` and `${NAME:-default}` placeholders in `text`
/// read, in order, each once. Those with a default are optional.
pub(super) fn placeholders(text: &str) -> Vec<(String, bool)> {
    let mut found: Vec<(String, bool)> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        let (name, optional) = match inner.split_once(":-") {
            Some((name, _)) => (name, true),
            None => (inner, false),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid && !found.iter().any(|(n, _)| n == name) {
            found.push((name.to_owned(), optional));
        }
        rest = &after[end + 1..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_toolpack_server_is_valid_json_with_its_variables_as_placeholders() {
        for toolpack in TOOLPACKS {
            let server: Ordered = serde_json::from_str(toolpack.server).expect("a toolpack's JSON");
            let strings = server.strings().join(" ");
            let names: Vec<String> = placeholders(&strings).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, toolpack.variables, "{}", toolpack.name);
        }
    }

    #[test]
    fn placeholders_are_read_with_and_without_defaults() {
        assert_eq!(
            placeholders("a ${ONE} b ${TWO:-x} ${ONE} ${bad name} ${"),
            vec![("ONE".to_owned(), false), ("TWO".to_owned(), true)]
        );
    }

    #[test]
    fn env_names_include_commented_and_exported_lines() {
        let text = "A=1\n# B=\nexport C=x\n# a comment\n\nnot a line\n";
        assert_eq!(env_names(text), vec!["A", "B", "C"]);
    }

    #[test]
    fn an_allow_list_gets_the_pattern_once() {
        let mut config: Ordered =
            serde_json::from_str(r#"{"allowed_tools": ["Read"]}"#).expect("parse");
        let exa = find("exa").expect("exa");
        assert!(install(&mut config, exa, false).expect("install"));
        assert!(!install(&mut config, exa, false).expect("again"));
        assert_eq!(
            config.get("allowed_tools"),
            Some(&Ordered::Array(vec![
                Ordered::String("Read".into()),
                Ordered::String("mcp__exa__*".into())
            ]))
        );
    }
}
