//! Leader-side alert delivery (DESIGN §7).
//!
//! The leader of a shard reads outbox entries (incident notifications) and hands each to
//! [`Dispatcher::deliver`], which returns `Ok` only once every configured sink has accepted
//! it: RabbitMQ with a publisher confirm, a webhook with a 2xx answer. The leader then
//! proposes the outbox acknowledgement; a new leader redelivers whatever is left, so
//! delivery is at-least-once and receivers drop repeats by `alert_id`. Each sink retries
//! with exponential backoff, has its own circuit breaker, and remembers the ids it accepted
//! recently so that a call repeated because another sink failed does not send them to it
//! again. Every network step is bounded by a timeout, so a slow or absent sink delays only
//! the notifications, never ingestion.

mod breaker;
mod config;
mod metrics;
mod rabbitmq;
mod recent;
mod signature;
mod webhook;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sentinel_core::{Anomaly, NotificationKind};
use tracing::{debug, warn};

use breaker::{Admission, CircuitBreaker};
use metrics::Outcome;
use rabbitmq::RabbitSink;
use recent::RecentIds;
use webhook::WebhookSink;

pub use config::{AlertingConfig, BreakerConfig, RabbitConfig, RetryConfig, WebhookConfig};
pub use metrics::AlertMetrics;
pub use rabbitmq::routing_key;
pub use signature::{sign, verify};
pub use webhook::{
    ALERT_ID_HEADER, EVENT_HEADER, INCIDENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};

/// How many accepted alert ids each sink remembers to avoid sending them again.
pub const RECENT_IDS_PER_SINK: usize = 8192;

/// Metrics label of the RabbitMQ sink.
const RABBITMQ_SINK: &str = "rabbitmq";

/// Why the alerting set-up or a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// A configuration value is out of range or malformed.
    #[error("invalid alerting configuration: {field}: {reason}")]
    InvalidConfig {
        /// Path of the offending key, e.g. `webhooks[0].url`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The environment variable naming a webhook secret is not set.
    #[error("webhook {webhook}: secret variable {variable} is not set")]
    SecretEnvMissing {
        /// Name of the webhook.
        webhook: String,
        /// The variable.
        variable: String,
    },
    /// A webhook secret file cannot be read.
    #[error("webhook {webhook}: cannot read secret file {}: {error}", .path.display())]
    SecretFile {
        /// Name of the webhook.
        webhook: String,
        /// The file.
        path: PathBuf,
        /// What reading it gave.
        error: std::io::Error,
    },
    /// A webhook secret is empty.
    #[error("webhook {webhook}: secret is empty")]
    EmptySecret {
        /// Name of the webhook.
        webhook: String,
    },
    /// The HTTP client for webhooks cannot be built (TLS set-up).
    #[error("cannot build the webhook HTTP client: {}", error_chain(.0))]
    HttpClient(reqwest::Error),
    /// At least one sink did not accept the alert; the others did and will not get it again.
    #[error("alert {alert_id} not delivered: {}", describe(.failures))]
    Undelivered {
        /// The alert.
        alert_id: String,
        /// Each sink that did not accept it, with why.
        failures: Vec<SinkFailure>,
    },
}

/// One sink's failure to accept one alert.
#[derive(Debug)]
pub struct SinkFailure {
    /// The sink: `rabbitmq` or `webhook:<name>`.
    pub sink: String,
    /// Why it did not accept the alert (after all tries).
    pub error: SinkError,
}

/// Why a sink did not accept an alert.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink's circuit breaker is open; nothing was sent.
    #[error("circuit breaker open after repeated failures; next trial in {} ms", .retry_in.as_millis())]
    BreakerOpen {
        /// Time until the breaker lets a trial through.
        retry_in: Duration,
    },
    /// The sink did not answer in time.
    #[error("no answer within {} ms", .after.as_millis())]
    Timeout {
        /// The configured timeout.
        after: Duration,
    },
    /// A RabbitMQ connection, channel or publish step failed.
    #[error("RabbitMQ: cannot {during}: {}", error_chain(.error))]
    Amqp {
        /// The step that failed.
        during: &'static str,
        /// The client's error.
        error: lapin::Error,
    },
    /// RabbitMQ returned the message: no queue is bound for its routing key.
    #[error("RabbitMQ returned the message ({reply_code} {reply_text}): no queue is bound for it")]
    Returned {
        /// AMQP reply code (312 NO_ROUTE).
        reply_code: u16,
        /// AMQP reply text.
        reply_text: String,
    },
    /// RabbitMQ refused to take responsibility for the message (nack).
    #[error("RabbitMQ did not confirm the message (nack)")]
    Nacked,
    /// The webhook request could not be sent or its answer not read.
    #[error("HTTP request failed: {}", error_chain(.0))]
    Http(reqwest::Error),
    /// The webhook answered with a status other than 2xx.
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
}

impl SinkError {
    /// Whether another try may succeed: transport failures, nacks, 408, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Timeout { .. }
            | SinkError::Amqp { .. }
            | SinkError::Nacked
            | SinkError::Http(_) => true,
            SinkError::Status { status } => webhook::status_is_retryable(*status),
            SinkError::BreakerOpen { .. } | SinkError::Returned { .. } => false,
        }
    }
}

/// An error and its causes, each cause left out when the text before already says it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = inner.source();
    }
    text
}

/// One `sink: error` clause per failed sink.
fn describe(failures: &[SinkFailure]) -> String {
    failures
        .iter()
        .map(|failure| format!("{}: {}", failure.sink, failure.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One outbox entry as the sinks send it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The body, sent byte for byte.
    pub json: &'a str,
    /// Its alert fields: the id receivers drop repeats by, and what routing reads.
    pub alert: &'a Anomaly,
    /// What happened to the incident, when the body is a notification.
    pub event: Option<NotificationKind>,
}

impl Message<'_> {
    /// The incident id and event name sent as headers, when the body is a notification.
    fn incident(&self) -> Option<(&str, &'static str)> {
        Some((self.alert.incident_id.as_deref()?, self.event?.name()))
    }
}

/// A delivery target.
#[derive(Debug)]
enum Sink {
    RabbitMq(Box<RabbitSink>),
    Webhook(WebhookSink),
}

impl Sink {
    async fn send(&self, message: Message<'_>) -> Result<(), SinkError> {
        match self {
            Sink::RabbitMq(sink) => sink.publish(message).await,
            Sink::Webhook(sink) => sink.post(message).await,
        }
    }
}

/// A sink with its label, breaker and memory of accepted alerts.
struct SinkSlot {
    label: String,
    sink: Sink,
    breaker: Mutex<CircuitBreaker>,
    recent: Mutex<RecentIds>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Delivers alerts to every configured sink; shareable between shards (`&self` methods).
pub struct Dispatcher {
    sinks: Vec<SinkSlot>,
    retry: RetryConfig,
    metrics: AlertMetrics,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field(
                "sinks",
                &self.sinks.iter().map(|slot| &slot.sink).collect::<Vec<_>>(),
            )
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Validates `config`, reads the webhook secrets and prepares the sinks.
    ///
    /// RabbitMQ is connected on first delivery and reconnected after the link breaks, so a
    /// broker that is down at start-up delays alerts but does not fail the node.
    pub async fn connect(
        config: &AlertingConfig,
        metrics: AlertMetrics,
    ) -> Result<Dispatcher, AlertingError> {
        config.validate()?;
        let mut sinks = Vec::with_capacity(config.webhooks.len() + 1);
        if let Some(rabbit) = &config.rabbitmq {
            sinks.push((
                RABBITMQ_SINK.to_owned(),
                Sink::RabbitMq(Box::new(RabbitSink::new(rabbit)?)),
            ));
        }
        if !config.webhooks.is_empty() {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(AlertingError::HttpClient)?;
            for (index, webhook) in config.webhooks.iter().enumerate() {
                let sink = WebhookSink::new(index, webhook, client.clone(), |variable: &str| {
                    std::env::var_os(variable)
                })?;
                sinks.push((format!("webhook:{}", webhook.name), Sink::Webhook(sink)));
            }
        }
        let sinks = sinks
            .into_iter()
            .map(|(label, sink)| {
                metrics.init_sink(&label);
                SinkSlot {
                    label,
                    sink,
                    breaker: Mutex::new(CircuitBreaker::new(&config.breaker)),
                    recent: Mutex::new(RecentIds::new(RECENT_IDS_PER_SINK)),
                }
            })
            .collect();
        Ok(Dispatcher {
            sinks,
            retry: config.retry.clone(),
            metrics,
        })
    }

    /// Whether no sink is configured (then every delivery succeeds at once).
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Delivers one message to every sink that does not have it yet.
    ///
    /// Returns `Ok` once every sink has accepted it; on error, the sinks that accepted it are
    /// remembered and skipped when the call is repeated.
    pub async fn deliver(&self, message: Message<'_>) -> Result<(), AlertingError> {
        let alert_id = message.alert.alert_id.as_str();
        let results = join_all(self.sinks.iter().map(|slot| self.deliver_to(slot, message))).await;
        let failures: Vec<SinkFailure> = self
            .sinks
            .iter()
            .zip(results)
            .filter_map(|(slot, result)| {
                result.err().map(|error| SinkFailure {
                    sink: slot.label.clone(),
                    error,
                })
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(AlertingError::Undelivered {
                alert_id: alert_id.to_owned(),
                failures,
            })
        }
    }

    async fn deliver_to(&self, slot: &SinkSlot, message: Message<'_>) -> Result<(), SinkError> {
        let alert_id = message.alert.alert_id.as_str();
        if lock(&slot.recent).contains(alert_id) {
            self.metrics.count(&slot.label, Outcome::AlreadyDelivered);
            return Ok(());
        }
        let admission = {
            let mut breaker = lock(&slot.breaker);
            let admission = breaker.admit(Instant::now());
            self.metrics
                .set_breaker_open(&slot.label, breaker.is_open());
            admission
        };
        if let Admission::Rejected { retry_in } = admission {
            self.metrics.count(&slot.label, Outcome::RejectedByBreaker);
            return Err(SinkError::BreakerOpen { retry_in });
        }
        let started = Instant::now();
        let result = self.send_with_retries(slot, message).await;
        self.metrics.observe(&slot.label, started.elapsed());
        let mut breaker = lock(&slot.breaker);
        let was_open = breaker.is_open();
        match &result {
            Ok(()) => {
                breaker.record_success();
                lock(&slot.recent).insert(alert_id);
                self.metrics.count(&slot.label, Outcome::Delivered);
                debug!(sink = %slot.label, alert_id, "alert delivered");
            }
            Err(error) => {
                breaker.record_failure(Instant::now());
                self.metrics.count(&slot.label, Outcome::Failed);
                warn!(sink = %slot.label, alert_id, %error, "alert delivery failed");
            }
        }
        let open = breaker.is_open();
        self.metrics.set_breaker_open(&slot.label, open);
        if open && !was_open {
            warn!(sink = %slot.label, "circuit breaker opened; deliveries to this sink fail fast");
        }
        result
    }

    async fn send_with_retries(
        &self,
        slot: &SinkSlot,
        message: Message<'_>,
    ) -> Result<(), SinkError> {
        let alert_id = message.alert.alert_id.as_str();
        let mut failed_tries = 0;
        loop {
            let error = match slot.sink.send(message).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            failed_tries += 1;
            if failed_tries >= self.retry.attempts || !error.is_retryable() {
                return Err(error);
            }
            let wait = self.retry.delay_after(failed_tries);
            debug!(sink = %slot.label, alert_id, %error, ?wait, "alert delivery will be retried");
            tokio::time::sleep(wait).await;
        }
    }
}
