//! Prometheus metrics of alert delivery.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// What happened to one alert at one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The sink accepted the alert.
    Delivered,
    /// Every try failed, or the failure was not worth retrying.
    Failed,
    /// The sink's circuit breaker was open; nothing was sent.
    RejectedByBreaker,
    /// The sink had already accepted this alert; nothing was sent.
    AlreadyDelivered,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Delivered,
        Outcome::Failed,
        Outcome::RejectedByBreaker,
        Outcome::AlreadyDelivered,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::RejectedByBreaker => "rejected_by_breaker",
            Outcome::AlreadyDelivered => "already_delivered",
        }
    }
}

/// Delivery metrics, labelled by sink (`rabbitmq` or `webhook:<name>`); clones share the series.
///
/// * `sentinel_alert_deliveries_total{sink,outcome}`: outcome is `delivered`, `failed`,
///   `rejected_by_breaker` or `already_delivered` (skipped because the sink has it).
/// * `sentinel_alert_delivery_seconds{sink}`: time of one delivery, retries included.
/// * `sentinel_alert_breaker_open{sink}`: 1 while the sink's circuit breaker is not closed.
#[derive(Debug, Clone)]
pub struct AlertMetrics {
    deliveries: IntCounterVec,
    seconds: HistogramVec,
    breaker_open: IntGaugeVec,
}

impl AlertMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn new(registry: &Registry) -> Result<AlertMetrics, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "sentinel_alert_deliveries_total",
                "Alert deliveries per sink and outcome.",
            ),
            &["sink", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "sentinel_alert_delivery_seconds",
                "Time to deliver one alert to one sink, retries included.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["sink"],
        )?;
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "sentinel_alert_breaker_open",
                "1 while the sink's circuit breaker is open or half-open.",
            ),
            &["sink"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(breaker_open.clone()))?;
        Ok(AlertMetrics {
            deliveries,
            seconds,
            breaker_open,
        })
    }

    /// Creates every series of `sink` at zero, so dashboards show the sink before its first alert.
    pub(crate) fn init_sink(&self, sink: &str) {
        for outcome in Outcome::ALL {
            self.deliveries.with_label_values(&[sink, outcome.label()]);
        }
        self.seconds.with_label_values(&[sink]);
        self.breaker_open.with_label_values(&[sink]).set(0);
    }

    /// Counts one outcome at `sink`.
    pub(crate) fn count(&self, sink: &str, outcome: Outcome) {
        self.deliveries
            .with_label_values(&[sink, outcome.label()])
            .inc();
    }

    /// Records how long one delivery to `sink` took.
    pub(crate) fn observe(&self, sink: &str, took: Duration) {
        self.seconds
            .with_label_values(&[sink])
            .observe(took.as_secs_f64());
    }

    /// Publishes whether the breaker of `sink` is open.
    pub(crate) fn set_breaker_open(&self, sink: &str, open: bool) {
        self.breaker_open
            .with_label_values(&[sink])
            .set(i64::from(open));
    }
}
