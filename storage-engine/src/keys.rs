//! The key layout of the node's one RocksDB: every key starts with the shard id.
//!
//! ```text
//! [shard u32][b'v']                              vote (kept when the shard is dropped)
//! [shard u32][b'x']                              last log id of replicas dropped here (kept)
//! [shard u32][b'c']                              committed log id
//! [shard u32][b'p']                              last purged log id
//! [shard u32][b'l'][index u64]                   log entry
//! [shard u32][b'm']                              state machine meta (applied, membership, generation)
//! [shard u32][b's']                              meta of the current snapshot
//! [shard u32][b'k'][chunk u32]                   checkpointed core state, in chunks
//! [shard u32][b'r'][generation u32][table u8]…   state rows (telemetry, anomalies, incidents,
//!                                                outbox, export queue)
//! ```
//!
//! Integers are big-endian so that byte order is numeric order; timestamps are stored with
//! the sign bit flipped so that negative times sort before positive ones.

/// Vote of a shard's Raft group.
pub(crate) const VOTE: u8 = b'v';
/// The highest last log id of the replicas of a shard dropped here.
pub(crate) const DROPPED: u8 = b'x';
/// Committed log id of a shard's Raft group.
pub(crate) const COMMITTED: u8 = b'c';
/// Last purged log id of a shard's Raft group.
pub(crate) const PURGED: u8 = b'p';
/// Log entries.
pub(crate) const LOG: u8 = b'l';
/// State machine meta.
pub(crate) const META: u8 = b'm';
/// Meta of the current snapshot.
pub(crate) const SNAPSHOT: u8 = b's';
/// Checkpointed core state chunks.
pub(crate) const CORE: u8 = b'k';
/// State rows, under a generation.
pub(crate) const ROWS: u8 = b'r';

/// Table of recent telemetry, ordered by service, model, time.
pub(crate) const TELEMETRY: u8 = b't';
/// Table of anomalies, ordered by time.
pub(crate) const ANOMALIES: u8 = b'a';
/// Table of incidents, ordered by opening time and id (the latest version of each).
pub(crate) const INCIDENTS: u8 = b'i';
/// Table of the alert outbox, ordered by sequence number.
pub(crate) const OUTBOX: u8 = b'o';
/// Table of the telemetry export queue, ordered by sequence number.
pub(crate) const EXPORT: u8 = b'e';

/// Whether `key` is one of the keys a dropped shard keeps (its vote, the log id it held):
/// they are the last kinds of a group, so a group whose first key is kept holds no data.
pub(crate) fn is_kept(shard: u32, key: &[u8]) -> bool {
    [VOTE, DROPPED]
        .iter()
        .any(|&k| key == kind(shard, k).as_slice())
}

/// `[shard][kind]`.
pub(crate) fn kind(shard: u32, kind: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(32);
    k.extend_from_slice(&shard.to_be_bytes());
    k.push(kind);
    k
}

/// The first key of the shard after `shard` (exclusive end of a shard's key space).
pub(crate) fn shard_end(shard: u32) -> Vec<u8> {
    match shard.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 5],
    }
}

/// The exclusive end of `[shard][kind]…`.
pub(crate) fn kind_end(shard: u32, kind_byte: u8) -> Vec<u8> {
    kind(shard, kind_byte + 1)
}

/// Key of the log entry at `index`.
pub(crate) fn log(shard: u32, index: u64) -> Vec<u8> {
    let mut k = kind(shard, LOG);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Log index of a log key.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(5..13)?.try_into().ok()?))
}

/// Key of chunk `chunk` of the checkpointed core state.
pub(crate) fn core_chunk(shard: u32, chunk: u32) -> Vec<u8> {
    let mut k = kind(shard, CORE);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// `[shard][ROWS][generation]`: the prefix of every state row of one generation.
pub(crate) fn rows(shard: u32, generation: u32) -> Vec<u8> {
    let mut k = kind(shard, ROWS);
    k.extend_from_slice(&generation.to_be_bytes());
    k
}

/// The exclusive end of a generation's rows.
pub(crate) fn rows_end(shard: u32, generation: u32) -> Vec<u8> {
    match generation.checked_add(1) {
        Some(next) => rows(shard, next),
        None => kind_end(shard, ROWS),
    }
}

/// `[shard][ROWS][generation][table]`.
pub(crate) fn table(shard: u32, generation: u32, table: u8) -> Vec<u8> {
    let mut k = rows(shard, generation);
    k.push(table);
    k
}

/// `[rows][table][seq u64]`: an entry of a table ordered by sequence number (outbox, export queue).
pub(crate) fn queue_entry(shard: u32, generation: u32, table_byte: u8, seq: u64) -> Vec<u8> {
    let mut k = table(shard, generation, table_byte);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number of a queue entry's key, given the key after its table byte.
pub(crate) fn queue_seq(rest: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// A timestamp as 8 bytes whose byte order is time order.
pub(crate) fn time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`time`].
pub(crate) fn time_from(bytes: &[u8]) -> Option<i64> {
    let raw = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some((raw ^ (1 << 63)) as i64)
}

/// Appends a length-prefixed string, so that `("ab","c")` and `("a","bc")` differ.
pub(crate) fn push_str(key: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// `[rows][TELEMETRY][service][model]`: the prefix of one key's telemetry.
pub(crate) fn telemetry_key_prefix(
    shard: u32,
    generation: u32,
    service: &str,
    model: &str,
) -> Vec<u8> {
    let mut k = table(shard, generation, TELEMETRY);
    push_str(&mut k, service);
    push_str(&mut k, model);
    k
}

/// Splits the `[service][model]` part of a telemetry key (after the table byte).
pub(crate) fn split_service_model(rest: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (service, rest) = take_str(rest)?;
    let (model, rest) = take_str(rest)?;
    Some((service, model, rest))
}

fn take_str(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?));
    let s = bytes.get(2..2 + len)?;
    Some((s, &bytes[2 + len..]))
}

/// The shard id a key belongs to.
pub(crate) fn shard_of_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_order_is_byte_order() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time(pair[0]) < time(pair[1]));
            assert_eq!(time_from(&time(pair[0])), Some(pair[0]));
        }
    }

    #[test]
    fn shard_key_spaces_do_not_overlap() {
        let a_end = shard_end(7);
        assert!(log(7, u64::MAX) < a_end);
        assert!(kind(8, VOTE) >= a_end);
        assert!(rows_end(7, u32::MAX) <= a_end);
        assert_eq!(shard_end(u32::MAX), vec![0xff; 5]);
        assert!(log(u32::MAX, u64::MAX) < shard_end(u32::MAX));
    }

    #[test]
    fn the_kept_keys_are_the_last_keys_of_a_group() {
        for other in [COMMITTED, PURGED, META, SNAPSHOT] {
            assert!(kind(7, other) < kind(7, VOTE));
        }
        assert!(log(7, u64::MAX) < kind(7, VOTE));
        assert!(rows_end(7, u32::MAX) <= kind(7, VOTE));
        assert!(core_chunk(7, u32::MAX) < kind(7, VOTE));
        assert!(kind(7, VOTE) < kind(7, DROPPED));
        assert!(kind(7, DROPPED) < shard_end(7));
        assert!(is_kept(7, &kind(7, DROPPED)) && is_kept(7, &kind(7, VOTE)));
        assert!(!is_kept(7, &kind(7, PURGED)) && !is_kept(8, &kind(7, VOTE)));
    }

    #[test]
    fn queue_entries_sort_by_sequence_number() {
        let table_len = table(3, 1, EXPORT).len();
        let entries: Vec<_> = [0, 1, 255, 256, u64::MAX]
            .iter()
            .map(|&seq| queue_entry(3, 1, EXPORT, seq))
            .collect();
        for pair in entries.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        assert_eq!(queue_seq(&entries[3][table_len..]), Some(256));
        assert_eq!(queue_seq(&entries[3][table_len + 1..]), None);
        assert!(entries[4] < rows_end(3, 1));
    }

    #[test]
    fn length_prefix_keeps_service_model_pairs_apart() {
        let a = telemetry_key_prefix(1, 0, "ab", "c");
        let b = telemetry_key_prefix(1, 0, "a", "bc");
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        let rest = &a[10..];
        let (s, m, tail) = split_service_model(rest).unwrap();
        assert_eq!((s, m, tail), (&b"ab"[..], &b"c"[..], &b""[..]));
    }
}
