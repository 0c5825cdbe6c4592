//! Queries a node answers from a shard replica's state.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::{BasicNode, LogId, StoredMembership};
use rocksdb::{Direction, IteratorMode, ReadOptions};
use sentinel_core::incident::{IncidentStatus, Silence};
use sentinel_core::shard_detector::KeyBaseline;
use sentinel_core::{Anomaly, Incident, NotificationKind, Severity};
use sha2::{Digest, Sha256};

use crate::alert_rows::{
    decode_anomaly, decode_incident, decode_queued, document_in_current_form, Queued,
};
use crate::command::{ShardSettings, SourcePartition};
use crate::error::{current_form, decode, Error};
use crate::keys;
use crate::machine::ShardStore;
use crate::state::{severity_byte, TelemetryRecord, EXPORT_ANOMALY, EXPORT_TELEMETRY};

/// Read access to one shard replica, usable while Raft owns its state machine.
#[derive(Clone)]
pub struct ShardReader {
    store: Arc<ShardStore>,
}

/// A telemetry query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryQuery {
    /// Only this service (all when `None`).
    pub service: Option<String>,
    /// Only this model (all when `None`; needs `service` to be a key-range read).
    pub model: Option<String>,
    /// Event time from (inclusive, ms since the Unix epoch).
    pub from_ms: i64,
    /// Event time until (exclusive).
    pub until_ms: i64,
    /// Resume after the page that returned this cursor.
    pub cursor: Option<String>,
    /// Records per page.
    pub limit: usize,
}

/// One page of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The records, in key order.
    pub items: Vec<T>,
    /// Pass this back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// An incident query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncidentQuery {
    /// Only incidents in this state (all when `None`).
    pub status: Option<IncidentStatus>,
    /// Only this service.
    pub service: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only the incident with this id.
    pub incident_id: Option<String>,
    /// Opened at or after (ms since the Unix epoch).
    pub since_ms: i64,
    /// Only incidents before this (opened at, incident id) in that order: the page after it.
    pub before: Option<(i64, String)>,
    /// Most incidents answered.
    pub limit: usize,
}

/// An alert waiting for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Outbox sequence number (acknowledge with it).
    pub seq: u64,
    /// The notification as JSON, exactly as delivered.
    pub json: String,
    /// Its alert fields (what routing reads).
    pub alert: Anomaly,
    /// What happened to the incident it tells of (none for a point alert queued by an
    /// earlier version).
    pub event: Option<NotificationKind>,
}

/// What an export-queue entry carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportItem {
    /// An applied event.
    Telemetry(TelemetryRecord),
    /// A raised anomaly.
    Anomaly(Anomaly),
}

/// An entry of the export queue.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportEntry {
    /// Export sequence number (acknowledge with `Command::Exported`).
    pub seq: u64,
    /// The telemetry or anomaly to export.
    pub item: ExportItem,
}

/// Counters describing a shard replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSummary {
    /// Last applied log id.
    pub last_applied: Option<LogId<u64>>,
    /// Membership as of the last applied entry.
    pub membership: StoredMembership<u64, BasicNode>,
    /// Events observed by detection.
    pub events_observed: u64,
    /// Alerts raised.
    pub alerts_raised: u64,
    /// (service, model) keys with a baseline.
    pub keys: usize,
    /// Incidents open.
    pub open_incidents: usize,
    /// Alerts in the outbox.
    pub outbox_pending: usize,
    /// Event ids remembered for duplicate suppression.
    pub event_ids: usize,
    /// Entries in the export queue.
    pub export_pending: u64,
    /// Export-queue entries dropped unexported (queue full, or export switched off).
    pub export_dropped: u64,
}

impl ShardReader {
    pub(crate) fn new(store: Arc<ShardStore>) -> Self {
        ShardReader { store }
    }

    /// The shard id.
    pub fn shard(&self) -> u32 {
        self.store.shard
    }

    fn table(&self, table: u8) -> Vec<u8> {
        keys::table(self.store.shard, self.store.read().generation, table)
    }

    /// Telemetry in (service, model, time) order, one page at a time.
    pub fn telemetry(&self, query: &TelemetryQuery) -> Result<Page<TelemetryRecord>, Error> {
        let table = self.table(keys::TELEMETRY);
        let mut scope = table.clone();
        if let Some(service) = &query.service {
            keys::push_str(&mut scope, service);
            if let Some(model) = &query.model {
                keys::push_str(&mut scope, model);
            }
        }
        let (mut start, end) = match (&query.service, &query.model) {
            (Some(_), Some(_)) => {
                let mut from = scope.clone();
                from.extend_from_slice(&keys::time(query.from_ms));
                let mut until = scope.clone();
                until.extend_from_slice(&keys::time(query.until_ms));
                (from, until)
            }
            _ => (scope.clone(), prefix_end(&scope)),
        };
        if let Some(cursor) = &query.cursor {
            let mut after = table.clone();
            after.extend(unhex(cursor).ok_or(Error::InvalidCursor)?);
            after.push(0);
            if !after.starts_with(&scope) {
                return Err(Error::InvalidCursor);
            }
            start = start.max(after);
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(end);
        let mut items = Vec::new();
        let mut last_key = None;
        for item in self
            .store
            .backend
            .db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), options)
        {
            let (key, value) = item?;
            let rest = &key[table.len()..];
            let (_, _, tail) = keys::split_service_model(rest)
                .ok_or_else(|| Error::corrupt("telemetry key", "malformed"))?;
            let ts =
                keys::time_from(tail).ok_or_else(|| Error::corrupt("telemetry key", "no time"))?;
            if ts < query.from_ms || ts >= query.until_ms {
                continue;
            }
            if items.len() == query.limit {
                break;
            }
            items.push(decode("telemetry", &value)?);
            last_key = Some(rest.to_vec());
        }
        let next_cursor = if items.len() == query.limit {
            last_key.map(|k| hex(&k))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Anomalies raised at or after `since_ms`, newest first, optionally of one severity.
    pub fn anomalies(
        &self,
        severity: Option<Severity>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<Anomaly>, Error> {
        self.anomalies_before(severity, since_ms, None, limit)
    }

    /// [`ShardReader::anomalies`] that come before `before` (raised at, alert id) in
    /// (time, alert id) order: the page after that anomaly.
    pub fn anomalies_before(
        &self,
        severity: Option<Severity>,
        since_ms: i64,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Anomaly>, Error> {
        let table = self.table(keys::ANOMALIES);
        let mut from = table.clone();
        from.extend_from_slice(&keys::time(since_ms));
        let until = match before {
            Some((at_ms, alert_id)) => {
                let mut until = table.clone();
                until.extend_from_slice(&keys::time(at_ms));
                until.extend_from_slice(alert_id.as_bytes());
                until
            }
            None => prefix_end(&table),
        };
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(from);
        options.set_iterate_upper_bound(until);
        let wanted = severity.map(severity_byte);
        let mut out = Vec::new();
        for item in self
            .store
            .backend
            .db
            .iterator_opt(IteratorMode::End, options)
        {
            if out.len() >= limit {
                break;
            }
            let (_, value) = item?;
            let (&sev, row) = value
                .split_first()
                .ok_or_else(|| Error::corrupt("anomaly", "empty row"))?;
            if wanted.is_some_and(|w| w != sev) {
                continue;
            }
            out.push(decode_anomaly(row)?);
        }
        Ok(out)
    }

    /// Incidents matching `query`, newest opening first; open ones as they stand now.
    pub fn incidents(&self, query: &IncidentQuery) -> Result<Vec<Incident>, Error> {
        let open: BTreeMap<String, Incident> = self
            .store
            .read()
            .core
            .detector
            .open_incidents()
            .into_iter()
            .map(|i| (i.incident_id.clone(), i.clone()))
            .collect();
        let table = self.table(keys::INCIDENTS);
        let mut from = table.clone();
        from.extend_from_slice(&keys::time(query.since_ms));
        let until = match &query.before {
            Some((at_ms, id)) => {
                let mut until = table.clone();
                until.extend_from_slice(&keys::time(*at_ms));
                until.extend_from_slice(id.as_bytes());
                until
            }
            None => prefix_end(&table),
        };
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(from);
        options.set_iterate_upper_bound(until);
        let mut out = Vec::new();
        for item in self
            .store
            .backend
            .db
            .iterator_opt(IteratorMode::End, options)
        {
            if out.len() >= query.limit {
                break;
            }
            let (_, value) = item?;
            let stored = decode_incident(&value)?;
            // A row is rewritten on every change; an open incident's counts move on in the state.
            let incident = open.get(&stored.incident_id).cloned().unwrap_or(stored);
            let wanted = query.status.is_none_or(|s| s == incident.status)
                && query
                    .service
                    .as_ref()
                    .is_none_or(|s| *s == incident.service_name)
                && query.model.as_ref().is_none_or(|m| *m == incident.model)
                && query
                    .incident_id
                    .as_ref()
                    .is_none_or(|id| *id == incident.incident_id);
            if wanted {
                out.push(incident);
            }
        }
        Ok(out)
    }

    /// The silences of the shard, active or not, in id order.
    pub fn silences(&self) -> Vec<Silence> {
        self.store
            .read()
            .core
            .detector
            .silences()
            .cloned()
            .collect()
    }

    /// Alerts not yet acknowledged, oldest first, starting after `after_seq`.
    pub fn outbox(&self, after_seq: Option<u64>, limit: usize) -> Result<Vec<OutboxEntry>, Error> {
        let generation = self.store.read().generation;
        self.queue(
            generation,
            keys::OUTBOX,
            first_after(after_seq),
            limit,
            |seq, value| {
                let Queued { json, alert, event } = decode_queued(value)?;
                Ok(OutboxEntry {
                    seq,
                    json,
                    alert,
                    event,
                })
            },
        )
    }

    /// Telemetry and anomalies waiting for export, in apply order, starting after `after_seq`.
    pub fn export_queue(
        &self,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ExportEntry>, Error> {
        let (generation, first) = {
            let applied = self.store.read();
            (applied.generation, applied.core.rest.export.first)
        };
        let from = first_after(after_seq).max(first);
        self.queue(generation, keys::EXPORT, from, limit, |seq, value| {
            let item = match value.split_first() {
                Some((&EXPORT_TELEMETRY, record)) => {
                    ExportItem::Telemetry(decode("export queue", record)?)
                }
                Some((&EXPORT_ANOMALY, row)) => ExportItem::Anomaly(decode_anomaly(row)?),
                _ => return Err(Error::corrupt("export queue", "unknown entry kind")),
            };
            Ok(ExportEntry { seq, item })
        })
    }

    /// Up to `limit` entries of a table ordered by sequence number, from `from_seq` on.
    fn queue<T>(
        &self,
        generation: u32,
        table: u8,
        from_seq: u64,
        limit: usize,
        mut decode_entry: impl FnMut(u64, &[u8]) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let prefix = keys::table(self.store.shard, generation, table);
        let from = keys::queue_entry(self.store.shard, generation, table, from_seq);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(&prefix));
        let mut out = Vec::new();
        for item in self
            .store
            .backend
            .db
            .iterator_opt(IteratorMode::From(&from, Direction::Forward), options)
            .take(limit)
        {
            let (key, value) = item?;
            let seq = keys::queue_seq(&key[prefix.len()..])
                .ok_or_else(|| Error::corrupt("queue key", "malformed"))?;
            out.push(decode_entry(seq, &value)?);
        }
        Ok(out)
    }

    /// Baselines of the matching keys (`None` matches all).
    pub fn baselines(&self, service: Option<&str>, model: Option<&str>) -> Vec<KeyBaseline> {
        self.store.read().core.detector.baselines(service, model)
    }

    /// A page of [`ShardReader::baselines`]: at most `limit` keys after `after` (service,
    /// model), in (service, model) order.
    pub fn baselines_after(
        &self,
        service: Option<&str>,
        model: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Vec<KeyBaseline> {
        let mut baselines = self.baselines(service, model);
        baselines.sort_by(|a, b| (&a.service_name, &a.model).cmp(&(&b.service_name, &b.model)));
        let first = after.map_or(0, |after| {
            baselines.partition_point(|b| (b.service_name.as_str(), b.model.as_str()) <= after)
        });
        baselines.drain(..first);
        baselines.truncate(limit);
        baselines
    }

    /// The settings in force.
    pub fn settings(&self) -> ShardSettings {
        let applied = self.store.read();
        let rest = &applied.core.rest;
        ShardSettings {
            detection: applied.core.detector.config().clone(),
            event_id_horizon_ms: rest.event_id_horizon_ms,
            export: rest.export.enabled,
            export_queue_max: rest.export.max,
            keys: rest.keys,
        }
    }

    /// Highest applied offset of every source partition.
    pub fn applied_offsets(&self) -> BTreeMap<SourcePartition, u64> {
        self.store.read().core.rest.offsets.clone()
    }

    /// Applied position and counters.
    pub fn summary(&self) -> ShardSummary {
        let applied = self.store.read();
        ShardSummary {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            events_observed: applied.core.detector.observed(),
            alerts_raised: applied.core.detector.raised(),
            keys: applied.core.detector.key_count(),
            open_incidents: applied.core.detector.open_incidents().len(),
            outbox_pending: applied.core.rest.outbox.len(),
            event_ids: applied.core.rest.event_ids.len(),
            export_pending: applied.core.rest.export.pending(),
            export_dropped: applied.core.rest.export.dropped,
        }
    }

    /// SHA-256 (hex) of the core state and every row: equal on replicas with the same
    /// state, whatever entries without effect (blank, membership) their logs hold.
    pub fn digest(&self) -> Result<String, Error> {
        let applied = self.store.read();
        let mut hash = Sha256::new();
        hash.update(applied.core.to_bytes());
        let prefix = keys::rows(self.store.shard, applied.generation);
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::rows_end(self.store.shard, applied.generation));
        for item in self
            .store
            .backend
            .db
            .iterator_opt(IteratorMode::From(&prefix, Direction::Forward), options)
        {
            let (key, value) = item?;
            let key = &key[prefix.len()..];
            let value = row_in_current_form(key, &value);
            hash.update((key.len() as u32).to_be_bytes());
            hash.update(key);
            hash.update((value.len() as u32).to_be_bytes());
            hash.update(&value);
        }
        Ok(hex(&hash.finalize()))
    }

    /// Writes a checkpoint now, so that a restart re-applies nothing (for a clean shutdown).
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.store.checkpoint()
    }
}

/// The first sequence number after `after_seq` (0 when `None`).
fn first_after(after_seq: Option<u64>) -> u64 {
    after_seq.map_or(0, |s| s.saturating_add(1))
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// A row (`key` after the rows prefix: table byte first) as this version writes it: the
/// MessagePack rows (telemetry, and telemetry in the export queue) of an earlier version
/// gain the format byte, its JSON rows (anomalies, incidents, queued notifications, and
/// anomalies in the export queue) are encoded again; other rows are as they are.
fn row_in_current_form<'v>(key: &[u8], value: &'v [u8]) -> Cow<'v, [u8]> {
    // A row of a kind byte, then a value: unchanged when the value is.
    let after_kind = |kind: u8, rest: Cow<'_, [u8]>| match rest {
        Cow::Borrowed(_) => Cow::Borrowed(value),
        Cow::Owned(rest) => Cow::Owned([&[kind][..], &rest].concat()),
    };
    match (key.first(), value.split_first()) {
        (Some(&keys::TELEMETRY), _) => current_form(value),
        (Some(&keys::EXPORT), Some((&EXPORT_TELEMETRY, record))) => {
            after_kind(EXPORT_TELEMETRY, current_form(record))
        }
        (Some(&keys::EXPORT), Some((&EXPORT_ANOMALY, row))) => after_kind(
            EXPORT_ANOMALY,
            document_in_current_form(keys::ANOMALIES, row),
        ),
        (Some(&keys::ANOMALIES), Some((&severity, row))) => {
            after_kind(severity, document_in_current_form(keys::ANOMALIES, row))
        }
        (Some(&table @ (keys::INCIDENTS | keys::OUTBOX)), _) => {
            document_in_current_form(table, value)
        }
        _ => Cow::Borrowed(value),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_the_earlier_encoding_hash_as_rows_written_now() {
        let earlier = rmp_serde::to_vec(&(1u32, "x")).unwrap();
        let now = crate::error::encode(&(1u32, "x"));
        assert_eq!(
            row_in_current_form(&[keys::TELEMETRY, 0], &earlier)[..],
            now[..]
        );
        assert_eq!(
            row_in_current_form(&[keys::TELEMETRY, 0], &now)[..],
            now[..]
        );
        let queued = |record: &[u8]| [&[EXPORT_TELEMETRY][..], record].concat();
        assert_eq!(
            row_in_current_form(&[keys::EXPORT, 0], &queued(&earlier))[..],
            queued(&now)[..]
        );
        let json = br#"{"alert_id":"a"}"#;
        assert_eq!(
            row_in_current_form(&[keys::ANOMALIES, 0], json)[..],
            json[..],
            "a row that does not parse is hashed as it is"
        );
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(unhex(&hex(&[0, 7, 255])), Some(vec![0, 7, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }
}
