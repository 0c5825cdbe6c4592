//! Built-in knowledge the traces do not carry: model list prices, prefill speed,
//! and the default set of services.

use serde::Serialize;

use super::{ModelConfig, ServiceConfig, Workload};

/// Input length of the llmperf measurements; TTFT beyond it grows with prefill time.
pub const REFERENCE_INPUT_TOKENS: u64 = 550;

/// Price and speed of a model, as producers that report cost would compute it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelTraits {
    /// List price of input tokens, USD per million.
    pub input_usd_per_mtok: f64,
    /// List price of output tokens, USD per million.
    pub output_usd_per_mtok: f64,
    /// Extra time to first token per input token beyond [`REFERENCE_INPUT_TOKENS`], ms
    /// (an assumption: llmperf measured one input length only).
    pub prefill_ms_per_token: f64,
}

impl ModelTraits {
    /// Cost of one call in USD at list price.
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_usd_per_mtok
            + completion_tokens as f64 * self.output_usd_per_mtok)
            * 1e-6
    }

    /// Extra time to first token for a prompt of `prompt_tokens`, ms.
    pub fn prefill_ms(&self, prompt_tokens: u64) -> f64 {
        prompt_tokens.saturating_sub(REFERENCE_INPUT_TOKENS) as f64 * self.prefill_ms_per_token
    }
}

/// Models the generator knows, with their traits (prices as in `sentinel_core::pricing`'s
/// built-in table: vendor list prices, Replicate's for Llama-2).
pub const MODELS: [(&str, ModelTraits); 6] = [
    (
        "gpt-4o",
        ModelTraits {
            input_usd_per_mtok: 2.5,
            output_usd_per_mtok: 10.0,
            prefill_ms_per_token: 0.08,
        },
    ),
    (
        "gpt-4o-mini",
        ModelTraits {
            input_usd_per_mtok: 0.15,
            output_usd_per_mtok: 0.6,
            prefill_ms_per_token: 0.04,
        },
    ),
    (
        "claude-3-5-sonnet",
        ModelTraits {
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
            prefill_ms_per_token: 0.1,
        },
    ),
    (
        "llama-2-70b-chat",
        ModelTraits {
            input_usd_per_mtok: 0.65,
            output_usd_per_mtok: 2.75,
            prefill_ms_per_token: 0.12,
        },
    ),
    (
        "llama-2-13b-chat",
        ModelTraits {
            input_usd_per_mtok: 0.1,
            output_usd_per_mtok: 0.5,
            prefill_ms_per_token: 0.05,
        },
    ),
    (
        "llama-2-7b-chat",
        ModelTraits {
            input_usd_per_mtok: 0.05,
            output_usd_per_mtok: 0.25,
            prefill_ms_per_token: 0.03,
        },
    ),
];

/// The traits of `model`, if the generator knows it.
pub fn model_traits(model: &str) -> Option<ModelTraits> {
    MODELS.iter().find(|(m, _)| *m == model).map(|(_, t)| *t)
}

fn model(model: &str, provider: &str, latency_profile: &str, weight: f64) -> ModelConfig {
    ModelConfig {
        model: model.to_owned(),
        provider: provider.to_owned(),
        latency_profile: latency_profile.to_owned(),
        weight,
    }
}

fn service(
    name: &str,
    workload: Workload,
    share: f64,
    reports_cost: bool,
    models: Vec<ModelConfig>,
) -> ServiceConfig {
    ServiceConfig {
        name: name.to_owned(),
        workload,
        share,
        reports_cost,
        max_prompt_tokens: super::default_max_prompt_tokens(),
        max_completion_tokens: super::default_max_completion_tokens(),
        models,
    }
}

/// The default services. Proprietary models borrow the latency profile of a measured
/// Llama-2 host of similar speed (the traces measure no OpenAI or Anthropic endpoint).
pub fn default_services() -> Vec<ServiceConfig> {
    use Workload::{Code, Conversation, LongContext};
    let gpt_4o = || model("gpt-4o", "openai", "together_70b", 1.0);
    let gpt_4o_mini = || model("gpt-4o-mini", "openai", "fireworks_7b", 1.0);
    let sonnet = || model("claude-3-5-sonnet", "anthropic", "fireworks_70b", 1.0);
    let weighted = |mut m: ModelConfig, w: f64| {
        m.weight = w;
        m
    };
    vec![
        service(
            "chat-api",
            Conversation,
            0.30,
            false,
            vec![
                weighted(gpt_4o(), 0.50),
                weighted(gpt_4o_mini(), 0.35),
                weighted(sonnet(), 0.15),
            ],
        ),
        service(
            "code-assistant",
            Code,
            0.20,
            true,
            vec![weighted(sonnet(), 0.6), weighted(gpt_4o(), 0.4)],
        ),
        service(
            "doc-summarizer",
            LongContext,
            0.10,
            true,
            vec![weighted(sonnet(), 0.7), weighted(gpt_4o_mini(), 0.3)],
        ),
        service(
            "support-bot",
            Conversation,
            0.20,
            false,
            vec![
                model("llama-2-13b-chat", "together", "together_13b", 0.65),
                model("llama-2-7b-chat", "anyscale", "anyscale_7b", 0.35),
            ],
        ),
        service(
            "search-rag",
            LongContext,
            0.12,
            false,
            vec![
                model("llama-2-70b-chat", "perplexity", "perplexity_70b", 0.7),
                weighted(gpt_4o_mini(), 0.3),
            ],
        ),
        service(
            "eval-batch",
            Code,
            0.08,
            true,
            vec![model("llama-2-70b-chat", "anyscale", "anyscale_70b", 1.0)],
        ),
    ]
}
