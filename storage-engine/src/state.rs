//! A shard's core state and the deterministic application of commands to it.
//!
//! The core state is everything that decides how a command applies: detection state,
//! applied offsets per source partition, recently seen event ids, the outbox's pending
//! sequence numbers, the export queue's bounds and the shard clock. It lives in memory and
//! is checkpointed whole. Rows (telemetry, anomalies, outbox and export-queue entries) are
//! derived from commands with keys that depend only on the log, so re-applying entries
//! after a restart rewrites them identically; nothing here ever reads a row to decide
//! anything.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rocksdb::WriteBatch;
use sentinel_core::incident::{Change, Notification};
use sentinel_core::{Anomaly, Event, Incident, MetricValues, ShardDetector};
use serde::{Deserialize, Serialize};

use crate::alert_rows::{encode_anomaly, encode_incident, encode_notification};
use crate::command::{
    Command, EventOutcome, IngestBatch, IngestOutcome, KeyLimits, Response, Retention,
    ShardSettings, SourcePartition,
};
use crate::error::{decode, encode, Error};
use crate::keys;

/// The decision-making state of one shard.
#[derive(Debug, Clone)]
pub(crate) struct ShardState {
    pub(crate) detector: ShardDetector,
    pub(crate) rest: Bookkeeping,
}

/// The core state besides detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bookkeeping {
    pub(crate) event_id_horizon_ms: i64,
    /// Highest applied offset per source partition.
    pub(crate) offsets: BTreeMap<SourcePartition, u64>,
    pub(crate) event_ids: SeenEventIds,
    /// Sequence number of the next outbox entry.
    pub(crate) outbox_next: u64,
    /// Outbox entries not yet acknowledged.
    pub(crate) outbox: BTreeSet<u64>,
    /// The latest `received_ms` of any batch: the shard's clock.
    pub(crate) clock_ms: i64,
    /// The telemetry export queue.
    pub(crate) export: ExportQueue,
    /// Bounds on new (service, model) keys.
    #[serde(default)]
    pub(crate) keys: KeyLimits,
}

/// Settings and bounds of the export queue; its entries are rows `first..next`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ExportQueue {
    /// Whether applied events and raised anomalies are queued.
    pub(crate) enabled: bool,
    /// Most entries held; the oldest are dropped beyond it.
    pub(crate) max: u64,
    /// Sequence number of the oldest entry still queued.
    pub(crate) first: u64,
    /// Sequence number of the next entry.
    pub(crate) next: u64,
    /// Entries removed without being exported (queue full, or export switched off).
    pub(crate) dropped: u64,
}

impl ExportQueue {
    /// Entries queued.
    pub(crate) fn pending(&self) -> u64 {
        self.next - self.first
    }

    /// Queues a row of `kind` holding `payload` if export is on.
    fn push(&mut self, rows: &mut RowWriter<'_>, kind: u8, payload: &[u8]) {
        if !self.enabled {
            return;
        }
        let mut value = Vec::with_capacity(payload.len() + 1);
        value.push(kind);
        value.extend_from_slice(payload);
        rows.batch
            .put(&rows.queue_entry(keys::EXPORT, self.next), &value);
        self.next += 1;
    }

    /// Removes the entries before `end` (clamped to the queue); returns how many.
    fn remove_before(&mut self, end: u64, rows: &mut RowWriter<'_>) -> u64 {
        let end = end.clamp(self.first, self.next);
        if end > self.first {
            rows.batch.delete_range(
                &rows.queue_entry(keys::EXPORT, self.first),
                &rows.queue_entry(keys::EXPORT, end),
            );
        }
        let removed = end - self.first;
        self.first = end;
        removed
    }

    /// Drops the oldest entries beyond `max`, or every entry when export is off.
    fn trim(&mut self, rows: &mut RowWriter<'_>) {
        let keep = if self.enabled { self.max } else { 0 };
        let end = self.next.saturating_sub(keep);
        self.dropped += self.remove_before(end, rows);
    }
}

/// Kind byte of an export-queue row holding a [`TelemetryRecord`] (MessagePack).
pub(crate) const EXPORT_TELEMETRY: u8 = b't';
/// Kind byte of an export-queue row holding an anomaly (as its row in the anomaly table).
pub(crate) const EXPORT_ANOMALY: u8 = b'a';

/// Event ids applied within the horizon, as 128-bit hashes with the content digest of
/// the event applied under each, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "VecDeque<SeenId>", into = "VecDeque<SeenId>")]
pub(crate) struct SeenEventIds {
    order: VecDeque<SeenId>,
    /// The content digest applied under each id (`None`: unknown, see [`SeenId`]).
    seen: HashMap<u128, Option<u64>>,
}

/// One remembered id: when it was applied (shard clock), its hash, and the content digest
/// of its event. Checkpoints written before digests were kept hold only the first two; a
/// repeat of such an id counts as a duplicate whatever its content.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SeenId {
    at_ms: i64,
    id: u128,
    content: Option<u64>,
}

impl Serialize for SeenId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.at_ms, self.id, self.content).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SeenId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SeenId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("(time, id hash[, content digest])")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SeenId, A::Error> {
                let missing = |i: usize| -> A::Error { serde::de::Error::invalid_length(i, &self) };
                Ok(SeenId {
                    at_ms: seq.next_element()?.ok_or_else(|| missing(0))?,
                    id: seq.next_element()?.ok_or_else(|| missing(1))?,
                    content: seq.next_element::<Option<u64>>()?.flatten(),
                })
            }
        }
        d.deserialize_seq(Visitor)
    }
}

impl From<VecDeque<SeenId>> for SeenEventIds {
    fn from(order: VecDeque<SeenId>) -> Self {
        let seen = order.iter().map(|s| (s.id, s.content)).collect();
        SeenEventIds { order, seen }
    }
}

impl From<SeenEventIds> for VecDeque<SeenId> {
    fn from(ids: SeenEventIds) -> Self {
        ids.order
    }
}

/// What a remembered id says of an event carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdCheck {
    /// The id is new within the horizon.
    New,
    /// The same event (or one applied before contents were compared) was applied.
    Duplicate,
    /// An event of other content was applied under the id.
    Conflict,
}

impl SeenEventIds {
    fn check(&self, hash: u128, content: u64) -> IdCheck {
        match self.seen.get(&hash) {
            None => IdCheck::New,
            Some(Some(seen)) if *seen != content => IdCheck::Conflict,
            Some(_) => IdCheck::Duplicate,
        }
    }

    fn insert(&mut self, clock_ms: i64, hash: u128, content: u64) {
        self.seen.insert(hash, Some(content));
        self.order.push_back(SeenId {
            at_ms: clock_ms,
            id: hash,
            content: Some(content),
        });
    }

    /// Forgets ids first seen before `before_ms`.
    fn expire(&mut self, before_ms: i64) {
        while let Some(&SeenId { at_ms, id, .. }) = self.order.front() {
            if at_ms >= before_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    /// Number of remembered ids.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// How an event is known to the event-id dedup.
enum Identity {
    /// Applied before: skip it.
    Duplicate,
    /// Under its own id (hash and content digest), if it has one.
    Id(Option<(u128, u64)>),
    /// Under this derived id (hash and content digest), its own being taken.
    Derived((u128, u64), String),
}

/// FNV-1a over 128 bits: a pinned hash, identical on every replica and Rust release.
fn id_hash(id: &str) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    id.bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// The writes applying a command makes: RocksDB's write batch in a node, a map in tests
/// of apply alone.
pub(crate) trait RowSink {
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]);
    /// Removes every key in `from..to`.
    fn delete_range(&mut self, from: &[u8], to: &[u8]);
}

impl RowSink for WriteBatch {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        WriteBatch::put(self, key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        WriteBatch::delete(self, key);
    }

    fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        WriteBatch::delete_range(self, from, to);
    }
}

/// Where applying a command puts its rows.
pub(crate) struct RowWriter<'a> {
    pub(crate) batch: &'a mut dyn RowSink,
    pub(crate) shard: u32,
    pub(crate) generation: u32,
}

/// A stored telemetry row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    /// The event as applied.
    pub event: Event,
    /// Its metrics.
    pub values: MetricValues,
}

impl RowWriter<'_> {
    fn table(&self, table: u8) -> Vec<u8> {
        keys::table(self.shard, self.generation, table)
    }

    /// Stores an event's encoded [`TelemetryRecord`] under its key.
    fn telemetry(&mut self, event: &Event, record: &[u8], index: u64, position: u32) {
        let mut key =
            keys::telemetry_key_prefix(self.shard, self.generation, &event.service, &event.model);
        key.extend_from_slice(&keys::time(event.timestamp_ms));
        key.extend_from_slice(&index.to_be_bytes());
        key.extend_from_slice(&position.to_be_bytes());
        self.batch.put(&key, record);
    }

    /// Stores an anomaly (its encoded `row`) under (raised at, alert id), after its
    /// severity byte.
    fn anomaly(&mut self, anomaly: &Anomaly, row: &[u8]) {
        let mut key = self.table(keys::ANOMALIES);
        key.extend_from_slice(&keys::time(anomaly.timestamp_ms));
        key.extend_from_slice(anomaly.alert_id.as_bytes());
        let mut value = Vec::with_capacity(row.len() + 1);
        value.push(severity_byte(anomaly.severity));
        value.extend_from_slice(row);
        self.batch.put(&key, &value);
    }

    /// Stores the latest version of an incident under (opened at, id).
    fn incident(&mut self, incident: &Incident) {
        let mut key = self.table(keys::INCIDENTS);
        key.extend_from_slice(&keys::time(incident.opened_at_ms));
        key.extend_from_slice(incident.incident_id.as_bytes());
        self.batch.put(&key, &encode_incident(incident));
    }

    fn queue_entry(&self, table: u8, seq: u64) -> Vec<u8> {
        keys::queue_entry(self.shard, self.generation, table, seq)
    }
}

/// A [`TelemetryRecord`]'s encoding, made from borrowed parts (a pair encodes exactly like
/// the record).
fn encode_record(event: &Event, values: &MetricValues) -> Vec<u8> {
    encode(&(event, values))
}

/// A severity as one byte (its rank).
pub(crate) fn severity_byte(s: sentinel_core::Severity) -> u8 {
    use sentinel_core::Severity::*;
    match s {
        Low => 0,
        Medium => 1,
        High => 2,
        Critical => 3,
    }
}

impl ShardState {
    /// The state of a shard that has applied nothing.
    pub(crate) fn new(shard: u32, settings: ShardSettings) -> Result<Self, String> {
        settings.check()?;
        let detector = ShardDetector::new(shard, settings.detection).map_err(|e| e.to_string())?;
        Ok(ShardState {
            detector,
            rest: Bookkeeping {
                event_id_horizon_ms: settings.event_id_horizon_ms,
                offsets: BTreeMap::new(),
                event_ids: SeenEventIds::default(),
                outbox_next: 0,
                outbox: BTreeSet::new(),
                clock_ms: i64::MIN,
                export: ExportQueue {
                    enabled: settings.export,
                    max: settings.export_queue_max,
                    first: 0,
                    next: 0,
                    dropped: 0,
                },
                keys: settings.keys,
            },
        })
    }

    /// Canonical bytes: equal states give equal bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let detector = self.detector.to_bytes();
        let rest = encode(&self.rest);
        let mut out = Vec::with_capacity(8 + detector.len() + rest.len());
        out.extend_from_slice(&(detector.len() as u64).to_be_bytes());
        out.extend_from_slice(&detector);
        out.extend_from_slice(&rest);
        out
    }

    /// Restores [`ShardState::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let len = bytes
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize)
            .filter(|&len| len <= bytes.len() - 8)
            .ok_or_else(|| Error::corrupt("core state", "truncated"))?;
        let detector = ShardDetector::from_bytes(&bytes[8..8 + len])
            .map_err(|e| Error::corrupt("detection state", e))?;
        let rest = decode("core state", &bytes[8 + len..])?;
        Ok(ShardState { detector, rest })
    }

    /// Applies one command of log entry `index`.
    pub(crate) fn apply(
        &mut self,
        command: &Command,
        index: u64,
        rows: &mut RowWriter<'_>,
    ) -> Response {
        if let Err(reason) = command.check() {
            return Response::Rejected(reason);
        }
        match command {
            Command::Ingest(batch) => Response::Ingested(self.ingest(batch, index, rows)),
            Command::AckAlerts(seqs) => {
                let mut acked = 0;
                for &seq in seqs {
                    if self.rest.outbox.remove(&seq) {
                        acked += 1;
                    }
                    rows.batch.delete(&rows.queue_entry(keys::OUTBOX, seq));
                }
                Response::Acked(acked)
            }
            Command::Configure(settings) => {
                let settings = settings.as_ref().clone();
                match self.detector.set_config(settings.detection) {
                    Ok(()) => {
                        self.rest.event_id_horizon_ms = settings.event_id_horizon_ms;
                        self.rest.export.enabled = settings.export;
                        self.rest.export.max = settings.export_queue_max;
                        self.rest.export.trim(rows);
                        self.rest.keys = settings.keys;
                        Response::Configured
                    }
                    Err(e) => Response::Rejected(e.to_string()),
                }
            }
            Command::Purge(retention) => {
                self.purge(retention, rows);
                Response::Purged
            }
            Command::Exported(seq) => {
                let removed = self.rest.export.remove_before(seq.saturating_add(1), rows);
                Response::Exported(removed as usize)
            }
            Command::AddSilence(silence) => {
                self.detector.add_silence(silence.clone());
                Response::Silence(silence.clone())
            }
            Command::ExpireSilence { silence_id, at_ms } => {
                match self.detector.expire_silence(silence_id, *at_ms) {
                    Ok(silence) => Response::Silence(silence.clone()),
                    Err(e) => Response::NotFound(e.to_string()),
                }
            }
            Command::AcknowledgeIncident { incident_id, actor } => {
                match self.detector.acknowledge(incident_id, actor.clone()) {
                    Ok(incident) => {
                        rows.incident(&incident);
                        Response::Incident(Box::new(incident))
                    }
                    Err(e) => Response::NotFound(e.to_string()),
                }
            }
            Command::ResolveIncident { incident_id, actor } => {
                match self.detector.resolve_incident(incident_id, actor.clone()) {
                    Ok((change, notification)) => {
                        self.record(std::slice::from_ref(&change), notification.as_slice(), rows);
                        Response::Incident(Box::new(change.incident))
                    }
                    Err(e) => Response::NotFound(e.to_string()),
                }
            }
        }
    }

    /// Stores changed incidents and queues their notifications; the outbox sequence numbers.
    fn record(
        &mut self,
        changes: &[Change],
        notifications: &[Notification],
        rows: &mut RowWriter<'_>,
    ) -> Vec<u64> {
        for change in changes {
            rows.incident(&change.incident);
        }
        notifications
            .iter()
            .map(|notification| {
                let seq = self.rest.outbox_next;
                self.rest.outbox_next += 1;
                self.rest.outbox.insert(seq);
                let row = encode_notification(notification);
                rows.batch.put(&rows.queue_entry(keys::OUTBOX, seq), &row);
                seq
            })
            .collect()
    }

    fn ingest(
        &mut self,
        batch: &IngestBatch,
        index: u64,
        rows: &mut RowWriter<'_>,
    ) -> IngestOutcome {
        self.rest.clock_ms = self.rest.clock_ms.max(batch.received_ms);
        self.rest.event_ids.expire(
            self.rest
                .clock_ms
                .saturating_sub(self.rest.event_id_horizon_ms),
        );
        let mut outcome = IngestOutcome {
            events: Vec::with_capacity(batch.events.len()),
            ..IngestOutcome::default()
        };
        let mut applied_offset = batch
            .source
            .as_ref()
            .and_then(|s| self.rest.offsets.get(s).copied());
        for (position, item) in batch.events.iter().enumerate() {
            if let (Some(offset), Some(applied)) = (item.offset, applied_offset) {
                if offset <= applied {
                    outcome.events.push(EventOutcome::DuplicateOffset);
                    continue;
                }
            }
            if item.offset.is_some() {
                applied_offset = item.offset;
            }
            let (id, derived) = match self.identify(&item.event) {
                Identity::Duplicate => {
                    outcome.events.push(EventOutcome::DuplicateEventId);
                    continue;
                }
                Identity::Id(id) => (id, None),
                Identity::Derived(id, derived) => (Some(id), Some(derived)),
            };
            let (service, model) = (&item.event.service, &item.event.model);
            if let Err(limit) = self.rest.keys.admit(&self.detector, service, model) {
                outcome.events.push(EventOutcome::KeyLimit(limit));
                continue;
            }
            if let Some((hash, content)) = id {
                self.rest
                    .event_ids
                    .insert(self.rest.clock_ms, hash, content);
            }
            let renamed = derived.as_ref().map(|derived| Event {
                event_id: Some(derived.clone()),
                ..item.event.clone()
            });
            let event = renamed.as_ref().unwrap_or(&item.event);
            let observation = self.detector.observe(event, &item.values);
            let record = encode_record(event, &item.values);
            rows.telemetry(event, &record, index, position as u32);
            self.rest.export.push(rows, EXPORT_TELEMETRY, &record);
            for anomaly in &observation.anomalies {
                let row = encode_anomaly(anomaly);
                rows.anomaly(anomaly, &row);
                self.rest.export.push(rows, EXPORT_ANOMALY, &row);
            }
            let queued = self.record(&observation.incidents, &observation.notifications, rows);
            outcome.alerts.extend(queued);
            outcome.folded += observation.repeats.len() as u64;
            outcome.withheld += observation.incidents.iter().filter(|c| !c.notify).count() as u64;
            outcome.events.push(match derived {
                Some(derived) => EventOutcome::AppliedAs(derived),
                None => EventOutcome::Applied,
            });
        }
        self.rest.export.trim(rows);
        if let (Some(source), Some(offset)) = (&batch.source, applied_offset) {
            self.rest.offsets.insert(source.clone(), offset);
        }
        outcome
    }

    /// The idempotency rule: an event is known by its id and its content. A repeated id
    /// with the same content is a duplicate; with other content it is another call that
    /// happens to share the id, applied under a derived id (the id and its content digest),
    /// which a retry of it repeats.
    fn identify(&self, event: &Event) -> Identity {
        let Some(id) = event.event_id.as_deref() else {
            return Identity::Id(None);
        };
        let (hash, content) = (id_hash(id), event.content_digest());
        match self.rest.event_ids.check(hash, content) {
            IdCheck::New => Identity::Id(Some((hash, content))),
            IdCheck::Duplicate => Identity::Duplicate,
            IdCheck::Conflict => {
                let derived = Event::derived_event_id(id, content);
                let hash = id_hash(&derived);
                match self.rest.event_ids.check(hash, content) {
                    IdCheck::New => Identity::Derived((hash, content), derived),
                    IdCheck::Duplicate | IdCheck::Conflict => Identity::Duplicate,
                }
            }
        }
    }

    fn purge(&mut self, retention: &Retention, rows: &mut RowWriter<'_>) {
        for (service, model) in self.detector.keys() {
            let prefix = keys::telemetry_key_prefix(rows.shard, rows.generation, service, model);
            let mut from = prefix.clone();
            from.extend_from_slice(&keys::time(i64::MIN));
            let mut to = prefix;
            to.extend_from_slice(&keys::time(retention.telemetry_before_ms));
            rows.batch.delete_range(&from, &to);
        }
        for table in [keys::ANOMALIES, keys::INCIDENTS] {
            let table = rows.table(table);
            let mut to = table.clone();
            to.extend_from_slice(&keys::time(retention.anomalies_before_ms));
            rows.batch.delete_range(&table, &to);
        }
        self.detector.purge_dedup(retention.dedup_before_ms);
        self.detector.purge_silences(retention.anomalies_before_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{IngestBatch, IngestEvent};

    /// Rows in memory, as RocksDB would hold them after the batch.
    impl RowSink for BTreeMap<Vec<u8>, Vec<u8>> {
        fn put(&mut self, key: &[u8], value: &[u8]) {
            self.insert(key.to_vec(), value.to_vec());
        }

        fn delete(&mut self, key: &[u8]) {
            self.remove(key);
        }

        fn delete_range(&mut self, from: &[u8], to: &[u8]) {
            self.retain(|key, _| !(from..to).contains(&key.as_slice()));
        }
    }

    #[test]
    fn apply_writes_rows_and_queues_them_for_export_without_a_database() {
        let settings = ShardSettings {
            export: true,
            ..ShardSettings::default()
        };
        let mut state = ShardState::new(3, settings).unwrap();
        let call = |id: &str, latency_ms: f64| IngestEvent {
            offset: None,
            event: Event {
                event_id: Some(id.into()),
                timestamp_ms: 1_767_600_000_000,
                service: "chat".into(),
                model: "gpt-4o".into(),
                latency_ms,
                ..Event::default()
            },
            values: MetricValues([Some(latency_ms), None, None, None, None, None]),
        };
        let batch = Command::Ingest(IngestBatch {
            received_ms: 1_767_600_000_000,
            source: None,
            events: vec![
                call("a", 120.0),
                call("b", 130.0),
                call("a", 120.0),
                call("a", 999.0),
            ],
        });
        let mut db = BTreeMap::new();
        let mut rows = RowWriter {
            batch: &mut db,
            shard: 3,
            generation: 0,
        };
        let Response::Ingested(outcome) = state.apply(&batch, 7, &mut rows) else {
            panic!("an ingest is answered with its outcome");
        };
        let derived = Event::derived_event_id("a", call("a", 999.0).event.content_digest());
        assert_eq!(
            outcome.events,
            [
                EventOutcome::Applied,
                EventOutcome::Applied,
                EventOutcome::DuplicateEventId,
                EventOutcome::AppliedAs(derived),
            ]
        );
        let in_table = |table: u8| {
            let prefix = keys::table(3, 0, table);
            db.keys().filter(|k| k.starts_with(&prefix)).count()
        };
        assert_eq!(in_table(keys::TELEMETRY), 3);
        // The third call of the key, 8× its median, is flagged by the young baseline.
        let prefix = keys::table(3, 0, keys::ANOMALIES);
        let anomalies: Vec<Anomaly> = db
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, row)| crate::alert_rows::decode_anomaly(&row[1..]).unwrap())
            .collect();
        assert_eq!(anomalies.len(), 1, "{anomalies:?}");
        assert_eq!(anomalies[0].details.value, 999.0);
        assert_eq!(in_table(keys::EXPORT), 3 + 1, "telemetry and the anomaly");
        assert_eq!(state.rest.export.pending(), 4);
    }

    #[test]
    fn a_stored_event_value_pair_decodes_as_a_record() {
        let event = Event {
            service: "chat".into(),
            metadata: [("tier".to_owned(), serde_json::json!({"gold": true}))].into(),
            ..Event::default()
        };
        let values = MetricValues([Some(1.5), None, Some(3.0), None, None, None]);
        let record: TelemetryRecord = decode("row", &encode_record(&event, &values)).unwrap();
        assert_eq!(record, TelemetryRecord { event, values });
    }

    #[test]
    fn rows_written_before_the_format_byte_still_decode() {
        let event = Event {
            service: "chat".into(),
            latency_ms: 120.0,
            ..Event::default()
        };
        let values = MetricValues([Some(120.0), None, None, None, None, None]);
        // The earlier encoding: bare MessagePack, structs as arrays.
        let earlier = rmp_serde::to_vec(&(&event, &values)).unwrap();
        let now = encode_record(&event, &values);
        assert_eq!(now[0], sentinel_core::codec::FORMAT);
        assert_eq!(now[1..], earlier[..], "the body is unchanged");
        let record: TelemetryRecord = decode("row", &earlier).unwrap();
        assert_eq!(record, TelemetryRecord { event, values });
        assert_eq!(crate::error::current_form(&earlier)[..], now[..]);
        let rest = ShardState::new(3, ShardSettings::default()).unwrap().rest;
        let bookkeeping: Bookkeeping =
            decode("core state", &rmp_serde::to_vec(&rest).unwrap()).unwrap();
        assert_eq!(bookkeeping, rest);
    }

    #[test]
    fn id_hash_is_pinned() {
        assert_eq!(id_hash(""), 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d);
        assert_ne!(id_hash("evt-1"), id_hash("evt-2"));
        assert_eq!(id_hash("evt-1"), id_hash("evt-1"));
    }

    #[test]
    fn event_ids_expire_oldest_first_and_round_trip() {
        let mut ids = SeenEventIds::default();
        ids.insert(10, 1, 100);
        ids.insert(20, 2, 200);
        ids.insert(30, 3, 300);
        ids.expire(20);
        assert_eq!(ids.check(1, 100), IdCheck::New);
        assert_eq!(ids.check(2, 200), IdCheck::Duplicate);
        assert_eq!(ids.check(3, 301), IdCheck::Conflict);
        let back: SeenEventIds = decode("ids", &encode(&ids)).unwrap();
        assert_eq!(back, ids);
        assert_eq!(back.check(2, 200), IdCheck::Duplicate);
    }

    #[test]
    fn ids_remembered_without_a_digest_by_an_earlier_version_stay_duplicates() {
        let earlier: VecDeque<(i64, u128)> = [(10, 1), (20, 2)].into();
        let ids: SeenEventIds = decode("ids", &encode(&earlier)).unwrap();
        assert_eq!(ids.check(1, 7), IdCheck::Duplicate);
        assert_eq!(ids.check(3, 7), IdCheck::New);
    }

    #[test]
    fn core_state_round_trips_with_a_tuned_configuration() {
        let mut settings = ShardSettings::default();
        let mut metric =
            sentinel_core::config::MetricConfig::default_for(sentinel_core::Metric::LatencyMs);
        metric.scale = sentinel_core::config::Scale::Linear;
        settings
            .detection
            .metrics
            .insert(sentinel_core::Metric::LatencyMs, metric);
        let state = ShardState::new(4, settings).unwrap();
        let back = ShardState::from_bytes(&state.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), state.to_bytes());
        assert!(ShardState::from_bytes(&[0, 0, 0, 0, 0, 0, 0, 99]).is_err());
    }
}
