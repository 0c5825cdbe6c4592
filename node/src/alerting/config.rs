//! Alerting configuration: sinks, retries and circuit breakers, with their defaults.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::uri::AMQPUri;
use serde::{Deserialize, Serialize};

use super::AlertingError;

/// Where and how alerts are delivered (the `alerting` section of the node's YAML).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// RabbitMQ topic exchange to publish alerts to, if any.
    pub rabbitmq: Option<RabbitConfig>,
    /// HTTP endpoints that receive signed alert POSTs.
    pub webhooks: Vec<WebhookConfig>,
    /// Retries of one delivery to one sink.
    pub retry: RetryConfig,
    /// Circuit breaker applied to each sink.
    pub breaker: BreakerConfig,
}

/// The RabbitMQ sink.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// Broker address, `amqp://user:password@host:5672/%2f` (may carry a password, so it
    /// serializes, like its `Debug` output, as `scheme://host:port` only).
    #[serde(serialize_with = "serialize_origin")]
    pub url: String,
    /// Topic exchange that alerts are published to (declared durable).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Bound on connecting and on waiting for one publisher confirm, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// One webhook sink.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name of the sink in metrics, logs and errors.
    pub name: String,
    /// Endpoint that receives the POST (its path or query may be a credential, so it
    /// serializes, like its `Debug` output, as `scheme://host:port` only).
    #[serde(serialize_with = "serialize_origin")]
    pub url: String,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (one trailing newline is ignored).
    pub secret_file: Option<PathBuf>,
    /// Bound on one HTTP attempt, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Exponential backoff between tries of one delivery to one sink, or of one export write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries, the first one included.
    pub attempts: u32,
    /// Wait after the first failed try, in milliseconds.
    pub initial_backoff_ms: u64,
    /// Factor applied to the wait after each further failed try.
    pub multiplier: f64,
    /// Upper bound on one wait, in milliseconds.
    pub max_backoff_ms: u64,
}

/// Per-sink circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed deliveries that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker fails calls fast before one trial, in milliseconds.
    pub open_ms: u64,
}

fn default_exchange() -> String {
    "sentinel.alerts".to_owned()
}

fn default_timeout_ms() -> u64 {
    5000
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            initial_backoff_ms: 1000,
            multiplier: 2.0,
            max_backoff_ms: 30_000,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

impl RetryConfig {
    /// The first out-of-range field (as `retry.<key>`) and why.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.attempts == 0 {
            return Some(("retry.attempts", "must be at least 1"));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Some(("retry.multiplier", "must be a finite number ≥ 1"));
        }
        None
    }

    /// Wait before the next try after `failed_tries` tries (≥ 1) have failed.
    pub fn delay_after(&self, failed_tries: u32) -> Duration {
        let exponent = i32::try_from(failed_tries.saturating_sub(1)).unwrap_or(i32::MAX);
        let ms = self.initial_backoff_ms as f64 * self.multiplier.powi(exponent);
        Duration::from_millis(ms.min(self.max_backoff_ms as f64) as u64)
    }
}

impl AlertingConfig {
    /// Checks every value the defaults do not guarantee, naming the offending field.
    pub fn validate(&self) -> Result<(), AlertingError> {
        if let Some((field, reason)) = self.retry.problem() {
            return Err(invalid(field, reason));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(invalid("breaker.failure_threshold", "must be at least 1"));
        }
        if let Some(rabbit) = &self.rabbitmq {
            rabbit.uri()?;
            if rabbit.exchange.is_empty() {
                return Err(invalid("rabbitmq.exchange", "must not be empty"));
            }
            if rabbit.timeout_ms == 0 {
                return Err(invalid("rabbitmq.timeout_ms", "must be at least 1"));
            }
        }
        for (index, webhook) in self.webhooks.iter().enumerate() {
            let field = |name: &str| format!("webhooks[{index}].{name}");
            if webhook.name.is_empty() {
                return Err(invalid(&field("name"), "must not be empty"));
            }
            if self.webhooks[..index]
                .iter()
                .any(|w| w.name == webhook.name)
            {
                return Err(invalid(&field("name"), "is used by another webhook"));
            }
            match reqwest::Url::parse(&webhook.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(_) => return Err(invalid(&field("url"), "must be an http or https URL")),
                Err(error) => return Err(invalid(&field("url"), &error.to_string())),
            }
            webhook.secret_source(index)?;
            if webhook.timeout_ms == 0 {
                return Err(invalid(&field("timeout_ms"), "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl RabbitConfig {
    /// The parsed broker address.
    pub(crate) fn uri(&self) -> Result<AMQPUri, AlertingError> {
        self.url
            .parse()
            .map_err(|reason: String| invalid("rabbitmq.url", &reason))
    }
}

/// Where a webhook's secret is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretSource<'a> {
    /// An environment variable.
    Env(&'a str),
    /// A file.
    File(&'a Path),
}

impl WebhookConfig {
    /// The one configured source of the secret of webhook `index`.
    pub(crate) fn secret_source(&self, index: usize) -> Result<SecretSource<'_>, AlertingError> {
        match (&self.secret_env, &self.secret_file) {
            (Some(variable), None) => Ok(SecretSource::Env(variable)),
            (None, Some(path)) => Ok(SecretSource::File(path)),
            _ => Err(invalid(
                &format!("webhooks[{index}].secret_env"),
                "exactly one of secret_env and secret_file must be set",
            )),
        }
    }
}

fn invalid(field: &str, reason: &str) -> AlertingError {
    AlertingError::InvalidConfig {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Scheme, host and port of a URL: what can be shown without leaking credentials.
pub(crate) fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => {
            let host = url.host_str().unwrap_or_default();
            match url.port() {
                Some(port) => format!("{}://{host}:{port}", url.scheme()),
                None => format!("{}://{host}", url.scheme()),
            }
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// Serializes a URL as [`url_origin`], leaving out credentials, path and query.
fn serialize_origin<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&url_origin(url))
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &url_origin(&self.url))
            .field("exchange", &self.exchange)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &url_origin(&self.url))
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AlertingConfig, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    #[test]
    fn empty_section_takes_the_documented_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config.rabbitmq, None);
        assert!(config.webhooks.is_empty());
        assert_eq!(
            config.retry,
            RetryConfig {
                attempts: 3,
                initial_backoff_ms: 1000,
                multiplier: 2.0,
                max_backoff_ms: 30_000
            }
        );
        assert_eq!(
            config.breaker,
            BreakerConfig {
                failure_threshold: 5,
                open_ms: 30_000
            }
        );
        config.validate().unwrap();
    }

    #[test]
    fn sink_defaults_fill_in_omitted_keys() {
        let config = parse(
            "rabbitmq: {url: 'amqp://127.0.0.1:5672/%2f'}\n\
             webhooks: [{name: ops, url: 'https://hooks.example.com/x', secret_env: OPS_SECRET}]\n\
             retry: {attempts: 5}\n",
        )
        .unwrap();
        let rabbit = config.rabbitmq.as_ref().unwrap();
        assert_eq!(rabbit.exchange, "sentinel.alerts");
        assert_eq!(rabbit.timeout_ms, 5000);
        assert_eq!(config.webhooks[0].timeout_ms, 5000);
        assert_eq!(config.retry.attempts, 5);
        assert_eq!(config.retry.initial_backoff_ms, 1000);
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        for yaml in [
            "rabbit: {url: 'amqp://h'}",
            "rabbitmq: {url: 'amqp://h', exchnage: x}",
            "webhooks: [{name: a, url: 'http://h', secret: inline}]",
            "retry: {attempt: 2}",
            "breaker: {threshold: 2}",
        ] {
            let error = parse(yaml).unwrap_err().to_string();
            assert!(error.contains("unknown field"), "{yaml}: {error}");
        }
    }

    #[test]
    fn validation_names_the_offending_field() {
        let mut config = parse(
            "webhooks:\n\
             - {name: a, url: 'http://h/1', secret_env: A}\n\
             - {name: a, url: 'http://h/2', secret_env: B}\n",
        )
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("webhooks[1].name"), "{error}");

        config.webhooks[1].name = "b".to_owned();
        config.webhooks[1].secret_file = Some(PathBuf::from("/run/secret"));
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("webhooks[1].secret_env"), "{error}");

        config.webhooks[1].secret_env = None;
        config.webhooks[0].url = "ftp://h".to_owned();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("webhooks[0].url"), "{error}");

        config.webhooks[0].url = "http://h".to_owned();
        config.retry.attempts = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("retry.attempts"), "{error}");
    }

    #[test]
    fn debug_and_serialized_output_hide_credentials_in_urls() {
        let config = parse(
            "rabbitmq: {url: 'amqp://sentinel:hunter2@mq.internal:5672/%2f'}\n\
             webhooks: [{name: chat, url: 'https://hooks.example.com/services/T0/B0/tok3n?key=k3y', \
             secret_env: CHAT_SECRET}]\n",
        )
        .unwrap();
        let serialized = serde_json::to_string(&config).unwrap();
        for shown in [format!("{config:?}"), serialized] {
            for secret in ["hunter2", "sentinel:", "tok3n", "k3y", "/services"] {
                assert!(!shown.contains(secret), "{secret} leaked: {shown}");
            }
            assert!(shown.contains("amqp://mq.internal:5672"), "{shown}");
            assert!(shown.contains("https://hooks.example.com"), "{shown}");
            assert!(shown.contains("CHAT_SECRET"), "{shown}");
        }
    }

    #[test]
    fn backoff_doubles_from_the_initial_wait_up_to_the_cap() {
        let retry = RetryConfig::default();
        let waits: Vec<u64> = (1..=7)
            .map(|n| retry.delay_after(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
        assert_eq!(retry.delay_after(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn backoff_follows_a_custom_multiplier() {
        let retry = RetryConfig {
            attempts: 4,
            initial_backoff_ms: 100,
            multiplier: 1.5,
            max_backoff_ms: 200,
        };
        let waits: Vec<u64> = (1..=3)
            .map(|n| retry.delay_after(n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 150, 200]);
    }
}
