//! RabbitMQ sink: persistent messages on a durable topic exchange, with publisher confirms.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use sentinel_core::Anomaly;
use tokio::sync::Mutex;

use super::config::url_origin;
use super::{AlertingError, Message, RabbitConfig, SinkError};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Routing key of an alert: `alert.<severity>.<anomaly_type>`.
pub fn routing_key(alert: &Anomaly) -> String {
    format!(
        "alert.{}.{}",
        alert.severity.name(),
        alert.anomaly_type.name()
    )
}

/// AMQP headers of a message: `incident_id` and `event` when it is a notification.
fn headers(message: Message<'_>) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some((incident_id, event)) = message.incident() {
        headers.insert(
            "incident_id".into(),
            AMQPValue::LongString(incident_id.into()),
        );
        headers.insert("event".into(), AMQPValue::LongString(event.into()));
    }
    headers
}

/// An open connection and its confirm-mode channel.
struct Link {
    connection: Connection,
    channel: Channel,
}

/// Publishes to one broker, connecting on first use and again after the link breaks.
pub(crate) struct RabbitSink {
    uri: AMQPUri,
    origin: String,
    exchange: String,
    timeout: Duration,
    link: Mutex<Option<Link>>,
}

impl fmt::Debug for RabbitSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSink")
            .field("url", &self.origin)
            .field("exchange", &self.exchange)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RabbitSink {
    /// A sink for `config`; no connection is made yet.
    pub(crate) fn new(config: &RabbitConfig) -> Result<RabbitSink, AlertingError> {
        Ok(RabbitSink {
            uri: config.uri()?,
            origin: url_origin(&config.url),
            exchange: config.exchange.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            link: Mutex::new(None),
        })
    }

    /// Publishes one message and waits for the broker's confirm, all within the timeout.
    pub(crate) async fn publish(&self, message: Message<'_>) -> Result<(), SinkError> {
        let result = tokio::time::timeout(self.timeout, self.try_publish(message))
            .await
            .unwrap_or(Err(SinkError::Timeout {
                after: self.timeout,
            }));
        if matches!(
            result,
            Err(SinkError::Amqp { .. } | SinkError::Timeout { .. })
        ) {
            self.link.lock().await.take();
        }
        result
    }

    async fn try_publish(&self, message: Message<'_>) -> Result<(), SinkError> {
        let channel = self.channel().await?;
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(message.alert.alert_id.as_str().into())
            .with_timestamp(sent_at)
            .with_app_id("sentinel".into())
            .with_headers(headers(message));
        let confirmation = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key(message.alert).into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.json.as_bytes(),
                properties,
            )
            .await
            .map_err(amqp("publish"))?
            .await
            .map_err(amqp("wait for the publisher confirm"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(SinkError::Returned {
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.as_str().to_owned(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(SinkError::Nacked),
        }
    }

    /// The open channel, after (re)connecting and declaring the exchange if needed.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link
            .as_ref()
            .filter(|l| l.connection.status().connected() && l.channel.status().connected())
        {
            return Ok(open.channel.clone());
        }
        *link = None;
        let properties =
            ConnectionProperties::default().with_connection_name("sentinel-node alerting".into());
        let connection = Connection::connect_uri(self.uri.clone(), properties)
            .await
            .map_err(amqp("connect"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("open a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enable publisher confirms"))?;
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("declare the exchange"))?;
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }
}

fn amqp(during: &'static str) -> impl FnOnce(lapin::Error) -> SinkError {
    move |error| SinkError::Amqp { during, error }
}

#[cfg(test)]
mod tests {
    use sentinel_core::{AnomalyType, Severity};

    use super::*;

    #[test]
    fn routing_key_uses_the_serde_names() {
        let json = r#"{"alert_id":"a","timestamp":"2024-01-01T00:00:00Z","timestamp_ms":0,
            "severity":"critical","anomaly_type":"error_rate_increase","service_name":"s",
            "model":"m","detection_method":"z_score","confidence":1.0,
            "details":{"metric":"error","value":1.0,"baseline":0.0,"threshold":0.5,
                "deviation_sigma":4.0,"additional":{}},
            "context":{"trace_id":null,"user_id":null,"time_window":"60s","sample_count":10,
                "additional":{}},
            "root_cause":null,"remediation":[],"related_alerts":[],"runbook_url":null}"#;
        let mut alert: Anomaly = serde_json::from_str(json).unwrap();
        assert_eq!(routing_key(&alert), "alert.critical.error_rate_increase");
        alert.severity = Severity::Low;
        alert.anomaly_type = AnomalyType::LatencySpike;
        assert_eq!(routing_key(&alert), "alert.low.latency_spike");
    }
}
