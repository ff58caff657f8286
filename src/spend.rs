//! What a run spends on the model, and the caps that stop it.
//!
//! The model endpoint is the only way the run's agent reaches the model
//! with a real credential, so it sees every call: the SDK's, its
//! subagents', and any the agent makes itself with curl. Each run's calls
//! go through one [`SpendMeter`]. Before a call goes upstream the meter
//! [admits](SpendMeter::admit) it or refuses it; as its answer streams
//! back a [`UsageReader`](usage::UsageReader) reads the `usage` the API
//! reports, and the meter prices it ([`prices`]) when the answer is
//! complete.
//!
//! A cap is checked before each call, against the calls that have
//! finished: the call that crosses it completes, and the next one is
//! refused. Calls already in flight when the cap is crossed (parallel
//! subagents) complete too, so a run may end above its cap by what those
//! calls cost, never by more.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub(crate) mod prices;
pub(crate) mod usage;

use prices::Price;
pub use prices::PriceTable;
use usage::{Reading, Usage};

/// The caps on one run's model use. Either may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Caps {
    /// `max_cost_usd`: the most the run's model calls may cost.
    pub max_cost_usd: Option<f64>,
    /// `max_tokens`: the most tokens (input, output and cache together)
    /// the run's model calls may use.
    pub max_tokens: Option<u64>,
}

impl Caps {
    /// The stricter of two sets of caps, cap by cap: a request may lower
    /// what sandstorm.json allows, never raise it.
    pub(crate) fn stricter(self, other: Caps) -> Caps {
        fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        Caps {
            max_cost_usd: min(self.max_cost_usd, other.max_cost_usd),
            max_tokens: min(self.max_tokens, other.max_tokens),
        }
    }
}

/// Which cap stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cap", content = "limit")]
pub(crate) enum Cap {
    MaxCostUsd(f64),
    MaxTokens(u64),
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::MaxCostUsd(limit) => write!(f, "max_cost_usd of ${limit}"),
            Cap::MaxTokens(limit) => write!(f, "max_tokens of {limit}"),
        }
    }
}

/// Why a call was not sent upstream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum Refusal {
    /// A cap was reached by the calls before.
    #[error("the run's {cap} is reached: {spend}; no more model calls are made")]
    CapReached { cap: Cap, spend: SpendSummary },
    /// A cost cap is set and the model has no price.
    #[error(
        "the run has a max_cost_usd, and the model {model:?} has no price in the list (checked \
         {checked}); add it to SANDSTORM_MODEL_PRICES",
        checked = prices::PRICES_CHECKED
    )]
    Unpriced { model: String },
    /// A cost cap is set and the call names no model to price.
    #[error("the run has a max_cost_usd, and this call names no model to price")]
    NoModel,
    /// A cap is set and an earlier answer's usage could not be read, so the
    /// spend is no longer known: the cap fails closed.
    #[error(
        "the run has a spending cap, and the usage of an earlier model answer could not be \
         read, so its spend is unknown; no more model calls are made"
    )]
    Unmetered,
}

/// The spend in words, for errors: `spent $0.0123 and 4,500 tokens over 3
/// calls`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpendSummary {
    pub cost_usd: f64,
    pub tokens: u64,
    pub calls: u64,
}

impl fmt::Display for SpendSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spent ${:.6} and {} tokens over {} model call{}",
            self.cost_usd,
            self.tokens,
            self.calls,
            if self.calls == 1 { "" } else { "s" }
        )
    }
}

/// What a run's model calls used, as the endpoint counted it: the
/// `sandstorm.spend` of the run's last event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Spend {
    /// Calls answered upstream.
    pub calls: u64,
    /// Calls refused because a cap was reached.
    pub refused_calls: u64,
    /// Calls answered upstream whose usage could not be read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmetered_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// The calls' cost at the server's prices. Leaves out calls to models
    /// with no price (see `unpriced_models`).
    pub cost_usd: f64,
    /// Models that answered and have no price.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unpriced_models: BTreeSet<String>,
    /// The cap that stopped the run, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceeded: Option<Cap>,
}

impl Spend {
    /// Every token counted.
    pub(crate) fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }

    /// Why the run ended, when a cap refused one of its calls.
    pub(crate) fn exceeded_message(&self) -> Option<String> {
        let cap = self.exceeded?;
        Some(format!(
            "the run's {cap} was reached: {}; the model endpoint refused the next call",
            self.summary()
        ))
    }

    pub(crate) fn summary(&self) -> SpendSummary {
        SpendSummary {
            cost_usd: self.cost_usd,
            tokens: self.tokens(),
            calls: self.calls,
        }
    }
}

/// A run's tally as a reader of a detached run finds it beside its log:
/// what the endpoint counted so far, and whether it has stopped counting
/// (the process it served has ended). The in-sandbox proxy keeps it in a
/// file only root can write ([`RECORD_DIR`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendRecord {
    pub(crate) spend: Spend,
    /// The endpoint has stopped: nothing more will be counted.
    #[serde(rename = "final")]
    pub(crate) complete: bool,
}

/// Where the endpoint of a detached run keeps its [`SpendRecord`]s, one a
/// turn, inside the sandbox: a folder of root's (0755) in `/run`, where
/// only root may make one, so the agent (`user`) can read the records but
/// neither write, replace nor remove them.
pub const RECORD_DIR: &str = "/run/sandstorm/spend";

/// Where turn `turn`'s [`SpendRecord`] is kept.
pub(crate) fn record_path(turn: u32) -> String {
    format!("{RECORD_DIR}/turn-{turn}.json")
}

/// One run's tally and caps, shared by every call of the run.
pub struct SpendMeter {
    caps: Caps,
    prices: Arc<PriceTable>,
    tally: Mutex<Spend>,
    /// Told of every change to the tally, for whoever keeps a record of it.
    changed: tokio::sync::Notify,
}

impl fmt::Debug for SpendMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendMeter")
            .field("caps", &self.caps)
            .field("spend", &self.spend())
            .finish_non_exhaustive()
    }
}

impl SpendMeter {
    /// A fresh tally for one run, held to `caps`, pricing its calls by
    /// `prices`.
    pub fn new(caps: Caps, prices: Arc<PriceTable>) -> Arc<SpendMeter> {
        Arc::new(SpendMeter {
            caps,
            prices,
            tally: Mutex::new(Spend::default()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// The run's caps.
    pub(crate) fn caps(&self) -> Caps {
        self.caps
    }

    /// The prices the meter goes by.
    pub(crate) fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Takes over a tally counted elsewhere: by the model proxy inside an
    /// E2B sandbox, which reports it when its run ends.
    pub(crate) fn absorb(&self, spend: Spend) {
        *crate::sync::lock(&self.tally) = spend;
    }

    /// Decides whether a call for `model` (from its request body) may go
    /// upstream.
    pub(crate) fn admit(&self, model: Option<&str>) -> Result<(), Refusal> {
        let mut tally = crate::sync::lock(&self.tally);
        let reached = match (self.caps.max_cost_usd, self.caps.max_tokens) {
            (Some(limit), _) if tally.cost_usd >= limit => Some(Cap::MaxCostUsd(limit)),
            (_, Some(limit)) if tally.tokens() >= limit => Some(Cap::MaxTokens(limit)),
            _ => None,
        };
        if let Some(cap) = reached {
            tally.refused_calls += 1;
            tally.exceeded.get_or_insert(cap);
            self.changed.notify_one();
            return Err(Refusal::CapReached {
                cap,
                spend: tally.summary(),
            });
        }
        let capped = self.caps.max_cost_usd.is_some() || self.caps.max_tokens.is_some();
        if capped && tally.unmetered_calls > 0 {
            return Err(Refusal::Unmetered);
        }
        if self.caps.max_cost_usd.is_some() {
            let model = model.ok_or(Refusal::NoModel)?;
            if self.prices.get(model).is_none() {
                return Err(Refusal::Unpriced {
                    model: model.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Counts one answered call. `requested` is the model the request
    /// named, used when the answer names none. A successful answer whose
    /// usage could not be read counts as unmetered; a failed one (an API
    /// error) cost nothing.
    pub(crate) fn record(&self, requested: Option<&str>, reading: &Reading, succeeded: bool) {
        if !reading.saw_usage {
            if succeeded {
                tracing::warn!("a model answer's usage could not be read");
                crate::sync::lock(&self.tally).unmetered_calls += 1;
                self.changed.notify_one();
            }
            return;
        }
        let model = reading.model.as_deref().or(requested);
        let price = model.and_then(|m| self.prices.get(m));
        let usage = &reading.usage;
        let mut tally = crate::sync::lock(&self.tally);
        tally.calls += 1;
        tally.input_tokens = tally.input_tokens.saturating_add(usage.input_tokens);
        tally.output_tokens = tally.output_tokens.saturating_add(usage.output_tokens);
        tally.cache_creation_input_tokens = tally
            .cache_creation_input_tokens
            .saturating_add(usage.cache_creation_input_tokens);
        tally.cache_read_input_tokens = tally
            .cache_read_input_tokens
            .saturating_add(usage.cache_read_input_tokens);
        match price {
            Some(price) => tally.cost_usd += cost(&price, usage),
            None => {
                tally
                    .unpriced_models
                    .insert(model.unwrap_or("(unnamed)").to_owned());
            }
        }
        drop(tally);
        self.changed.notify_one();
    }

    /// Resolves at the next change to the tally, or at once when one came
    /// since the last call: for one task that keeps a record of it.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The tally so far.
    pub(crate) fn spend(&self) -> Spend {
        crate::sync::lock(&self.tally).clone()
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What one call cost at `price`.
pub(crate) fn cost(price: &Price, usage: &Usage) -> f64 {
    let price = match price.long_context {
        Some((threshold, long)) if usage.prompt_tokens() > threshold => long,
        _ => price,
    };
    // Without a split, cache writes are billed at the five-minute price,
    // the API's default lifetime.
    let (write_5m, write_1h) = match usage.cache_creation {
        Some(split) => (
            split.ephemeral_5m_input_tokens,
            split.ephemeral_1h_input_tokens,
        ),
        None => (usage.cache_creation_input_tokens, 0),
    };
    #[allow(clippy::cast_precision_loss)] // token counts stay far below 2^52
    let dollars = usage.input_tokens as f64 * price.input
        + usage.output_tokens as f64 * price.output
        + write_5m as f64 * price.cache_write
        + write_1h as f64 * price.cache_write_1h()
        + usage.cache_read_input_tokens as f64 * price.cache_read;
    dollars / 1_000_000.0
}

#[cfg(test)]
mod tests;
