//! What the model costs: a dated table of Claude prices, and the
//! operator's overrides (`SANDSTORM_MODEL_PRICES`).
//!
//! The table prices the known Claude models at Anthropic's list prices, in
//! US dollars per million tokens. A model is looked up by its id with the
//! provider's wrapping taken off (`us.anthropic.` and `-v1:0` on Bedrock,
//! `@20250929` on Vertex) and its date suffix dropped, so
//! `claude-sonnet-4-5-20250929` and `claude-sonnet-4-5` are one entry.
//! Prices change: the operator's overrides win over the table, and a
//! model in neither has no price, which a cost cap refuses.

use std::collections::BTreeMap;

use serde::Deserialize;

/// When the table below was checked against Anthropic's pricing page,
/// <https://platform.claude.com/docs/en/about-claude/pricing>.
pub(crate) const PRICES_CHECKED: &str = "2026-12-05";

/// The variable that overrides or adds prices: a JSON object from model
/// id to a [`Price`], e.g.
/// `{"claude-sonnet-4-5": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}`.
pub(crate) const PRICES_VARIABLE: &str = "SANDSTORM_MODEL_PRICES";

/// One model's prices, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Price {
    /// Uncached input.
    pub input: f64,
    /// Output, thinking included.
    pub output: f64,
    /// Writing the prompt cache with the default five-minute lifetime.
    pub cache_write: f64,
    /// Writing the prompt cache with a one-hour lifetime; twice the input
    /// price when not given, as on every Claude model.
    #[serde(default)]
    pub cache_write_1h: Option<f64>,
    /// Reading the prompt cache.
    pub cache_read: f64,
    /// Past this many prompt tokens (input and cache together) a call is
    /// billed at [`Price::long_context`] instead (Sonnet 4 and 4.5 above
    /// 200K).
    #[serde(skip)]
    pub long_context: Option<(u64, &'static Price)>,
}

impl Price {
    const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Price {
        Price {
            input,
            output,
            cache_write,
            cache_write_1h: None,
            cache_read,
            long_context: None,
        }
    }

    /// The one-hour cache write price.
    pub(crate) fn cache_write_1h(&self) -> f64 {
        self.cache_write_1h.unwrap_or(self.input * 2.0)
    }

    /// Whether every price is a finite amount, zero or more.
    fn is_valid(&self) -> bool {
        [
            self.input,
            self.output,
            self.cache_write,
            self.cache_write_1h(),
            self.cache_read,
        ]
        .iter()
        .all(|p| p.is_finite() && *p >= 0.0)
    }
}

const OPUS_5_5: Price = Price::new(4.0, 20.0, 5.0, 0.20);
const OPUS_4_5: Price = Price::new(5.0, 25.0, 6.25, 0.50);
const OPUS_4: Price = Price::new(15.0, 75.0, 18.75, 1.50);
const SONNET_5: Price = Price::new(2.0, 10.0, 2.50, 0.20);
const SONNET_4: Price = Price::new(3.0, 15.0, 3.75, 0.30);
/// Sonnet 4 and 4.5 past 200K prompt tokens.
const SONNET_4_LONG: Price = Price::new(6.0, 22.50, 7.50, 0.60);
const SONNET_4_WITH_LONG: Price = Price {
    long_context: Some((200_000, &SONNET_4_LONG)),
    ..SONNET_4
};
/// Haiku 5.5 up to 100K prompt tokens, and past them.
const HAIKU_5_5_LONG: Price = Price::new(0.50, 2.50, 0.625, 0.05);
const HAIKU_5_5: Price = Price {
    long_context: Some((100_000, &HAIKU_5_5_LONG)),
    ..Price::new(0.10, 0.50, 0.125, 0.01)
};
const HAIKU_4_5: Price = Price::new(1.0, 5.0, 1.25, 0.10);
const HAIKU_3_5: Price = Price::new(0.80, 4.0, 1.0, 0.08);
const HAIKU_3: Price = Price {
    cache_write_1h: Some(0.50),
    ..Price::new(0.25, 1.25, 0.30, 0.03)
};
const FABLE_5: Price = Price::new(10.0, 50.0, 12.50, 1.0);
const FABLE_5_1: Price = Price::new(10.0, 50.0, 12.50, 0.25);

/// The list prices, by model id without its date.
const LIST: &[(&str, Price)] = &[
    ("claude-fable-5-1", FABLE_5_1),
    ("claude-mythos-5-1", FABLE_5_1),
    ("claude-fable-5", FABLE_5),
    ("claude-mythos-5", FABLE_5),
    ("claude-opus-5-5", OPUS_5_5),
    ("claude-opus-5", OPUS_4_5),
    ("claude-opus-4-8", OPUS_4_5),
    ("claude-opus-4-7", OPUS_4_5),
    ("claude-opus-4-6", OPUS_4_5),
    ("claude-opus-4-5", OPUS_4_5),
    ("claude-opus-4-1", OPUS_4),
    ("claude-opus-4", OPUS_4),
    ("claude-opus-4-0", OPUS_4),
    ("claude-3-opus", OPUS_4),
    ("claude-sonnet-5-5", SONNET_5),
    ("claude-sonnet-5", SONNET_5),
    ("claude-sonnet-4-6", SONNET_4),
    ("claude-sonnet-4-5", SONNET_4_WITH_LONG),
    ("claude-sonnet-4", SONNET_4_WITH_LONG),
    ("claude-sonnet-4-0", SONNET_4_WITH_LONG),
    ("claude-3-7-sonnet", SONNET_4),
    ("claude-3-5-sonnet", SONNET_4),
    ("claude-haiku-5-5", HAIKU_5_5),
    ("claude-haiku-4-5", HAIKU_4_5),
    ("claude-3-5-haiku", HAIKU_3_5),
    ("claude-3-haiku", HAIKU_3),
];

/// The prices a server goes by: the list, and the operator's overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    overrides: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The list prices with `overrides` (the value of
    /// [`PRICES_VARIABLE`], if set) over them. The error names the
    /// variable and what is wrong.
    pub fn new(overrides: Option<&str>) -> Result<PriceTable, String> {
        let Some(text) = overrides.filter(|t| !t.trim().is_empty()) else {
            return Ok(PriceTable::default());
        };
        let parsed: BTreeMap<String, Price> = serde_json::from_str(text).map_err(|e| {
            format!(
                "{PRICES_VARIABLE} must be a JSON object from model id to \
                 {{\"input\", \"output\", \"cache_write\", \"cache_read\"}} in US dollars per \
                 million tokens: {e}"
            )
        })?;
        let mut overrides = BTreeMap::new();
        for (model, price) in parsed {
            if !price.is_valid() {
                return Err(format!(
                    "{PRICES_VARIABLE}: the prices of {model:?} must be finite and not negative"
                ));
            }
            overrides.insert(base_id(&model), price);
        }
        Ok(PriceTable { overrides })
    }

    /// The overrides, as [`PRICES_VARIABLE`] holds them; `None` without.
    pub(crate) fn overrides_json(&self) -> Option<String> {
        #[derive(serde::Serialize)]
        struct Out {
            input: f64,
            output: f64,
            cache_write: f64,
            cache_write_1h: f64,
            cache_read: f64,
        }
        if self.overrides.is_empty() {
            return None;
        }
        let out: BTreeMap<&String, Out> = self
            .overrides
            .iter()
            .map(|(model, p)| {
                let out = Out {
                    input: p.input,
                    output: p.output,
                    cache_write: p.cache_write,
                    cache_write_1h: p.cache_write_1h(),
                    cache_read: p.cache_read,
                };
                (model, out)
            })
            .collect();
        serde_json::to_string(&out).ok()
    }

    /// The price of `model`, if it has one.
    pub(crate) fn get(&self, model: &str) -> Option<Price> {
        let id = base_id(model);
        self.overrides.get(&id).copied().or_else(|| {
            LIST.iter()
                .find(|(name, _)| *name == id)
                .map(|(_, price)| *price)
        })
    }
}

/// Whether `model` is one of Claude Code's aliases (`sonnet`, `opus`,
/// `haiku`, `opusplan`, `default`, with or without `[1m]`), which the SDK
/// resolves to a full id: the endpoint prices that id on each call.
pub(crate) fn is_alias(model: &str) -> bool {
    let name = model.trim().to_ascii_lowercase();
    let name = name.strip_suffix("[1m]").unwrap_or(&name);
    matches!(name, "sonnet" | "opus" | "haiku" | "opusplan" | "default")
}

/// A model id as the table knows it: lower case, without the provider's
/// wrapping (`us.anthropic.` … `-v1:0`, `…@20250929`) and without a date
/// suffix.
pub(crate) fn base_id(model: &str) -> String {
    let mut id = model.trim().to_ascii_lowercase();
    // Bedrock: `[region.]anthropic.claude-…-v1:0`.
    if let Some(at) = id.find("anthropic.") {
        id = id[at + "anthropic.".len()..].to_owned();
    }
    if let Some(at) = id.find(['@', ':']) {
        id.truncate(at);
    }
    for suffix in ["-v1", "-v2"] {
        if let Some(stripped) = id.strip_suffix(suffix) {
            id = stripped.to_owned();
        }
    }
    // A date: `-20250929`, or `-latest`.
    if let Some((head, tail)) = id.rsplit_once('-')
        && (tail == "latest" || (tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_digit())))
    {
        id = head.to_owned();
    }
    id
}
