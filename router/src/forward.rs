//! The forwarder: groups events per shard into batches bounded by count, bytes and
//! time, sends each batch to the shard's leader over gRPC `Ingest` (following NotLeader
//! hints and retrying while the shard is briefly leaderless), and tells every caller
//! what became of each of its events once the shard has committed them.
//!
//! Built for every ingestion path: HTTP submits events without a source; a Kafka consumer
//! submits them with their source partition and offsets, and commits an offset once
//! every event up to it has an outcome. One batch per shard is in flight at a time and
//! batches of one source keep their offset order, so offsets reach each shard in order.
//! Memory is bounded: [`Forwarder::submit`] waits while `max_in_flight_bytes` of events
//! are queued or in flight (backpressure); nothing is dropped.
//!
//! A batch from a source is never given up while the router runs: a shard skips offsets
//! at or below the highest it applied for the partition, so if a batch were abandoned
//! and a later one of the same partition reached the shard, the abandoned offsets would
//! be skipped when sent again (lost). Sourced batches are therefore retried, with
//! backoff, until their shard answers or [`Forwarder::stop`] is called; the events still
//! unanswered then are `Failed` and their offsets stay uncommitted (replayed after a
//! restart, which the offset check makes safe). Later batches of that shard wait behind
//! such a batch. Events without a source keep the plain `router.retry_for_ms` bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_core::FieldError;
use sentinel_proto::v1::{IngestRequest, InputEvent, Outcome, SourcePartition};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::BatchConfig;
use crate::metrics::RouterMetrics;
use crate::routing::RoutingTable;

/// One event ready for its shard: redacted and validated JSON in any accepted shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The owning shard (`sentinel_core::shard::shard_of`).
    pub shard: u32,
    /// Offset in the submission's source partition (required with a source, increasing).
    pub offset: Option<u64>,
    /// The normalised event in [`sentinel_core::codec`]'s encoding.
    pub event: Vec<u8>,
}

impl Outgoing {
    /// `event` for its shard of `shards`, at `offset` of the source partition, if any.
    pub fn new(event: &sentinel_core::Event, shards: u32, offset: Option<u64>) -> Outgoing {
        Outgoing {
            shard: sentinel_core::shard::shard_of(&event.service, &event.model, shards),
            offset,
            event: sentinel_core::codec::encode(event),
        }
    }
}

/// What became of one forwarded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Committed by its shard and observed by detection.
    Applied,
    /// Likewise, under this derived id: its own id was taken by an event of other content.
    AppliedAs(String),
    /// At or below its partition's applied offset: applied before.
    DuplicateOffset,
    /// Its event id was applied before within the dedup horizon.
    DuplicateEventId,
    /// The shard's leader refused it, field by field.
    Rejected(Vec<FieldError>),
    /// No acknowledgement: the shard stayed unavailable, or refused the whole batch.
    Failed(String),
}

impl Delivery {
    /// Whether the event is committed (applied now or before).
    pub fn is_committed(&self) -> bool {
        matches!(
            self,
            Delivery::Applied
                | Delivery::AppliedAs(_)
                | Delivery::DuplicateOffset
                | Delivery::DuplicateEventId
        )
    }
}

/// Resolves once every event of a submission has its [`Delivery`].
pub struct Receipt(Result<oneshot::Receiver<Vec<Delivery>>, Vec<Delivery>>);

impl Receipt {
    /// The outcome of each event, in submission order.
    pub async fn outcomes(self) -> Vec<Delivery> {
        match self.0 {
            Ok(receiver) => receiver
                .await
                .expect("every queued event is settled before its queue stops"),
            Err(ready) => ready,
        }
    }
}

/// One submission's outcomes as they arrive.
struct Ticket {
    state: Mutex<TicketState>,
}

struct TicketState {
    outcomes: Vec<Option<Delivery>>,
    left: usize,
    done: Option<oneshot::Sender<Vec<Delivery>>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Ticket {
    fn settle(&self, index: usize, delivery: Delivery) {
        let mut state = self.state.lock().expect("ticket lock");
        state.outcomes[index] = Some(delivery);
        state.left -= 1;
        if state.left == 0 {
            state.permit = None;
            let outcomes = state.outcomes.drain(..).flatten().collect();
            if let Some(done) = state.done.take() {
                let _ = done.send(outcomes);
            }
        }
    }
}

/// One queued event.
struct Item {
    source: Option<Arc<SourcePartition>>,
    offset: Option<u64>,
    event: Vec<u8>,
    ticket: Arc<Ticket>,
    index: usize,
    queued: Instant,
}

/// First pause before a sourced batch is tried again after its call gave up.
const SOURCED_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between two tries of a sourced batch.
const SOURCED_RETRY_MAX: Duration = Duration::from_secs(5);
/// Why an event got no outcome: the forwarder stopped (or its queue closed) first.
const STOPPING: &str = "the router is stopping";

/// What every shard queue shares.
struct Shared {
    table: Arc<RoutingTable>,
    config: BatchConfig,
    metrics: RouterMetrics,
    /// Turns true when sourced batches should stop retrying.
    stopping: watch::Sender<bool>,
}

/// Batches events per shard and forwards them to shard leaders.
pub struct Forwarder {
    shared: Arc<Shared>,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    queues: Mutex<HashMap<u32, mpsc::UnboundedSender<Item>>>,
}

impl Forwarder {
    /// A forwarder sending through `table`, batching as `config` says.
    pub fn new(table: Arc<RoutingTable>, config: BatchConfig, metrics: RouterMetrics) -> Forwarder {
        let budget_bytes = config
            .max_in_flight_bytes
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Forwarder {
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            shared: Arc::new(Shared {
                table,
                config,
                metrics,
                stopping: watch::Sender::new(false),
            }),
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `events` (read from `source`, when given), waiting while the in-flight
    /// budget is used up; the receipt resolves once each event has its outcome.
    pub async fn submit(&self, source: Option<SourcePartition>, events: Vec<Outgoing>) -> Receipt {
        if events.is_empty() {
            return Receipt(Err(Vec::new()));
        }
        let bytes: usize = events.iter().map(|e| e.event.len().max(1)).sum();
        let permits = bytes.clamp(1, self.budget_bytes) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("the budget semaphore is never closed");
        let (done, receiver) = oneshot::channel();
        let ticket = Arc::new(Ticket {
            state: Mutex::new(TicketState {
                outcomes: vec![None; events.len()],
                left: events.len(),
                done: Some(done),
                permit: Some(permit),
            }),
        });
        let source = source.map(Arc::new);
        let queued = Instant::now();
        let mut queues = self.queues.lock().expect("queue lock");
        for (index, event) in events.into_iter().enumerate() {
            let queue = queues.entry(event.shard).or_insert_with(|| {
                let (sender, receiver) = mpsc::unbounded_channel();
                tokio::spawn(run_queue(event.shard, receiver, self.shared.clone()));
                sender
            });
            let item = Item {
                source: source.clone(),
                offset: event.offset,
                event: event.event,
                ticket: ticket.clone(),
                index,
                queued,
            };
            if let Err(mpsc::error::SendError(item)) = queue.send(item) {
                item.ticket
                    .settle(item.index, Delivery::Failed(STOPPING.into()));
            }
        }
        Receipt(Ok(receiver))
    }

    /// Stops retrying batches that came from a source: those still without an answer, and
    /// any submitted later, settle as `Failed` (their offsets must not be committed).
    /// Events without a source are not affected.
    pub fn stop(&self) {
        self.shared.stopping.send_replace(true);
    }

    /// Submits `events` and waits for their outcomes.
    pub async fn forward(
        &self,
        source: Option<SourcePartition>,
        events: Vec<Outgoing>,
    ) -> Vec<Delivery> {
        self.submit(source, events).await.outcomes().await
    }
}

/// Sends one shard's queued events, one batch at a time, until every sender is gone.
async fn run_queue(shard: u32, mut receiver: mpsc::UnboundedReceiver<Item>, shared: Arc<Shared>) {
    let max_events = shared.config.max_events.max(1);
    let max_delay = Duration::from_millis(shared.config.max_delay_ms);
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            match receiver.recv().await {
                Some(item) => queue.push_back(item),
                None => return,
            }
        }
        let deadline = queue[0].queued + max_delay;
        while queue.len() < max_events {
            tokio::select! {
                biased;
                item = receiver.recv() => match item {
                    Some(item) => queue.push_back(item),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        while let Ok(item) = receiver.try_recv() {
            queue.push_back(item);
        }
        let batch = take_batch(&mut queue, max_events, shared.config.max_bytes);
        send(shard, batch, &shared).await;
    }
}

/// Takes the next batch off `queue`: events of the first event's source, in order, while
/// offsets increase, up to `max_events` and `max_bytes` (at least one event).
fn take_batch(queue: &mut VecDeque<Item>, max_events: usize, max_bytes: usize) -> Vec<Item> {
    let source = queue.front().and_then(|i| i.source.clone());
    let mut batch: Vec<Item> = Vec::new();
    let mut rest = VecDeque::with_capacity(queue.len());
    let mut bytes = 0;
    let mut open = true;
    while let Some(item) = queue.pop_front() {
        let fits = open
            && item.source == source
            && (batch.is_empty()
                || (batch.len() < max_events
                    && bytes + item.event.len() <= max_bytes
                    && (source.is_none()
                        || item.offset > batch.last().and_then(|last| last.offset))));
        if fits {
            bytes += item.event.len();
            batch.push(item);
        } else {
            if item.source == source {
                open = false;
            }
            rest.push_back(item);
        }
    }
    *queue = rest;
    batch
}

/// Sends one batch to the shard's leader and settles each event.
async fn send(shard: u32, batch: Vec<Item>, shared: &Shared) {
    let request = IngestRequest {
        shard,
        source: batch[0].source.as_deref().cloned(),
        events: batch
            .iter()
            .map(|item| InputEvent {
                offset: item.offset,
                event: item.event.clone(),
            })
            .collect(),
    };
    let started = Instant::now();
    let answer = if request.source.is_some() {
        call_until_answered(shard, &request, shared).await
    } else {
        call(shard, &request, shared)
            .await
            .map_err(|e| e.to_string())
    };
    shared
        .metrics
        .forward_seconds
        .observe(started.elapsed().as_secs_f64());
    let deliveries: Vec<Delivery> = match answer {
        Ok(reply) if reply.results.len() == batch.len() => reply
            .results
            .into_iter()
            .map(|result| match Outcome::try_from(result.outcome) {
                Ok(Outcome::Applied) => Delivery::Applied,
                Ok(Outcome::AppliedAs) => Delivery::AppliedAs(result.applied_as),
                Ok(Outcome::DuplicateOffset) => Delivery::DuplicateOffset,
                Ok(Outcome::DuplicateEventId) => Delivery::DuplicateEventId,
                Ok(Outcome::Rejected) => Delivery::Rejected(
                    result
                        .errors
                        .into_iter()
                        .map(|e| FieldError::new(e.field, e.problem))
                        .collect(),
                ),
                _ => Delivery::Failed(format!("unknown outcome {}", result.outcome)),
            })
            .collect(),
        Ok(reply) => {
            let problem = format!(
                "shard {shard} answered {} results for {} events",
                reply.results.len(),
                batch.len()
            );
            vec![Delivery::Failed(problem); batch.len()]
        }
        Err(problem) => vec![Delivery::Failed(problem); batch.len()],
    };
    if let Some(source) = &request.source {
        let offsets = |d: fn(&Delivery) -> bool| -> Vec<u64> {
            batch
                .iter()
                .zip(&deliveries)
                .filter(|(_, delivery)| d(delivery))
                .filter_map(|(item, _)| item.offset)
                .collect()
        };
        tracing::debug!(
            shard,
            topic = %source.topic,
            partition = source.partition,
            applied = ?offsets(|d| matches!(d, Delivery::Applied | Delivery::AppliedAs(_))),
            duplicate_offset = ?offsets(|d| *d == Delivery::DuplicateOffset),
            duplicate_id = ?offsets(|d| *d == Delivery::DuplicateEventId),
            other = ?offsets(|d| !d.is_committed()),
            "sourced batch answered"
        );
    }
    for (item, delivery) in batch.into_iter().zip(deliveries) {
        match &delivery {
            d if d.is_committed() => shared.metrics.events_forwarded.inc(),
            Delivery::Rejected(_) => shared.metrics.events_rejected.inc(),
            _ => shared.metrics.events_failed.inc(),
        }
        item.ticket.settle(item.index, delivery);
    }
}

/// One `Ingest` call to the shard's leader, as [`RoutingTable::call_leader`] retries it.
async fn call(
    shard: u32,
    request: &IngestRequest,
    shared: &Shared,
) -> Result<sentinel_proto::v1::IngestReply, crate::error::CallError> {
    shared
        .table
        .call_leader(shard, |mut client| {
            let request = request.clone();
            async move { client.ingest(request).await }
        })
        .await
}

/// Calls until the shard answers, pausing (with backoff) whenever a call gives up, or
/// until the forwarder stops.
async fn call_until_answered(
    shard: u32,
    request: &IngestRequest,
    shared: &Shared,
) -> Result<sentinel_proto::v1::IngestReply, String> {
    let mut stopping = shared.stopping.subscribe();
    let mut pause = SOURCED_RETRY_INITIAL;
    loop {
        if *stopping.borrow_and_update() {
            return Err(STOPPING.into());
        }
        let error = tokio::select! {
            answer = call(shard, request, shared) => match answer {
                Ok(reply) => return Ok(reply),
                Err(error) => error,
            },
            _ = stopping.wait_for(|s| *s) => return Err(STOPPING.into()),
        };
        tracing::warn!(
            shard,
            source = ?request.source,
            error = %error,
            retry_in = ?pause,
            "a batch from a source got no answer; retrying it (its offsets must reach the shard in order)"
        );
        shared.metrics.retries.inc();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopping.wait_for(|s| *s) => return Err(STOPPING.into()),
        }
        pause = (pause * 2).min(SOURCED_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(source: Option<&Arc<SourcePartition>>, offset: Option<u64>, bytes: usize) -> Item {
        let (done, _) = oneshot::channel();
        Item {
            source: source.cloned(),
            offset,
            event: vec![b'x'; bytes],
            ticket: Arc::new(Ticket {
                state: Mutex::new(TicketState {
                    outcomes: vec![None],
                    left: 1,
                    done: Some(done),
                    permit: None,
                }),
            }),
            index: 0,
            queued: Instant::now(),
        }
    }

    fn partition(number: i32) -> Arc<SourcePartition> {
        Arc::new(SourcePartition {
            topic: "llm.telemetry".into(),
            partition: number,
        })
    }

    fn offsets<'a>(items: impl IntoIterator<Item = &'a Item>) -> Vec<Option<u64>> {
        items.into_iter().map(|i| i.offset).collect()
    }

    #[test]
    fn a_batch_holds_one_source_in_offset_order() {
        let (a, b) = (partition(0), partition(1));
        let mut queue: VecDeque<Item> = [
            item(Some(&a), Some(1), 1),
            item(Some(&b), Some(7), 1),
            item(Some(&a), Some(2), 1),
            item(None, None, 1),
            item(Some(&a), Some(2), 1),
            item(Some(&a), Some(3), 1),
        ]
        .into();
        let batch = take_batch(&mut queue, 10, 1 << 20);
        assert_eq!(offsets(&batch), [Some(1), Some(2)]);
        assert_eq!(offsets(&queue), [Some(7), None, Some(2), Some(3)]);
        let batch = take_batch(&mut queue, 10, 1 << 20);
        assert_eq!(offsets(&batch), [Some(7)]);
        let batch = take_batch(&mut queue, 10, 1 << 20);
        assert_eq!(offsets(&batch), [None]);
        let batch = take_batch(&mut queue, 10, 1 << 20);
        assert_eq!(offsets(&batch), [Some(2), Some(3)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_bytes_but_never_empty() {
        let mut queue: VecDeque<Item> = (0..5).map(|_| item(None, None, 10)).collect();
        assert_eq!(take_batch(&mut queue, 2, 1 << 20).len(), 2);
        assert_eq!(take_batch(&mut queue, 10, 15).len(), 1);
        assert_eq!(take_batch(&mut queue, 10, 5).len(), 1);
        assert_eq!(queue.len(), 1);
    }

    fn forwarder() -> Forwarder {
        let settings: crate::config::RouterSection = serde_json::from_value(serde_json::json!({
            "seeds": ["127.0.0.1:1"],
            "retry_for_ms": 50,
            "backoff_initial_ms": 10,
        }))
        .unwrap();
        let metrics = RouterMetrics::new().unwrap();
        let table = Arc::new(RoutingTable::new(
            settings,
            metrics.clone(),
            sentinel_tls::ClusterTransport::Insecure,
        ));
        Forwarder::new(table, BatchConfig::default(), metrics)
    }

    #[tokio::test]
    async fn a_sourced_batch_is_retried_until_answered_or_stopped() {
        // No node has answered: every call gives up at once.
        let forwarder = forwarder();
        let event = |offset| Outgoing {
            shard: 0,
            offset,
            event: b"{}".to_vec(),
        };
        let source = || {
            Some(SourcePartition {
                topic: "llm.telemetry".into(),
                partition: 0,
            })
        };
        let outcomes = forwarder.forward(None, vec![event(None)]).await;
        assert!(
            matches!(&outcomes[..], [Delivery::Failed(_)]),
            "{outcomes:?}"
        );

        let receipt = forwarder.submit(source(), vec![event(Some(7))]).await;
        let outcomes = tokio::spawn(receipt.outcomes());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!outcomes.is_finished(), "a sourced batch was given up");
        assert!(forwarder.shared.metrics.retries.get() >= 2);

        forwarder.stop();
        let outcomes = tokio::time::timeout(Duration::from_secs(5), outcomes)
            .await
            .expect("stop settles the batch")
            .unwrap();
        assert_eq!(outcomes, [Delivery::Failed(STOPPING.into())]);
        let outcomes = forwarder.forward(source(), vec![event(Some(8))]).await;
        assert_eq!(outcomes, [Delivery::Failed(STOPPING.into())]);
    }

    #[test]
    fn a_receipt_resolves_when_its_last_event_is_settled() {
        let (done, mut receiver) = oneshot::channel();
        let ticket = Ticket {
            state: Mutex::new(TicketState {
                outcomes: vec![None, None],
                left: 2,
                done: Some(done),
                permit: None,
            }),
        };
        ticket.settle(1, Delivery::Applied);
        assert!(receiver.try_recv().is_err());
        ticket.settle(0, Delivery::Failed("down".into()));
        assert_eq!(
            receiver.try_recv().unwrap(),
            [Delivery::Failed("down".into()), Delivery::Applied]
        );
    }
}
