//! The `ds` command line: a thin door over the library.

use std::process::ExitCode;

use clap::Parser;
use sandstorm::sandbox::local::shim;

/// jemalloc, so that `ds serve` gives back the memory a load made it use:
/// glibc's malloc keeps it (see the dependency in Cargo.toml, and the decay
/// settings in .cargo/config.toml).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Inside a local sandbox this binary is the shim (see
    // `sandbox::local::shim`); it must not start the server's runtime.
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == shim::SHIM_COMMAND) {
        return shim::main(&args[1..]);
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(sandstorm::cli::run(sandstorm::cli::Cli::parse())),
        Err(error) => {
            eprintln!("ds: cannot start: {error}");
            ExitCode::FAILURE
        }
    }
}
