//! Model price table and per-event metric extraction (DESIGN §3.2).
//!
//! Prices are data: `core/data/model_prices.json` (USD per million input and output
//! tokens, with its source and date) is embedded as the default table, and
//! configuration can replace it ([`PriceTable::from_json`]) or extend it
//! ([`PriceTable::extend_from_json`], [`PriceTable::with_overrides`]).
//!
//! Model lookup ([`PriceTable::lookup`]) tries, in order, stopping at the first hit:
//! 1. the name exactly as given;
//! 2. trimmed and lower-cased;
//! 3. without a provider prefix: everything up to the last `/` (`openai/gpt-4o`,
//!    `meta-llama/Llama-2-7b-chat-hf`, `models/gemini-1.5-pro`), then leading
//!    letters-only `vendor.` segments (`us.anthropic.claude-…`);
//! 4. then repeatedly without one version suffix: `@…` (Vertex), `-latest`, a date
//!    `-YYYY-MM-DD`, an 8-, 4- or 3-digit tag (`-20241022`, `-0613`, `-2407`, `-002`), or
//!    `-v<digits>[.:…]` (`-v2:0`, `-v0.1`).
//!
//! At every step a model entry wins over an alias entry of the same name.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::metric::{Metric, MetricValues};

/// The embedded default price table.
const BUILTIN_PRICES: &str = include_str!("../data/model_prices.json");

/// The list price of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// USD per million input (prompt) tokens.
    pub input_per_million: f64,
    /// USD per million output (completion) tokens.
    pub output_per_million: f64,
}

impl ModelPrice {
    /// The cost in USD of a call with these token counts.
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_million
            + completion_tokens as f64 * self.output_per_million)
            / 1e6
    }

    /// Rejects negative or non-finite prices.
    fn check(&self, model: &str) -> Result<(), PricingError> {
        for (side, price) in [
            ("input_per_million", self.input_per_million),
            ("output_per_million", self.output_per_million),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(PricingError::InvalidPrice {
                    model: model.to_owned(),
                    problem: format!("{side} must be a finite number ≥ 0, got {price}"),
                });
            }
        }
        Ok(())
    }
}

/// Why a price table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The document is not a valid price table.
    #[error("price table is not valid: {0}")]
    Json(String),
    /// A price is negative or not finite.
    #[error("price of model {model:?}: {problem}")]
    InvalidPrice {
        /// The model.
        model: String,
        /// What is wrong.
        problem: String,
    },
    /// A model or alias name is empty.
    #[error("model and alias names must not be empty")]
    EmptyName,
    /// A name appears twice once lower-cased.
    #[error("{0:?} is listed twice (names are compared case-insensitively)")]
    Duplicate(String),
    /// An alias points to a model that is not in the table.
    #[error("alias {alias:?} points to {target:?}, which is not a model of the table")]
    UnknownAliasTarget {
        /// The alias.
        alias: String,
        /// The missing model it points to.
        target: String,
    },
}

/// The JSON document of a price table.
#[derive(Deserialize)]
struct PriceFile {
    models: BTreeMap<String, ModelPrice>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

/// A model found in a [`PriceTable`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceMatch<'a> {
    /// The table's name of the model (after alias resolution).
    pub model: &'a str,
    /// Its price.
    pub price: ModelPrice,
}

/// Prices per model (names lower-case) plus aliases; deterministic (ordered maps).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
    aliases: BTreeMap<String, String>,
}

impl Default for PriceTable {
    /// The embedded table of `core/data/model_prices.json`.
    fn default() -> Self {
        PriceTable::builtin().clone()
    }
}

impl PriceTable {
    /// The embedded table of `core/data/model_prices.json`, parsed once.
    pub fn builtin() -> &'static PriceTable {
        static BUILTIN: OnceLock<PriceTable> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            PriceTable::from_json(BUILTIN_PRICES)
                .expect("the embedded model_prices.json is a valid price table (checked by a test)")
        })
    }

    /// Parses a complete table: `{"models": {name: {input_per_million, output_per_million}}, "aliases"?: {alias: model}}`; other top-level keys (`source`, `as_of`, `unit`) are documentation.
    pub fn from_json(json: &str) -> Result<PriceTable, PricingError> {
        let mut table = PriceTable {
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
        };
        table.extend_from_json(json)?;
        Ok(table)
    }

    /// Adds the models and aliases of a table document, replacing entries of the same name; on error the table is unchanged.
    pub fn extend_from_json(&mut self, json: &str) -> Result<(), PricingError> {
        let file: PriceFile =
            serde_json::from_str(json).map_err(|e| PricingError::Json(e.to_string()))?;
        let mut next = self.clone();
        let mut seen_models = BTreeMap::new();
        for (name, price) in &file.models {
            let key = normalised_key(name, &mut seen_models)?;
            price.check(name)?;
            next.models.insert(key, *price);
        }
        let mut seen_aliases = BTreeMap::new();
        for (alias, target) in &file.aliases {
            let key = normalised_key(alias, &mut seen_aliases)?;
            next.aliases.insert(key, target.trim().to_ascii_lowercase());
        }
        next.check_aliases()?;
        *self = next;
        Ok(())
    }

    /// The table with configured prices added or replacing entries of the same name.
    pub fn with_overrides(
        mut self,
        overrides: &BTreeMap<String, ModelPrice>,
    ) -> Result<PriceTable, PricingError> {
        let mut seen = BTreeMap::new();
        for (name, price) in overrides {
            let key = normalised_key(name, &mut seen)?;
            price.check(name)?;
            self.models.insert(key, *price);
        }
        Ok(self)
    }

    /// Number of models (aliases not counted).
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table has no models.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Finds a model's price using the normalisation of the module docs.
    pub fn lookup(&self, model: &str) -> Option<PriceMatch<'_>> {
        if let Some(found) = self.get(model) {
            return Some(found);
        }
        let lower = model.trim().to_ascii_lowercase();
        if let Some(found) = self.get(&lower) {
            return Some(found);
        }
        let mut name = lower.rsplit('/').next().unwrap_or_default();
        if let Some(found) = self.get(name) {
            return Some(found);
        }
        while let Some((vendor, rest)) = name.split_once('.') {
            let is_vendor = !vendor.is_empty() && vendor.bytes().all(|b| b.is_ascii_lowercase());
            if !is_vendor || !rest.starts_with(|c: char| c.is_ascii_lowercase()) {
                break;
            }
            name = rest;
            if let Some(found) = self.get(name) {
                return Some(found);
            }
        }
        while let Some(shorter) = strip_version_suffix(name) {
            name = shorter;
            if let Some(found) = self.get(name) {
                return Some(found);
            }
        }
        None
    }

    /// A model entry, else an alias entry, with exactly this name.
    fn get(&self, name: &str) -> Option<PriceMatch<'_>> {
        let (model, price) = self.models.get_key_value(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.models.get_key_value(target))
        })?;
        Some(PriceMatch {
            model,
            price: *price,
        })
    }

    /// Every alias must point to a model.
    fn check_aliases(&self) -> Result<(), PricingError> {
        match self
            .aliases
            .iter()
            .find(|(_, target)| !self.models.contains_key(*target))
        {
            Some((alias, target)) => Err(PricingError::UnknownAliasTarget {
                alias: alias.clone(),
                target: target.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The lower-case key of a name, rejecting empty names and names repeated within one document.
fn normalised_key(name: &str, seen: &mut BTreeMap<String, ()>) -> Result<String, PricingError> {
    let key = name.trim().to_ascii_lowercase();
    if key.is_empty() {
        return Err(PricingError::EmptyName);
    }
    if seen.insert(key.clone(), ()).is_some() {
        return Err(PricingError::Duplicate(key));
    }
    Ok(key)
}

/// The name without its last version suffix (see the module docs), if it has one.
fn strip_version_suffix(name: &str) -> Option<&str> {
    if let Some((head, _)) = name.rsplit_once('@') {
        return Some(head);
    }
    if let Some(head) = name.strip_suffix("-latest") {
        return Some(head);
    }
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = name.rsplitn(4, '-');
    let last = parts.next()?;
    let (middle, first) = (parts.next(), parts.next());
    if let (Some(month), Some(year), Some(head)) = (middle, first, parts.next()) {
        if last.len() == 2
            && month.len() == 2
            && year.len() == 4
            && all_digits(last)
            && all_digits(month)
            && all_digits(year)
        {
            return Some(head);
        }
    }
    let (head, tail) = name.rsplit_once('-')?;
    let version_tag = tail.strip_prefix('v').is_some_and(|v| {
        v.starts_with(|c: char| c.is_ascii_digit())
            && v.bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b':')
    });
    let digit_tag = all_digits(tail) && matches!(tail.len(), 3 | 4 | 8);
    (version_tag || digit_tag).then_some(head)
}

/// Where an event's cost metric came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostOrigin {
    /// Reported by the producer.
    Reported,
    /// Computed from the price table and the token counts.
    Priced,
    /// Not known: no reported cost, and tokens or the model's price are missing.
    Unknown,
}

/// The metrics of one event (DESIGN §3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    /// The metric values; `None` where the event does not determine the metric.
    pub values: MetricValues,
    /// Where the cost came from.
    pub cost_origin: CostOrigin,
    /// The model name when pricing was needed (no reported cost, prompt and completion tokens known) but the table has no price for it.
    pub unpriced_model: Option<String>,
}

/// Completion tokens a call needs before its tokens per second says anything about generation speed.
pub const MIN_TOKENS_FOR_RATE: u64 = 16;

/// Extracts the per-event metrics; cost is the reported one, else priced from `prices`, never silently zero.
///
/// * `latency_ms`, `prompt_tokens`, `completion_tokens`: as carried (non-finite → absent);
/// * `total_tokens`: reported, else `prompt + completion` when both are known;
/// * `cost_usd`: reported, else priced when prompt and completion tokens are known and
///   the model has a price; an unknown model is reported in
///   [`Extraction::unpriced_model`] and the cost stays absent;
/// * `tokens_per_second`: `completion_tokens / (latency_ms / 1000)` when both are known,
///   the latency is positive and the completion has at least [`MIN_TOKENS_FOR_RATE`]
///   tokens (a short answer's latency is time to first token, not generation speed).
pub fn extract_metrics(event: &Event, prices: &PriceTable) -> Extraction {
    let finite = |x: f64| x.is_finite().then_some(x);
    let latency = finite(event.latency_ms);
    let (prompt, completion) = (event.prompt_tokens, event.completion_tokens);
    let total = event
        .total_tokens
        .or_else(|| prompt?.checked_add(completion?));

    let mut unpriced_model = None;
    let (cost, cost_origin) = match event.cost_usd.and_then(finite) {
        Some(cost) => (Some(cost), CostOrigin::Reported),
        None => match (prompt, completion) {
            (Some(p), Some(c)) => match prices.lookup(&event.model) {
                Some(found) => (Some(found.price.cost_usd(p, c)), CostOrigin::Priced),
                None => {
                    unpriced_model = Some(event.model.clone());
                    (None, CostOrigin::Unknown)
                }
            },
            _ => (None, CostOrigin::Unknown),
        },
    };
    let tokens_per_second = match (completion, latency) {
        (Some(c), Some(ms)) if ms > 0.0 && c >= MIN_TOKENS_FOR_RATE => {
            Some(c as f64 / (ms / 1000.0))
        }
        _ => None,
    };

    let mut values = MetricValues::default();
    values.set(Metric::LatencyMs, latency);
    values.set(Metric::PromptTokens, prompt.map(|t| t as f64));
    values.set(Metric::CompletionTokens, completion.map(|t| t as f64));
    values.set(Metric::TotalTokens, total.map(|t| t as f64));
    values.set(Metric::CostUsd, cost);
    values.set(Metric::TokensPerSecond, tokens_per_second);
    Extraction {
        values,
        cost_origin,
        unpriced_model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price_of(model: &str) -> Option<(&'static str, f64, f64)> {
        PriceTable::builtin().lookup(model).map(|m| {
            (
                m.model,
                m.price.input_per_million,
                m.price.output_per_million,
            )
        })
    }

    #[test]
    fn builtin_table_has_the_required_models() {
        let table = PriceTable::builtin();
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4-turbo",
            "gpt-4",
            "gpt-3.5-turbo",
            "o1",
            "o1-mini",
            "claude-3-5-sonnet",
            "claude-3-5-haiku",
            "claude-3-opus",
            "claude-3-haiku",
            "gemini-1.5-pro",
            "gemini-1.5-flash",
            "llama-2-7b-chat",
            "llama-2-13b-chat",
            "llama-2-70b-chat",
            "mixtral-8x7b",
            "mistral-large",
        ] {
            assert_eq!(table.lookup(model).map(|m| m.model), Some(model));
        }
        assert_eq!(price_of("gpt-4o"), Some(("gpt-4o", 2.5, 10.0)));
        assert_eq!(
            price_of("claude-3-opus"),
            Some(("claude-3-opus", 15.0, 75.0))
        );
        assert_eq!(PriceTable::default(), *table);
    }

    #[test]
    fn lookup_normalises_case_prefixes_and_version_suffixes() {
        let cases = [
            ("GPT-4o", "gpt-4o"),
            ("openai/gpt-4o-mini", "gpt-4o-mini"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4-0613", "gpt-4"),
            ("gpt-4-32k-0613", "gpt-4-32k"),
            ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
            ("gpt-35-turbo", "gpt-3.5-turbo"),
            ("gpt-4-1106-preview", "gpt-4-turbo"),
            ("o1-2024-12-17", "o1"),
            ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
            ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
            (
                "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                "claude-3-5-haiku",
            ),
            ("models/gemini-1.5-pro-002", "gemini-1.5-pro"),
            ("gemini-1.5-flash-latest", "gemini-1.5-flash"),
            ("gemini-1.5-flash-8b-001", "gemini-1.5-flash-8b"),
            ("meta-llama/Llama-2-70b-chat-hf", "llama-2-70b-chat"),
            ("meta.llama2-13b-chat-v1", "llama-2-13b-chat"),
            ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
            ("open-mixtral-8x7b", "mixtral-8x7b"),
            ("mistral-large-2411", "mistral-large"),
            ("  Mistral-Large-Latest ", "mistral-large"),
        ];
        for (given, expected) in cases {
            assert_eq!(
                PriceTable::builtin().lookup(given).map(|m| m.model),
                Some(expected),
                "{given}"
            );
        }
        for unknown in [
            "gpt-5",
            "claude-2.1",
            "my-finetune",
            "",
            "gpt-4o-audio-preview",
            "@",
        ] {
            assert_eq!(PriceTable::builtin().lookup(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn tables_can_be_replaced_extended_and_overridden() {
        let custom = PriceTable::from_json(
            r#"{"models": {"My-Model": {"input_per_million": 1, "output_per_million": 2}},
                "aliases": {"mm": "my-model"}}"#,
        )
        .unwrap();
        assert_eq!(custom.len(), 1);
        assert_eq!(custom.lookup("MM").map(|m| m.model), Some("my-model"));
        assert_eq!(custom.lookup("gpt-4o"), None);

        let mut table = PriceTable::default();
        table
            .extend_from_json(
                r#"{"models": {"gpt-4o": {"input_per_million": 2, "output_per_million": 8}},
                    "aliases": {"prod-chat": "gpt-4o-mini"}}"#,
            )
            .unwrap();
        assert_eq!(table.lookup("gpt-4o").unwrap().price.input_per_million, 2.0);
        assert_eq!(table.lookup("prod-chat").unwrap().model, "gpt-4o-mini");

        let overrides = BTreeMap::from([(
            "internal-llm".to_owned(),
            ModelPrice {
                input_per_million: 0.0,
                output_per_million: 0.0,
            },
        )]);
        let table = table.with_overrides(&overrides).unwrap();
        assert_eq!(
            table.lookup("internal-llm").unwrap().price.cost_usd(10, 10),
            0.0
        );
        assert_eq!(table.len(), PriceTable::builtin().len() + 1);
    }

    #[test]
    fn bad_tables_are_typed_errors() {
        let bad = |json: &str| PriceTable::from_json(json).unwrap_err();
        assert!(matches!(bad("{"), PricingError::Json(_)));
        assert!(matches!(bad(r#"{"aliases": {}}"#), PricingError::Json(_)));
        assert!(matches!(
            bad(r#"{"models": {"m": {"input_per_million": -1, "output_per_million": 1}}}"#),
            PricingError::InvalidPrice { .. }
        ));
        assert!(matches!(
            bad(
                r#"{"models": {"m": {"input_per_million": 1, "output_per_million": 1}, "M": {"input_per_million": 1, "output_per_million": 1}}}"#
            ),
            PricingError::Duplicate(_)
        ));
        assert!(matches!(
            bad(r#"{"models": {" ": {"input_per_million": 1, "output_per_million": 1}}}"#),
            PricingError::EmptyName
        ));
        assert_eq!(
            bad(r#"{"models": {}, "aliases": {"a": "nowhere"}}"#),
            PricingError::UnknownAliasTarget {
                alias: "a".into(),
                target: "nowhere".into()
            }
        );
        let mut table = PriceTable::default();
        let before = table.clone();
        assert!(table
            .extend_from_json(r#"{"models": {}, "aliases": {"a": "nowhere"}}"#)
            .is_err());
        assert_eq!(table, before, "unchanged on error");
    }

    fn event(model: &str) -> Event {
        Event {
            model: model.into(),
            latency_ms: 2000.0,
            prompt_tokens: Some(1000),
            completion_tokens: Some(500),
            ..Event::default()
        }
    }

    #[test]
    fn metrics_are_extracted_and_cost_priced() {
        let e = extract_metrics(&event("gpt-4o-2024-08-06"), PriceTable::builtin());
        let get = |m| e.values.get(m);
        assert_eq!(get(Metric::LatencyMs), Some(2000.0));
        assert_eq!(get(Metric::PromptTokens), Some(1000.0));
        assert_eq!(get(Metric::CompletionTokens), Some(500.0));
        assert_eq!(get(Metric::TotalTokens), Some(1500.0));
        assert_eq!(
            get(Metric::CostUsd),
            Some((1000.0 * 2.5 + 500.0 * 10.0) / 1e6)
        );
        assert_eq!(get(Metric::TokensPerSecond), Some(250.0));
        assert_eq!(e.cost_origin, CostOrigin::Priced);
        assert_eq!(e.unpriced_model, None);
    }

    #[test]
    fn reported_values_win() {
        let mut ev = event("gpt-4o");
        ev.cost_usd = Some(0.5);
        ev.total_tokens = Some(1600);
        let e = extract_metrics(&ev, PriceTable::builtin());
        assert_eq!(e.values.get(Metric::CostUsd), Some(0.5));
        assert_eq!(e.values.get(Metric::TotalTokens), Some(1600.0));
        assert_eq!(e.cost_origin, CostOrigin::Reported);
    }

    #[test]
    fn unknown_models_are_reported_not_priced_at_zero() {
        let e = extract_metrics(&event("acme-llm-3"), PriceTable::builtin());
        assert_eq!(e.values.get(Metric::CostUsd), None);
        assert_eq!(e.cost_origin, CostOrigin::Unknown);
        assert_eq!(e.unpriced_model.as_deref(), Some("acme-llm-3"));
        assert_eq!(e.values.get(Metric::TotalTokens), Some(1500.0));
    }

    #[test]
    fn missing_inputs_leave_metrics_absent() {
        let ev = Event {
            model: "acme-llm-3".into(),
            latency_ms: 0.0,
            completion_tokens: Some(20),
            ..Event::default()
        };
        let e = extract_metrics(&ev, PriceTable::builtin());
        assert_eq!(e.values.get(Metric::TotalTokens), None);
        assert_eq!(e.values.get(Metric::CostUsd), None);
        assert_eq!(e.values.get(Metric::TokensPerSecond), None, "zero latency");
        let short = Event {
            latency_ms: 400.0,
            completion_tokens: Some(MIN_TOKENS_FOR_RATE - 1),
            ..ev.clone()
        };
        let e = extract_metrics(&short, PriceTable::builtin());
        assert_eq!(e.values.get(Metric::TokensPerSecond), None, "short answer");
        assert_eq!(e.unpriced_model, None, "pricing was not possible anyway");
        let nan = Event {
            latency_ms: f64::NAN,
            ..ev
        };
        assert_eq!(
            extract_metrics(&nan, PriceTable::builtin())
                .values
                .get(Metric::LatencyMs),
            None
        );
    }
}
