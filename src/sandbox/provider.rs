//! What each sandbox provider declares about itself, so that the doors, key
//! resolution and request parsing treat every provider alike.
//!
//! A provider is known to the rest of the product only through its
//! [`ProviderDeclaration`]: its name (for `--sandbox` and
//! `SANDSTORM_SANDBOX`), its credential (the request field and the
//! environment variable it is read from), the environment variables its own
//! options come from, whether it can run on a serverless platform, and a
//! function that builds it from [`ProviderSettings`]. The doors list the
//! declarations they offer; nothing outside `sandbox/<provider>/` and the
//! doors names a provider.
//!
//! # Adding a provider (Daytona, Modal, Vercel Sandbox, ...)
//!
//! 1. A folder `src/sandbox/<name>/` whose `mod.rs` implements
//!    [`SandboxProvider`] and [`Sandbox`](super::Sandbox), and declares
//!    `pub const PROVIDER: ProviderDeclaration`. Its options are parsed from
//!    [`ProviderSettings`] inside that folder, never from the process
//!    environment.
//! 2. `pub mod <name>;` in `src/sandbox/mod.rs`.
//! 3. One line at the door: `&<name>::PROVIDER` in the door's provider list
//!    (`crate::doors::PROVIDERS`, or `SERVERLESS_PROVIDERS` when it can run
//!    in a function).
//!
//! With that, `--sandbox <name>` and `SANDSTORM_SANDBOX=<name>` select it,
//! `POST /query` accepts its credential field (and `/openapi.json` documents
//! it), and its credential is found in the request, the environment, `.env`
//! or the AWS secret like every other key. `sandbox::provider::tests` wires
//! a fake third provider through these same declarations.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SandboxProvider;

/// The credential a provider needs to create sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// The `POST /query` body field that carries it, e.g. `e2b_api_key`.
    pub field: &'static str,
    /// The environment variable (or AWS secret key) it is read from when the
    /// request has none, e.g. `E2B_API_KEY`.
    pub variable: &'static str,
    /// How `/openapi.json` describes the field.
    pub description: &'static str,
}

/// Whether a door may install what a provider needs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Only check; a missing piece is an error that says how to install it.
    CheckOnly,
    /// Install a missing piece, with visible progress (the CLI).
    InstallIfMissing,
}

/// How a provider is built from its settings.
pub type BuildProvider = fn(&ProviderSettings) -> Result<Arc<dyn SandboxProvider>, String>;

/// Everything the product knows about one provider.
pub struct ProviderDeclaration {
    /// The provider's name: `--sandbox` and `SANDSTORM_SANDBOX` values, logs.
    pub name: &'static str,
    /// One line for `--help`.
    pub summary: &'static str,
    /// The credential it needs, or `None` when it needs none.
    pub credential: Option<Credential>,
    /// The environment variables its options are read from. The door copies
    /// exactly these (and the credential's variable) into
    /// [`ProviderSettings`].
    pub variables: &'static [&'static str],
    /// Whether it can run in a serverless function (no local machine to
    /// speak of: no bubblewrap, no room for node_modules).
    pub serverless: bool,
    /// Whether its sandboxes reach the model only through an endpoint that
    /// holds the credential, counts every call with the process's
    /// [`ProcessSpec::spend`](super::ProcessSpec::spend) and refuses calls
    /// past its caps, with these settings. Only then can a run have a
    /// spending cap.
    pub meters_model: fn(&ProviderSettings) -> bool,
    /// Whether its model endpoint also holds the cloud providers'
    /// credentials (Bedrock's AWS keys, the Vertex service account,
    /// Foundry's key) with these settings, so that key resolution hands the
    /// Vertex key file to it in the run's environment rather than
    /// uploading it, and a run on a cloud may have a spending cap.
    pub keeps_cloud_credentials: fn(&ProviderSettings) -> bool,
    /// Builds the provider.
    pub build: BuildProvider,
}

impl fmt::Debug for ProviderDeclaration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderDeclaration")
            .field("name", &self.name)
            .field("credential", &self.credential)
            .field("variables", &self.variables)
            .field("serverless", &self.serverless)
            .finish_non_exhaustive()
    }
}

impl ProviderDeclaration {
    /// The variables the door reads for this provider: its own and its
    /// credential's.
    pub(crate) fn all_variables(&self) -> impl Iterator<Item = &'static str> + use<> {
        let credential = self.credential.map(|c| c.variable);
        self.variables.iter().copied().chain(credential)
    }
}

/// A provider's settings, resolved once at the door from the variables its
/// declaration names.
#[derive(Clone)]
pub struct ProviderSettings {
    values: BTreeMap<&'static str, String>,
    cwd: PathBuf,
    setup: Setup,
    executable: Option<PathBuf>,
}

impl fmt::Debug for ProviderSettings {
    // Values include the provider's credential: show names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("variables", &self.values.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("setup", &self.setup)
            .field("executable", &self.executable)
            .finish()
    }
}

impl ProviderSettings {
    /// Settings from `lookup`, which the door answers from its snapshot of
    /// the environment. Only `declaration`'s variables are asked for; empty
    /// values count as unset.
    pub fn resolve<'a>(
        declaration: &ProviderDeclaration,
        lookup: impl Fn(&str) -> Option<&'a str>,
        cwd: &Path,
        setup: Setup,
    ) -> Self {
        let values = declaration
            .all_variables()
            .filter_map(|name| {
                lookup(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| (name, v.to_owned()))
            })
            .collect();
        ProviderSettings {
            values,
            cwd: cwd.to_path_buf(),
            setup,
            executable: None,
        }
    }

    /// The same settings, knowing the door's executable.
    #[must_use]
    pub fn with_executable(mut self, executable: Option<&Path>) -> Self {
        self.executable = executable.map(Path::to_path_buf);
        self
    }

    /// The door's executable, when the door said.
    pub fn executable(&self) -> Option<&Path> {
        self.executable.as_deref()
    }

    /// The value of one declared variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The folder relative paths resolve from.
    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// Whether the provider may install what it misses.
    pub fn setup(&self) -> Setup {
        self.setup
    }
}

/// The providers a door offers, in order of preference.
pub type Catalog = &'static [&'static ProviderDeclaration];

/// Picks the provider: the one `requested` names (a flag or
/// `SANDSTORM_SANDBOX`), else the first whose credential `has_variable`
/// reports set, else the first that needs no credential.
pub(crate) fn choose(
    catalog: Catalog,
    requested: Option<&str>,
    has_variable: impl Fn(&str) -> bool,
) -> Result<&'static ProviderDeclaration, String> {
    let names = || {
        catalog
            .iter()
            .map(|p| format!("{:?}", p.name))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    if let Some(name) = requested {
        return catalog
            .iter()
            .copied()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("the sandbox must be {}, got {name:?}", names()));
    }
    catalog
        .iter()
        .copied()
        .find(|p| p.credential.is_some_and(|c| has_variable(c.variable)))
        .or_else(|| catalog.iter().copied().find(|p| p.credential.is_none()))
        .or_else(|| catalog.first().copied())
        .ok_or_else(|| "no sandbox provider is available".to_owned())
}

/// The credential fields `POST /query` accepts: every provider's in the
/// catalog, so a request written for one backend is valid on any door.
pub(crate) fn credential_fields(catalog: Catalog) -> Vec<Credential> {
    catalog.iter().filter_map(|p| p.credential).collect()
}

#[cfg(test)]
mod tests;
