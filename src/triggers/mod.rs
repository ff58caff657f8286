//! Triggers: runs started by other systems and by schedules, with no
//! person typing.
//!
//! sandstorm.json's `triggers` declares them ([`definition`]). A webhook
//! trigger answers `POST <path>` ([`route`]); a cron trigger fires on the
//! platform's scheduler: EventBridge Scheduler on Lambda ([`eventbridge`]),
//! Vercel Cron on Vercel ([`vercel_cron`], [`cron_route`]), and on `ds
//! serve` its own [`scheduler`]. However it fires, a
//! trigger starts a detached run here ([`fire`]), within its limits
//! ([`limits`]), with its prompt filled from what fired it
//! ([`template`]).

pub(crate) mod cron_fields;
pub(crate) mod cron_route;
pub mod definition;
pub mod eventbridge;
pub(crate) mod fire;
pub(crate) mod limits;
pub(crate) mod route;
pub mod schedule;
pub(crate) mod scheduler;
pub mod template;
pub mod vercel_cron;
pub mod verify;

pub use definition::{Definition, Source};

use crate::secret::Secret;

/// The triggers a server serves, their secrets resolved.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    list: Vec<Trigger>,
}

/// One trigger, ready to fire.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// What sandstorm.json says.
    pub definition: Definition,
    /// A webhook's secret, its `${VAR}` resolved; `None` for a public
    /// webhook and for cron.
    pub secret: Option<Secret>,
}

impl Triggers {
    /// The triggers of `definitions`, each webhook secret's `${VAR}` (or
    /// `${VAR:-default}`) read through `lookup`. A variable that is set
    /// nowhere is an error naming the trigger's field and the variable.
    pub fn resolve(
        definitions: &[Definition],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut list = Vec::with_capacity(definitions.len());
        for (index, definition) in definitions.iter().enumerate() {
            let secret = match &definition.source {
                Source::Webhook {
                    secret: Some(written),
                    ..
                } => {
                    let resolved =
                        crate::config::placeholders::fill(written, lookup).map_err(|variable| {
                            format!(
                                "sandstorm.json triggers[{index}].secret: {variable} is not set \
                                 (set it in the environment or .env)"
                            )
                        })?;
                    if resolved.is_empty() {
                        return Err(format!(
                            "sandstorm.json triggers[{index}].secret: it is empty once its \
                             variables are filled in"
                        ));
                    }
                    Some(Secret::new(resolved))
                }
                _ => None,
            };
            list.push(Trigger {
                definition: definition.clone(),
                secret,
            });
        }
        Ok(Triggers { list })
    }

    /// Every trigger, in sandstorm.json's order.
    pub fn all(&self) -> &[Trigger] {
        &self.list
    }

    /// The trigger named `name`.
    pub fn named(&self, name: &str) -> Option<&Trigger> {
        self.list.iter().find(|t| t.definition.name == name)
    }

    /// The webhook trigger whose path is `path`.
    pub fn at_path(&self, path: &str) -> Option<&Trigger> {
        self.list.iter().find(
            |t| matches!(&t.definition.source, Source::Webhook { path: own, .. } if own == path),
        )
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
