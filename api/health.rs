//! The Vercel function behind `/health`. Vercel makes one function per file
//! under `api/` and `vercel.json` rewrites each path to one, so this file
//! exists; the door itself is `api/query.rs`, which serves every route.

#[path = "query.rs"]
mod door;

fn main() -> std::process::ExitCode {
    door::main()
}
