//! `ds schedules`: the serverless platforms' schedules of sandstorm.json's
//! cron triggers, written into (or checked against) the SAM template and
//! `vercel.json` ([`crate::deploy`]).

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Fatal, exit};
use crate::config::SandstormConfig;
use crate::deploy::{Written, sam, vercel};
use crate::triggers::Definition;

#[derive(Debug, Args)]
#[command(
    group = clap::ArgGroup::new("platform").required(true).multiple(true).args(["sam", "vercel"]),
    after_help = "\
Reads ./sandstorm.json (or SANDSTORM_CONFIG). Writing twice changes nothing; only the schedules'
part of each file is rewritten. Run with --check in CI to catch a file that no longer matches.

Exit status: 0 written (or, with --check, matching), 1 a file differs (--check), 2 bad input: an
invalid sandstorm.json, a schedule the platform cannot express, a file that cannot be read."
)]
pub(super) struct SchedulesArgs {
    /// The SAM template's EventBridge Scheduler schedules (and the role
    /// they invoke the function with), between its `# BEGIN ds schedules`
    /// and `# END ds schedules` lines.
    #[arg(long)]
    sam: bool,
    /// vercel.json's crons (in UTC), and the rewrites the routes and the
    /// webhook triggers' paths need.
    #[arg(long)]
    vercel: bool,
    /// Change nothing: say what differs, and exit 1 if anything does.
    #[arg(long)]
    check: bool,
    /// The SAM template.
    #[arg(long, value_name = "PATH", default_value = "template.yaml")]
    template: PathBuf,
    /// The logical id of the function the schedules invoke.
    #[arg(long, value_name = "ID", default_value = sam::DEFAULT_FUNCTION)]
    function: String,
    /// The Vercel project's configuration.
    #[arg(
        long = "vercel-json",
        value_name = "PATH",
        default_value = "vercel.json"
    )]
    vercel_json: PathBuf,
}

/// The exit status of a `--check` that found a file differing.
const DIFFERS: u8 = 1;

/// Runs `ds schedules`.
pub(super) fn schedules(args: &SchedulesArgs) -> Result<u8, Fatal> {
    let (cwd, env) = super::environment()?;
    let config_path = env.get("SANDSTORM_CONFIG").map(PathBuf::from);
    let config = SandstormConfig::load(config_path.as_deref(), &cwd)
        .map_err(|e| Fatal::usage(format!("sandstorm.json is invalid: {e}")))?;
    let definitions = crate::triggers::definition::parse(config.triggers.as_deref().unwrap_or(&[]))
        .map_err(|(field, why)| Fatal::usage(format!("sandstorm.json {field}: {why}")))?;
    let mut files: Vec<(&Path, File)> = Vec::new();
    if args.sam {
        files.push((
            &args.template,
            File::Sam {
                function: &args.function,
            },
        ));
    }
    if args.vercel {
        files.push((&args.vercel_json, File::Vercel));
    }
    let mut differs = false;
    for (path, file) in files {
        // Shown as given; read from the working directory.
        let full = cwd.join(path);
        let text = std::fs::read_to_string(&full)
            .map_err(|e| Fatal::usage(format!("cannot read {}: {e}", path.display())))?;
        if args.check {
            let differences = file.check(&text, &definitions).map_err(|e| at(path, &e))?;
            if differences.is_empty() {
                eprintln!("{}: matches sandstorm.json", path.display());
            } else {
                differs = true;
                eprintln!(
                    "{} does not match sandstorm.json (`ds schedules {}` updates it):",
                    path.display(),
                    file.flag()
                );
                for difference in differences {
                    eprintln!("  {difference}");
                }
            }
        } else {
            let written = file.write(&text, &definitions).map_err(|e| at(path, &e))?;
            for note in &written.notes {
                eprintln!("note: {note}");
            }
            if written.text == text {
                eprintln!("{}: unchanged", path.display());
            } else {
                std::fs::write(&full, &written.text)
                    .map_err(|e| Fatal::usage(format!("cannot write {}: {e}", path.display())))?;
                eprintln!("{}: updated", path.display());
            }
        }
    }
    Ok(if differs { DIFFERS } else { exit::OK })
}

fn at(path: &Path, error: &str) -> Fatal {
    Fatal::usage(format!("{}: {error}", path.display()))
}

/// A file `ds schedules` keeps.
#[derive(Debug, Clone, Copy)]
enum File<'a> {
    Sam { function: &'a str },
    Vercel,
}

impl File<'_> {
    fn flag(self) -> &'static str {
        match self {
            File::Sam { .. } => "--sam",
            File::Vercel => "--vercel",
        }
    }

    fn write(self, text: &str, definitions: &[Definition]) -> Result<Written, String> {
        match self {
            File::Sam { function } => sam::write(text, definitions, function),
            File::Vercel => vercel::write(text, definitions),
        }
    }

    fn check(self, text: &str, definitions: &[Definition]) -> Result<Vec<String>, String> {
        match self {
            File::Sam { function } => sam::check(text, definitions, function),
            File::Vercel => vercel::check(text, definitions),
        }
    }
}
