//! README.md stays true: its `ds` commands parse, its sandstorm.json
//! examples load, its client example is the tested file, its links resolve.

use std::path::Path;

use clap::Parser;
use sandstorm::cli::Cli;
use sandstorm::config::SandstormConfig;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

/// The bodies of the fenced blocks of one language.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == fence => current = Some(String::new()),
            Some(body) if line.trim_start() == "```" => {
                out.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// A command line cut at a pipe or a comment.
fn words(line: &str) -> Vec<String> {
    let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
    words
        .into_iter()
        .take_while(|w| w != "|" && !w.starts_with('#'))
        .collect()
}

#[test]
fn every_ds_command_in_the_readme_parses() {
    let mut checked = 0;
    for block in blocks(&readme(), "bash") {
        for line in block.lines().map(str::trim) {
            let args = if let Some(rest) = line.strip_prefix("cargo run --release -- ") {
                format!("ds {rest}")
            } else if line.starts_with("ds ") {
                line.to_owned()
            } else {
                continue;
            };
            let words = words(&args);
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("README command {line:?} does not parse: {e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} ds commands found");
}

#[test]
fn every_sandstorm_json_example_in_the_readme_loads() {
    let examples = blocks(&readme(), "json");
    assert!(examples.len() >= 3);
    for json in examples {
        if let Err(e) = SandstormConfig::parse(json.as_bytes(), Path::new("README.md")) {
            panic!("README example is not a valid sandstorm.json: {e}\n{json}");
        }
    }
}

#[test]
fn the_readme_curl_example_is_the_tested_file() {
    let tested = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/query.sh"),
    )
    .expect("docs/examples/query.sh");
    assert!(
        blocks(&readme(), "bash").contains(&tested),
        "README must show docs/examples/query.sh verbatim"
    );
}

#[test]
fn every_relative_link_in_the_readme_resolves() {
    let text = readme();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for piece in text.split("](").skip(1) {
        let target = piece.split(')').next().unwrap_or_default();
        if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
            continue;
        }
        let path = target.split('#').next().unwrap_or_default();
        assert!(root.join(path).exists(), "README links to missing {target}");
    }
}
