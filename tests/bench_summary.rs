//! README.md's benchmark paragraph is the one `bench/report.py` generated
//! into BENCHMARKS.md: both are written by `bench/run` between the same
//! markers, so a hand edit to either (or a README left behind by a new
//! run) fails here instead of letting the numbers drift apart.

use std::path::Path;

const START: &str = "<!-- bench-summary:start -->";
const END: &str = "<!-- bench-summary:end -->";

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between the markers, trimmed; the file must hold them once.
fn summary<'a>(name: &str, text: &'a str) -> &'a str {
    assert_eq!(
        text.matches(START).count(),
        1,
        "{name}: expected one {START}"
    );
    assert_eq!(text.matches(END).count(), 1, "{name}: expected one {END}");
    let from = text
        .find(START)
        .map(|i| i + START.len())
        .unwrap_or_default();
    let to = text.find(END).unwrap_or_default();
    assert!(from <= to, "{name}: {END} comes before {START}");
    text[from..to].trim()
}

#[test]
fn readme_summary_is_the_generated_one() {
    let readme = read("README.md");
    let benchmarks = read("BENCHMARKS.md");
    let in_readme = summary("README.md", &readme);
    let in_benchmarks = summary("BENCHMARKS.md", &benchmarks);
    assert!(
        !in_benchmarks.is_empty(),
        "BENCHMARKS.md: the summary paragraph is empty"
    );
    assert_eq!(
        in_readme, in_benchmarks,
        "README.md's benchmark summary differs from BENCHMARKS.md's: run `bench/run` \
         (or `python3 bench/harness.py --report-only`) to write both from bench/results.json"
    );
}
