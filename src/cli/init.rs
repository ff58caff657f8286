//! `ds init [STARTER] [DIRECTORY]`: writes a starter project.
//!
//! The seven starters of the Python 0.9.2 `ds init`, with the same names,
//! aliases and configuration fields, written afresh for this product. They
//! are embedded in the binary, so an installed `ds` needs no data files.
//! Unlike 0.9.2 it never prompts: no starter means `general-assistant`,
//! and keys are left for the person to put in `.env` (`.env.example` lists
//! them).

use std::path::{Path, PathBuf};

use super::ordered::Ordered;
use super::{Fatal, add, exit};

/// A starter: its catalogue entry and the files it writes.
pub(super) struct Starter {
    pub name: &'static str,
    /// Other names 0.9.2 accepted for it.
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    /// A first command to try, shown after writing.
    pub try_it: &'static str,
    /// Paths relative to the project folder, and their contents.
    pub files: &'static [(&'static str, &'static str)],
}

/// The starter used when none is named (0.9.2's interactive default).
pub(super) const DEFAULT_STARTER: &str = "general-assistant";

/// Every starter's `.env.example`: the keys any project needs.
const ENV_EXAMPLE_TEXT: &str = include_str!("starters/env.example");

macro_rules! starter_files {
    ($dir:literal) => {
        &[
            (
                "sandstorm.json",
                include_str!(concat!("starters/", $dir, "/sandstorm.json")),
            ),
            (
                "README.md",
                include_str!(concat!("starters/", $dir, "/README.md")),
            ),
        ]
    };
}

/// The catalogue, in the order `--list` shows it (0.9.2's order).
pub(super) const STARTERS: &[Starter] = &[
    Starter {
        name: "general-assistant",
        aliases: &[],
        description: "An all-round agent for research, documents, support, planning and code.",
        try_it: r#"ds "Compare Notion, Coda, and Slite for async product teams""#,
        files: starter_files!("general-assistant"),
    },
    Starter {
        name: "research-brief",
        aliases: &["competitive-analysis"],
        description: "Researches a topic, compares the options and returns a short decision brief.",
        try_it: r#"ds "Compare Linear, Jira, and Asana for a 50-person product org""#,
        files: starter_files!("research-brief"),
    },
    Starter {
        name: "document-analyst",
        aliases: &[],
        description: "Reads transcripts, reports, PDFs or decks; extracts decisions, risks and actions.",
        try_it: r#"ds "Summarize this transcript and extract risks plus next steps" -f notes.txt"#,
        files: starter_files!("document-analyst"),
    },
    Starter {
        name: "support-triage",
        aliases: &["issue-triage"],
        description: "Triages tickets or issue exports into priorities, owners and next actions.",
        try_it: r#"ds "Triage these incoming tickets for urgency and next action" -f tickets.json"#,
        files: starter_files!("support-triage"),
    },
    Starter {
        name: "api-extractor",
        aliases: &["docs-to-openapi"],
        description: "Reads API documentation and drafts an OpenAPI spec with a summary.",
        try_it: r#"ds "Turn the docs at https://docs.stripe.com/api/subscriptions into a draft OpenAPI spec" --output-dir out"#,
        files: starter_files!("api-extractor"),
    },
    Starter {
        name: "security-audit",
        aliases: &[],
        description: "A security audit by three sub-agents with an OWASP Top 10 skill.",
        try_it: r#"ds "Run a security audit on this codebase" -f requirements.txt -f src/auth.py"#,
        files: &[
            (
                "sandstorm.json",
                include_str!("starters/security-audit/sandstorm.json"),
            ),
            (
                "README.md",
                include_str!("starters/security-audit/README.md"),
            ),
            (
                ".claude/skills/owasp-top-10/SKILL.md",
                include_str!("starters/security-audit/.claude/skills/owasp-top-10/SKILL.md"),
            ),
        ],
    },
    Starter {
        name: "code-review",
        aliases: &["pr-review"],
        description: "Reviews GitHub pull requests: diff, tests, inline comments (GitHub MCP).",
        try_it: r#"ds "Review PR 123 in owner/repo, focus on security and API breakage""#,
        files: starter_files!("code-review"),
    },
];

impl Starter {
    /// Its sandstorm.json.
    pub(super) fn config(&self) -> &'static str {
        self.files
            .iter()
            .find(|(path, _)| *path == "sandstorm.json")
            .map_or("", |(_, text)| text)
    }
}

/// `ds init --list`.
pub(super) fn list() -> u8 {
    println!("Starters (ds init NAME [DIRECTORY]):\n");
    for starter in STARTERS {
        println!("  {:<18} {}", starter.name, starter.description);
        if !starter.aliases.is_empty() {
            println!("  {:<18} also: {}", "", starter.aliases.join(", "));
        }
    }
    exit::OK
}

/// Finds a starter by name or alias, as 0.9.2 did (case and spaces aside).
pub(super) fn find(name: &str) -> Result<&'static Starter, Fatal> {
    let wanted = name.trim().to_ascii_lowercase();
    STARTERS
        .iter()
        .find(|s| s.name == wanted || s.aliases.contains(&wanted.as_str()))
        .ok_or_else(|| {
            let names: Vec<&str> = STARTERS.iter().map(|s| s.name).collect();
            Fatal::usage(format!(
                "unknown starter {name:?}; choose one of: {} (ds init --list describes them)",
                names.join(", ")
            ))
        })
}

/// `ds init [STARTER] [DIRECTORY] [--force]`, relative to `cwd`.
pub(super) fn init(
    cwd: &Path,
    name: Option<&str>,
    directory: Option<&Path>,
    force: bool,
) -> Result<u8, Fatal> {
    let starter = find(name.unwrap_or(DEFAULT_STARTER))?;
    // 0.9.2's default: a new folder named after the starter.
    let shown_dir: PathBuf =
        directory.map_or_else(|| PathBuf::from(starter.name), Path::to_path_buf);
    let dir = cwd.join(&shown_dir);
    if dir.exists() && !dir.is_dir() {
        return Err(Fatal::usage(format!(
            "{} exists and is not a directory",
            shown_dir.display()
        )));
    }
    let mut files: Vec<(&str, &str)> = starter.files.to_vec();
    files.push((add::ENV_EXAMPLE, ENV_EXAMPLE_TEXT));

    // Check every target before writing any, so a refusal leaves nothing
    // half-written.
    let mut existing = Vec::new();
    for (relative, _) in &files {
        let target = dir.join(relative);
        if target.is_dir() {
            return Err(Fatal::usage(format!(
                "{} is a directory; a starter file goes there",
                shown_dir.join(relative).display()
            )));
        }
        if target.exists() {
            existing.push(shown_dir.join(relative).display().to_string());
        }
    }
    if !existing.is_empty() && !force {
        return Err(Fatal::usage(format!(
            "{} already exist{}; use --force to overwrite {}",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" },
            if existing.len() == 1 { "it" } else { "them" },
        )));
    }
    for (relative, content) in &files {
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Fatal::usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&target, content)
            .map_err(|e| Fatal::usage(format!("cannot write {}: {e}", target.display())))?;
        println!("wrote {}", shown_dir.join(relative).display());
    }
    // The starter's MCP servers read their secrets from placeholders; list
    // those variables too, so `.env.example` is the whole set.
    let config: Ordered = serde_json::from_str(starter.config()).unwrap_or(Ordered::Null);
    let servers = config
        .get("mcp_servers")
        .map(|servers| servers.strings().join("\n"))
        .unwrap_or_default();
    let needed: Vec<String> = add::placeholders(&servers)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
    add::append_env_example(&dir, &format!("the {} starter", starter.name), &needed)?;

    println!("\nInitialized {} in {}.", starter.name, shown_dir.display());
    println!("Next:");
    println!("  cd {}", shown_dir.display());
    println!("  cp .env.example .env    # then fill in the keys");
    println!("  ds doctor               # checks keys, sandbox and sandstorm.json");
    println!("  {}", starter.try_it);
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sandstorm.json fields a starter may use: today's, and those
    /// being added on main (system_prompt_append, allowed_tools, timeout,
    /// skills_dir, template_skills).
    const FIELDS: &[&str] = &[
        "system_prompt",
        "system_prompt_append",
        "model",
        "max_turns",
        "output_format",
        "allowed_tools",
        "timeout",
        "skills_dir",
        "template_skills",
        "agents",
        "mcp_servers",
        "outputs",
    ];

    #[test]
    fn seven_starters_each_with_an_object_of_known_fields_and_a_readme() {
        assert_eq!(STARTERS.len(), 7);
        for starter in STARTERS {
            let config: Ordered = serde_json::from_str(starter.config()).expect(starter.name);
            let Ordered::Object(entries) = config else {
                panic!("{}: not an object", starter.name)
            };
            for (key, _) in &entries {
                assert!(FIELDS.contains(&key.as_str()), "{}: {key}", starter.name);
            }
            assert!(
                entries.iter().any(|(k, _)| k == "system_prompt"),
                "{}",
                starter.name
            );
            assert!(
                starter
                    .files
                    .iter()
                    .any(|(p, t)| *p == "README.md" && !t.is_empty()),
                "{}",
                starter.name
            );
        }
    }

    #[test]
    fn a_skills_dir_names_a_folder_the_starter_writes() {
        for starter in STARTERS {
            let config: Ordered = serde_json::from_str(starter.config()).expect(starter.name);
            if let Some(dir) = config.get("skills_dir").and_then(Ordered::as_str) {
                assert!(
                    starter
                        .files
                        .iter()
                        .any(|(p, _)| p.starts_with(&format!("{dir}/")) && p.ends_with("SKILL.md")),
                    "{}",
                    starter.name
                );
            }
        }
    }

    #[test]
    fn names_and_aliases_resolve_and_an_unknown_one_lists_the_names() {
        assert_eq!(find("pr-review").expect("alias").name, "code-review");
        assert_eq!(
            find(" Research-Brief ").expect("name").name,
            "research-brief"
        );
        let err = find("nope").err().expect("unknown");
        assert_eq!(err.code, exit::USAGE);
        for starter in STARTERS {
            assert!(err.message.contains(starter.name), "{}", err.message);
        }
    }
}
