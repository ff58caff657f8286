//! The `ds` command line: a thin door over the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    sandstorm::cli::run(sandstorm::cli::Cli::parse()).await
}
