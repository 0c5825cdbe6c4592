//! The consumer loop: reads messages, hands events to the [`Forwarder`] with their source
//! position, dead-letters poison, tracks what settled and commits it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sentinel_core::Intake;
use sentinel_proto::v1::SourcePartition;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::config::KafkaSection;
use super::dead_letter::{DeadLetters, Letter};
use super::message::{self, Decoded, Reason};
use super::tracker::{PartitionKey, Tracker};
use crate::forward::{Delivery, Forwarder, Outgoing};
use crate::metrics::KafkaMetrics;
use crate::routing::RoutingTable;

/// How often the consumer looks whether the routing table has loaded.
const TABLE_POLL: Duration = Duration::from_millis(200);
/// How long the same consumer error stays quiet after it was logged.
const ERROR_QUIET: Duration = Duration::from_secs(60);

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Callbacks librdkafka makes while the consumer is polled: rebalances, statistics and
/// logs.
pub struct Context {
    tracker: Arc<Mutex<Tracker>>,
    metrics: KafkaMetrics,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let assigned: Vec<PartitionKey> = lock(&self.tracker).assigned().cloned().collect();
        for (topic, partition) in assigned {
            let lag = statistics
                .topics
                .get(&topic)
                .and_then(|t| t.partitions.get(&partition))
                .map(|p| p.consumer_lag)
                .filter(|&lag| lag >= 0);
            if let Some(lag) = lag {
                self.metrics
                    .lag
                    .with_label_values(&[topic.as_str(), partition.to_string().as_str()])
                    .set(lag);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let mut commit = TopicPartitionList::new();
                {
                    let mut tracker = lock(&self.tracker);
                    for elem in partitions.elements() {
                        let key = (elem.topic().to_owned(), elem.partition());
                        if let Some(to) = tracker.revoke(&key) {
                            let _ = commit.add_partition_offset(
                                elem.topic(),
                                elem.partition(),
                                Offset::Offset(to),
                            );
                        }
                        let _ = self
                            .metrics
                            .lag
                            .remove_label_values(&[elem.topic(), &elem.partition().to_string()]);
                    }
                }
                tracing::info!(partitions = %names(partitions), "Kafka partitions revoked");
                if commit.count() > 0 && !commit_now(consumer, &commit, &self.metrics) {
                    tracing::warn!("their next owner reads some messages again");
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %error, "Kafka rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.metrics.rebalances.with_label_values(&["assign"]).inc();
            let mut tracker = lock(&self.tracker);
            for elem in partitions.elements() {
                tracker.assign((elem.topic().to_owned(), elem.partition()));
            }
            tracing::info!(partitions = %names(partitions), "Kafka partitions assigned");
        }
    }
}

/// Commits `offsets` synchronously (a broker round trip; errors come back at once, so
/// a failed commit is retried) and counts the result; whether it succeeded.
fn commit_now<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    offsets: &TopicPartitionList,
    metrics: &KafkaMetrics,
) -> bool {
    match consumer.commit(offsets, CommitMode::Sync) {
        Ok(()) => {
            metrics.commits.with_label_values(&["ok"]).inc();
            tracing::debug!(offsets = %names(offsets), "Kafka offsets committed");
            true
        }
        Err(error) => {
            metrics.commits.with_label_values(&["failed"]).inc();
            tracing::warn!(error = %error, offsets = %names(offsets), "committing Kafka offsets failed");
            false
        }
    }
}

/// `topic/partition@offset` of every element, for logs.
fn names(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => format!("{}/{}@{offset}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A message whose fate is known: settled (committed by its shard or dead-lettered), or
/// not (the router is stopping).
struct Settlement {
    key: PartitionKey,
    generation: u64,
    offset: i64,
    settled: bool,
}

type InFlight = FuturesUnordered<BoxFuture<'static, Settlement>>;

/// The Kafka consumer of one router.
pub struct KafkaConsumer {
    section: KafkaSection,
    consumer: StreamConsumer<Context>,
    tracker: Arc<Mutex<Tracker>>,
    forwarder: Forwarder,
    dead_letters: Arc<DeadLetters>,
    intake: Arc<Intake>,
    table: Arc<RoutingTable>,
    metrics: KafkaMetrics,
}

impl KafkaConsumer {
    /// A consumer of `section.topics` configured by `client` (brokers and extra properties).
    pub fn new(
        section: &KafkaSection,
        client: &ClientConfig,
        forwarder: Forwarder,
        intake: Arc<Intake>,
        table: Arc<RoutingTable>,
        metrics: KafkaMetrics,
    ) -> KafkaResult<KafkaConsumer> {
        let mut config = client.clone();
        config
            .set("group.id", &section.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Topics created after the start are found within this period.
            .set("topic.metadata.refresh.interval.ms", "30000")
            .set("session.timeout.ms", section.session_timeout_ms.to_string())
            // How long a fetch may wait for data. Apache Kafka answers as soon as data
            // arrives; brokers that do not (tansu) hold every fetch this long, which is
            // then the floor of produce-to-anomaly latency (500 ms by default).
            .set("fetch.wait.max.ms", "25")
            .set(
                "queued.max.messages.kbytes",
                section.max_prefetch_kbytes.to_string(),
            );
        if section.statistics_interval_ms > 0 {
            config.set(
                "statistics.interval.ms",
                section.statistics_interval_ms.to_string(),
            );
        }
        for (key, value) in &section.properties {
            config.set(key, value);
        }
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let consumer = config.create_with_context(Context {
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        })?;
        Ok(KafkaConsumer {
            section: section.clone(),
            consumer,
            tracker,
            forwarder,
            dead_letters: Arc::new(DeadLetters::new(section, client, metrics.clone())?),
            intake,
            table,
            metrics,
        })
    }

    /// Consumes until `stop` turns true (or its sender is gone), then stops reading,
    /// waits (bounded) for the messages in flight, commits and leaves the group.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let shards = tokio::select! {
            shards = self.shard_count() => Some(shards),
            () = stopped(&mut stop) => None,
        };
        let Some(shards) = shards else {
            return self.close().await;
        };
        let topics: Vec<&str> = self.section.topics.iter().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::error!(error = %error, ?topics, "subscribing to the Kafka topics failed");
            return self.close().await;
        }
        tracing::info!(?topics, group = %self.section.group_id, shards, "consuming Kafka");
        let mut in_flight = InFlight::new();
        let mut ticks = tokio::time::interval(self.section.commit_interval());
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_error: Option<(String, Instant)> = None;
        loop {
            let room = in_flight.len() < self.section.max_pending_messages;
            let message = tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                Some(done) = in_flight.next() => {
                    self.record(done);
                    continue;
                }
                _ = ticks.tick() => {
                    self.commit();
                    continue;
                }
                message = self.consumer.recv(), if room => message.map(|m| m.detach()),
            };
            match message {
                Ok(message) => {
                    if !self
                        .handle(message, shards, &mut in_flight, &mut stop)
                        .await
                    {
                        break;
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    let repeated = last_error
                        .as_ref()
                        .is_some_and(|(last, at)| *last == text && at.elapsed() < ERROR_QUIET);
                    if repeated {
                        tracing::debug!(error = %text, "Kafka consumer error");
                    } else {
                        tracing::warn!(error = %text, "Kafka consumer error");
                        last_error = Some((text, Instant::now()));
                    }
                }
            }
        }
        self.drain(in_flight).await;
        self.close().await;
    }

    /// The shard count, once the routing table has loaded.
    async fn shard_count(&self) -> u32 {
        loop {
            if let Some(layout) = self.table.layout().filter(|l| l.shard_count > 0) {
                return layout.shard_count;
            }
            tokio::time::sleep(TABLE_POLL).await;
        }
    }

    /// Processes one message: starts its forwarding or dead-lettering. False when `stop`
    /// turned true while it waited for room in the forwarder.
    async fn handle(
        &self,
        message: OwnedMessage,
        shards: u32,
        in_flight: &mut InFlight,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let key = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        self.metrics
            .messages
            .with_label_values(&[message.topic()])
            .inc();
        let (skipped, generation) = {
            let mut tracker = lock(&self.tracker);
            (tracker.skipped(&key, offset), tracker.read(&key, offset))
        };
        let Some(generation) = generation else {
            tracing::debug!(topic = %key.0, partition = key.1, offset, "skipping a message of a partition not assigned (any more)");
            return true;
        };
        if let Some(skipped) = skipped {
            self.metrics
                .offsets_skipped
                .with_label_values(&[key.0.as_str()])
                .inc_by((skipped.end - skipped.start) as u64);
            // Transaction markers and compaction leave such gaps; otherwise the broker
            // failed to deliver records that are in the partition.
            tracing::info!(
                topic = %key.0,
                partition = key.1,
                from = skipped.start,
                to = skipped.end - 1,
                "Kafka offsets skipped: the broker delivered no message at them"
            );
        }
        let settlement = move |key, settled| Settlement {
            key,
            generation,
            offset,
            settled,
        };
        let letter = |reason: Reason, errors| Letter {
            source: key.clone(),
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            reason,
            errors,
        };
        let event = match message::prepare(&self.intake, message.payload()) {
            Decoded::Event(event) => event,
            Decoded::Nothing => {
                lock(&self.tracker).settle(&key, generation, offset);
                return true;
            }
            Decoded::Poison(reason, errors) => {
                let letter = letter(reason, errors);
                let dead_letters = self.dead_letters.clone();
                in_flight.push(
                    async move {
                        dead_letters.send(&letter).await;
                        settlement(letter.source, true)
                    }
                    .boxed(),
                );
                return true;
            }
        };
        let outgoing = Outgoing::new(&event, shards, Some(offset as u64));
        let source = SourcePartition {
            topic: key.0.clone(),
            partition: key.1,
        };
        // Waits while the forwarder's byte budget is used up (backpressure), settling
        // what completes meanwhile.
        let submit = self.forwarder.submit(Some(source), vec![outgoing]);
        tokio::pin!(submit);
        let receipt = loop {
            tokio::select! {
                receipt = &mut submit => break receipt,
                Some(done) = in_flight.next() => self.record(done),
                () = stopped(stop) => return false,
            }
        };
        let unsent = letter(Reason::Rejected, Vec::new());
        let dead_letters = self.dead_letters.clone();
        let key = unsent.source.clone();
        in_flight.push(
            async move {
                let settled = match receipt.outcomes().await.pop() {
                    Some(delivery) if delivery.is_committed() => true,
                    Some(Delivery::Rejected(errors)) => {
                        let letter = Letter { errors, ..unsent };
                        dead_letters.send(&letter).await;
                        true
                    }
                    _ => false,
                };
                settlement(key, settled)
            }
            .boxed(),
        );
        true
    }

    /// Takes note of a settled message.
    fn record(&self, done: Settlement) {
        if done.settled {
            lock(&self.tracker).settle(&done.key, done.generation, done.offset);
        }
    }

    /// Commits every commit point that advanced; failed ones are tried again next time.
    fn commit(&self) {
        let points = lock(&self.tracker).to_commit();
        if points.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &points {
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if !commit_now(&self.consumer, &list, &self.metrics) {
            let mut tracker = lock(&self.tracker);
            for (key, offset) in &points {
                tracker.commit_failed(key, *offset);
            }
        }
    }

    /// Waits up to `shutdown_timeout_ms` for the messages in flight, stops the forwarder
    /// (whatever is still unanswered stays uncommitted) and commits.
    async fn drain(&self, mut in_flight: InFlight) {
        let waiting = in_flight.len();
        let deadline = Instant::now() + self.section.shutdown_timeout();
        while !in_flight.is_empty() {
            tokio::select! {
                Some(done) = in_flight.next() => self.record(done),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let left = in_flight.len();
        self.forwarder.stop();
        drop(in_flight);
        self.commit();
        tracing::info!(
            settled = waiting - left,
            unsettled = left,
            "Kafka consumer drained; unsettled messages are read again by the next owner"
        );
    }

    /// Leaves the consumer group (the revoke callback commits once more).
    async fn close(self) {
        self.forwarder.stop();
        let consumer = self.consumer;
        consumer.unsubscribe();
        // Dropping the consumer closes it, polling until it has left the group.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        tracing::info!("Kafka consumer stopped");
    }
}
