//! Output files end to end: the agent (real SDK, scripted model) makes
//! files in its sandbox, and they come back as `file` events byte for byte,
//! through both chains, and into `--output-dir` from the CLI.

mod common;

use base64::Engine;
use common::model_server::{ModelServer, Script};
use common::product::{Chain, Cli, Events, Serve};
use serde_json::{Value, json};

/// Makes a binary file, a text file, one file over the 10 MB per-file
/// limit, a hidden file and a file outside the pattern.
const MAKE_FILES: &str = "mkdir -p output/charts \
    && printf '\\000\\001\\002\\377PNG' > output/charts/a.png \
    && seq 1 2000 > output/nums.txt \
    && head -c 11000000 /dev/zero > output/huge.bin \
    && echo hidden > output/.secret \
    && echo elsewhere > notes.txt \
    && echo made";

const PNG: &[u8] = b"\x00\x01\x02\xffPNG";

fn nums() -> String {
    (1..=2000).map(|n| format!("{n}\n")).collect()
}

fn decode(file: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(file["data"].as_str().expect("data"))
        .expect("valid base64")
}

fn assert_files_came_back(events: &Events) {
    let types: Vec<&str> = events
        .events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    let result_at = types.iter().position(|t| *t == "result").expect("a result");
    let files = events.of_type("file");
    assert_eq!(files.len(), 2, "{}", events.dump());
    assert!(
        types[result_at + 1..]
            .iter()
            .all(|t| *t == "file" || *t == "warning"),
        "files follow the result: {types:?}"
    );

    let png = files
        .iter()
        .find(|f| f["path"] == "output/charts/a.png")
        .expect("the png");
    assert_eq!(decode(png), PNG, "binary content byte for byte");
    assert_eq!(png["size"], PNG.len());
    assert_eq!(png["mime"], "image/png");
    let text = files
        .iter()
        .find(|f| f["path"] == "output/nums.txt")
        .expect("the text");
    assert_eq!(decode(text), nums().as_bytes());
    assert_eq!(text["mime"], "text/plain");

    let warnings = events.of_type("warning");
    assert_eq!(warnings.len(), 1, "{}", events.dump());
    assert_eq!(warnings[0]["path"], "output/huge.bin");
    let message = warnings[0]["message"].as_str().expect("message");
    assert!(
        message.contains("output/huge.bin") && message.contains("per-file limit"),
        "{message}"
    );
    // Hidden files and files outside the pattern are neither sent nor warned about.
    let named: Vec<&str> = files
        .iter()
        .chain(&warnings)
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(named.len(), 3, "{named:?}");
}

async fn files_come_back_as_file_events(chain: Chain) {
    let model = ModelServer::start(Script::Bash {
        command: MAKE_FILES.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model).start().await;
    let events = product
        .query(json!({"prompt": "make files", "outputs": ["output/**"]}))
        .await;
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    assert_files_came_back(&events);
    product.assert_sandboxes_destroyed(1).await;
}

async fn sandstorm_json_outputs_are_the_default(chain: Chain) {
    let model = ModelServer::start(Script::Bash {
        command: MAKE_FILES.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .config(json!({"outputs": ["output/**"]}))
        .start()
        .await;
    let events = product.query(json!({"prompt": "make files"})).await;
    assert_files_came_back(&events);
    // A request's own list wins over the config's.
    let events = product
        .query(json!({"prompt": "make files", "outputs": ["*.txt"]}))
        .await;
    let files = events.of_type("file");
    assert_eq!(files.len(), 1, "{}", events.dump());
    assert_eq!(files[0]["path"], "notes.txt");
}

mod e2b {
    #[tokio::test]
    async fn files_come_back_as_file_events() {
        super::files_come_back_as_file_events(super::Chain::E2b).await;
    }
    #[tokio::test]
    async fn sandstorm_json_outputs_are_the_default() {
        super::sandstorm_json_outputs_are_the_default(super::Chain::E2b).await;
    }
}

mod local {
    #[tokio::test]
    async fn files_come_back_as_file_events() {
        super::files_come_back_as_file_events(super::Chain::Local).await;
    }
    #[tokio::test]
    async fn sandstorm_json_outputs_are_the_default() {
        super::sandstorm_json_outputs_are_the_default(super::Chain::Local).await;
    }
}

#[tokio::test]
async fn ds_output_dir_saves_the_files() {
    let model = ModelServer::start(Script::Bash {
        command: MAKE_FILES.into(),
    })
    .await;
    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("out");
    let dir_arg = dir.to_str().expect("utf-8 path");
    let output = Cli::new(&model)
        .run(&["make files", "--output-dir", dir_arg])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    assert_eq!(
        std::fs::read(dir.join("output/charts/a.png")).expect("png saved"),
        PNG
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("output/nums.txt")).expect("text saved"),
        nums()
    );
    assert!(!dir.join("output/huge.bin").exists());
    assert!(
        output.stderr.contains("output/huge.bin"),
        "{}",
        output.dump()
    );
    assert!(output.stderr.contains("2 files saved"), "{}", output.dump());
}

/// Changes one uploaded file, leaves another alone, makes new ones (and
/// hidden ones), then 25 more in a folder that sorts last.
const CHANGE_FILES: &str = "echo more >> notes/edit.md \
    && mkdir -p deep/nested zz .cache \
    && echo report > report.md \
    && echo x > deep/nested/x.txt \
    && echo hidden > .cache/y \
    && echo secret > deep/.secret \
    && for i in $(seq 1 25); do echo $i > zz/f$i.txt; done \
    && echo made";

#[tokio::test]
async fn outputs_auto_sends_back_what_the_run_created_or_changed_as_0_9_2_does() {
    let model = ModelServer::start(Script::Bash {
        command: CHANGE_FILES.into(),
    })
    .await;
    let mut product = Serve::new(Chain::Local, &model)
        .config(json!({"outputs": "auto"}))
        .start()
        .await;
    let events = product
        .query(json!({"prompt": "change files", "files": {
            "data/in.csv": "a,b\n", "notes/edit.md": "# Notes\n"
        }}))
        .await;
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    let files = events.of_type("file");
    let paths: Vec<&str> = files.iter().filter_map(|f| f["path"].as_str()).collect();
    // 20 files come back (the limit), in path order: the three the run
    // made or changed first, then the first 17 of zz/. Not the untouched
    // upload, nor anything hidden.
    assert_eq!(paths.len(), 20, "{}", events.dump());
    assert_eq!(
        paths[..3],
        ["deep/nested/x.txt", "notes/edit.md", "report.md"]
    );
    assert!(
        paths[3..].iter().all(|p| p.starts_with("zz/f")),
        "{paths:?}"
    );
    let edited = files[1];
    assert_eq!(edited["name"], "edit.md");
    assert_eq!(edited["relative_path"], "notes/edit.md");
    assert_eq!(decode(edited), b"# Notes\nmore\n");
    assert_eq!(
        edited.get("content_base64"),
        None,
        "the content is sent once"
    );
    // The other 8 are counted in one warning, not one each.
    let warnings = events.of_type("warning");
    assert_eq!(warnings.len(), 1, "{}", events.dump());
    let message = warnings[0]["message"].as_str().expect("message");
    assert!(
        message.starts_with("8 more output files not sent"),
        "{message}"
    );
    product.assert_sandboxes_destroyed(1).await;
}
