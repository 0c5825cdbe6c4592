//! The alert receivers of a run: a signature-checking webhook and a RabbitMQ queue bound
//! to the alert exchange, each recording every notification delivered to it; and how
//! much the cluster still holds to deliver (its shards' outboxes).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_testkit::services::{AlertQueue, Replies, WebhookReceiver};
use tokio::task::JoinHandle;

/// The header carrying a webhook notification's `alert_id`.
const ALERT_ID_HEADER: &str = "x-sentinel-alert-id";
/// The shared secret the webhook's signatures are checked with.
const SECRET: &[u8] = b"jepsen-webhook-secret";
/// The node metric of notifications a shard still has to deliver.
const OUTBOX_METRIC: &str = "sentinel_shard_outbox_pending";

/// One notification as one receiver got it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sink: &'static str,
    pub alert_id: String,
    pub body: Vec<u8>,
}

/// Both receivers.
pub struct Sinks {
    webhook: WebhookReceiver,
    amqp: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
    consumer: JoinHandle<AlertQueue>,
    amqp_url: String,
    exchange: String,
}

impl Sinks {
    /// Starts the webhook on `ip` and a queue on `exchange`, an alert exchange of this run
    /// alone (so that other runs or tests on the same broker cannot mix in), of the
    /// RabbitMQ at `amqp_url`.
    pub async fn start(ip: IpAddr, amqp_url: &str, exchange: &str) -> Sinks {
        let webhook = WebhookReceiver::start_on(ip, SECRET, Replies::Accept).await;
        let mut queue = AlertQueue::bind_to(amqp_url, exchange).await;
        let amqp = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (received, stopped) = (amqp.clone(), stop.clone());
        let consumer = tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                let Some(delivery) = queue.next_within(Duration::from_millis(500)).await else {
                    continue;
                };
                let alert_id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let mut received = received.lock().unwrap_or_else(|e| e.into_inner());
                received.push(Delivery {
                    sink: "rabbitmq",
                    alert_id,
                    body: delivery.data,
                });
            }
            queue
        });
        Sinks {
            webhook,
            amqp,
            stop,
            consumer,
            amqp_url: amqp_url.to_owned(),
            exchange: exchange.to_owned(),
        }
    }

    /// The environment of a node delivering to both receivers.
    pub fn node_env(&self) -> Vec<(String, String)> {
        let mut env = self.webhook.node_env();
        env.push((
            "SENTINEL_ALERTING__RABBITMQ".into(),
            format!(
                "{{url: '{}', exchange: '{}'}}",
                self.amqp_url, self.exchange
            ),
        ));
        env
    }

    /// Every delivery so far: webhook requests whose signature verified, and queue messages.
    pub fn deliveries(&self) -> Vec<Delivery> {
        let mut all: Vec<Delivery> = self
            .webhook
            .requests()
            .into_iter()
            .filter(|r| r.signature_valid)
            .map(|r| Delivery {
                sink: "webhook",
                alert_id: r.header(ALERT_ID_HEADER).unwrap_or_default().to_owned(),
                body: r.body.to_vec(),
            })
            .collect();
        all.extend(
            self.amqp
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        all
    }

    /// Stops consuming the queue and deletes the run's exchange.
    pub async fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(queue) = self.consumer.await {
            queue.delete_exchange().await;
        }
    }
}

/// The notifications still waiting in the outboxes of the nodes whose metrics are at
/// `urls` (`http://<node>/metrics`), summed over every replica; none if a node did not answer.
pub async fn outbox_pending(urls: &[String]) -> Option<i64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let mut total = 0i64;
    for url in urls {
        let text = http.get(url).send().await.ok()?.text().await.ok()?;
        total += text
            .lines()
            .filter(|line| line.starts_with(OUTBOX_METRIC))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as i64;
    }
    Some(total)
}
