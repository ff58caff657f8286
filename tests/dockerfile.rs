//! The Dockerfile, checked without a Docker engine: the builder has the
//! pinned toolchain, the build context (the repository less .dockerignore)
//! holds every file `ds` is compiled from and no `.env`, and the image's
//! command, run here as the image would run it, serves the API.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::http::http_get;
use common::serve::DsServe;

fn repo() -> &'static Path {
    common::tools::manifest_dir()
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile")
}

/// The instructions of the final stage, as (keyword, rest of the line).
fn final_stage() -> Vec<(String, String)> {
    let text = dockerfile();
    let lines: Vec<&str> = text.lines().collect();
    let last_from = lines
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("a FROM line");
    lines[last_from..]
        .iter()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split_once(' '))
        .map(|(keyword, rest)| (keyword.to_owned(), rest.trim().to_owned()))
        .collect()
}

#[test]
fn the_builder_uses_the_pinned_toolchain() {
    let toolchain = std::fs::read_to_string(repo().join("rust-toolchain.toml")).expect("toolchain");
    let channel = toolchain
        .lines()
        .find_map(|line| line.strip_prefix("channel = "))
        .expect("a channel")
        .trim_matches('"');
    let builder = format!("FROM rust:{channel}-");
    assert!(
        dockerfile().lines().any(|line| line.starts_with(&builder)),
        "the build stage starts {builder}... (rust-toolchain.toml)"
    );
}

/// Every file under `src/` and `crates/` (Cargo reads every workspace
/// member's manifest and targets, and `ds` compiles crates/e2b-wire), and
/// every file those sources embed with `include_str!`/`include_bytes!` (the
/// runner, its manifest and lock).
fn sources_of_ds() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("read src")
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("src"), &mut files);
    walk(&repo().join("crates"), &mut files);
    let mut needed = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(repo()).expect("under the repo");
        needed.insert(relative.to_string_lossy().into_owned());
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for piece in text.split(macro_name).skip(1) {
                let embedded = piece.split('"').next().unwrap_or_default();
                let path = file.parent().expect("a folder").join(embedded);
                let path = path.canonicalize().unwrap_or(path);
                let root = repo().canonicalize().expect("repo");
                if let Ok(inside) = path.strip_prefix(&root) {
                    needed.insert(inside.to_string_lossy().into_owned());
                }
            }
        }
    }
    needed
}

#[test]
fn the_build_context_has_every_source_of_ds_and_no_env_file() {
    // The files `ds` is compiled from, embedded files included.
    let mut needed = sources_of_ds();
    assert!(
        needed.contains("src/bin/ds.rs")
            && needed.contains("crates/e2b-wire/Cargo.toml")
            && needed.contains("runner/runner.mjs"),
        "sources: {needed:?}"
    );
    // Cargo also reads the manifest, the lock, the toolchain file and every
    // target path the manifest names.
    needed.extend(["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"].map(String::from));
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("manifest");
    needed.extend(
        manifest
            .lines()
            .filter_map(|line| line.strip_prefix("path = "))
            .map(|path| path.trim_matches('"').to_owned()),
    );

    // The context as Docker sees it, through E2B's port of Docker's
    // .dockerignore matcher (the e2b SDK pinned for the tests).
    let python = common::tools::tool("python", "e2b (its .dockerignore matcher)");
    let script = "import json, os\n\
                  from e2b.template.utils import get_all_files_in_path, read_dockerignore\n\
                  root = os.getcwd()\n\
                  files = get_all_files_in_path('.', root, read_dockerignore(root), False)\n\
                  print(json.dumps([os.path.relpath(f, root) for f in files]))\n";
    let output = Command::new(python)
        .current_dir(repo())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-c", script])
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let context: BTreeSet<String> = serde_json::from_slice(&output.stdout).expect("json");
    let missing: Vec<&String> = needed.difference(&context).collect();
    assert!(
        missing.is_empty(),
        ".dockerignore keeps files `cargo build --bin ds` needs out of the context: {missing:?}"
    );
    for file in &context {
        let name = file.rsplit('/').next().unwrap_or(file);
        assert!(
            name != ".env" && !name.starts_with(".env."),
            "{file} would be sent to the Docker daemon; keys belong in --env-file"
        );
        assert!(
            !file.starts_with("target/") && !file.contains("node_modules/"),
            "{file}: build output and installs stay out of the context"
        );
    }
}

#[test]
fn the_image_runs_ds_serve_on_port_8000_as_a_user_that_is_not_root() {
    let stage = final_stage();
    let last = |keyword: &str| {
        stage
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, rest)| rest.clone())
            .unwrap_or_else(|| panic!("the final stage has a {keyword}"))
    };
    assert_eq!(last("EXPOSE"), "8000");
    let user = last("USER");
    assert!(user != "root" && user != "0", "USER {user}");
    assert!(
        stage
            .iter()
            .any(|(k, rest)| k == "RUN" && rest.contains("useradd") && rest.contains(&user)),
        "the final stage creates the user {user}"
    );
    let cmd: Vec<String> = serde_json::from_str(&last("CMD")).expect("CMD in exec form");
    assert_eq!(cmd, ["ds", "serve", "--host", "0.0.0.0", "--port", "8000"]);
    assert_eq!(last("ENV"), "SANDSTORM_SANDBOX=e2b");
}

#[test]
fn the_image_command_serves_the_api() {
    // The image's command and environment, on loopback and a free port
    // rather than 0.0.0.0:8000, with no sandstorm.json and no E2B key (a
    // request can bring one).
    let stage = final_stage();
    let cmd = stage
        .iter()
        .rev()
        .find(|(k, _)| k == "CMD")
        .map(|(_, rest)| rest.clone())
        .expect("CMD");
    let mut argv: Vec<String> = serde_json::from_str(&cmd).expect("exec form");
    assert_eq!(argv[0], "ds");
    for arg in &mut argv {
        match arg.as_str() {
            "0.0.0.0" => *arg = "127.0.0.1".into(),
            "8000" => *arg = "0".into(),
            _ => {}
        }
    }
    let mut server = DsServe::new(&argv[1..]).env("PATH", "/usr/bin:/bin");
    for (keyword, rest) in &stage {
        if keyword == "ENV" {
            let (name, value) = rest.split_once('=').expect("ENV NAME=value");
            server = server.env(name, value);
        }
    }
    let server = server.start_blocking();
    let url = &server.url;
    let health = http_get(&format!("{url}/health"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""status":"ok""#), "{health}");
}
