//! Which offsets of each assigned partition may be committed.
//!
//! Messages of a partition are read in offset order and settle in any order (events of
//! different shards are answered independently). A partition's commit point is one past
//! the highest offset up to which every message read has settled: committed by its shard
//! or acknowledged by the dead-letter topic. Each assignment of a partition gets a new
//! generation, so settlements of messages read under an earlier assignment (revoked since)
//! are told apart and ignored.

use std::collections::{BTreeMap, VecDeque};

/// A topic and partition.
pub type PartitionKey = (String, i32);

/// One assigned partition.
#[derive(Debug)]
struct PartitionState {
    generation: u64,
    /// Offsets read and not yet below the commit point, in read (= offset) order, each
    /// with whether it has settled.
    pending: VecDeque<(i64, bool)>,
    /// Highest offset read under this assignment.
    highest_read: Option<i64>,
    /// One past the highest offset up to which everything read has settled.
    settled_to: Option<i64>,
    /// The commit point last handed out for committing.
    committed: Option<i64>,
}

/// The offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct Tracker {
    partitions: BTreeMap<PartitionKey, PartitionState>,
    generations: u64,
}

impl Tracker {
    /// Starts tracking `key` afresh (its messages are read from the committed offset).
    pub fn assign(&mut self, key: PartitionKey) -> u64 {
        self.generations += 1;
        self.partitions.insert(
            key,
            PartitionState {
                generation: self.generations,
                pending: VecDeque::new(),
                highest_read: None,
                settled_to: None,
                committed: None,
            },
        );
        self.generations
    }

    /// Stops tracking `key`; the commit point to commit before letting it go, when it
    /// advanced since the last commit.
    pub fn revoke(&mut self, key: &PartitionKey) -> Option<i64> {
        let state = self.partitions.remove(key)?;
        state.settled_to.filter(|&to| Some(to) > state.committed)
    }

    /// The partitions tracked.
    pub fn assigned(&self) -> impl Iterator<Item = &PartitionKey> {
        self.partitions.keys()
    }

    /// The offsets of `key` between the highest read under this assignment and `offset`
    /// that were never read, when reading jumps forward over some.
    pub fn skipped(&self, key: &PartitionKey, offset: i64) -> Option<std::ops::Range<i64>> {
        let highest = self.partitions.get(key)?.highest_read?;
        (offset > highest + 1).then_some(highest + 1..offset)
    }

    /// Records that the message at `offset` of `key` was read; its generation, or `None`
    /// when its partition is not assigned (any more) and the message is not processed.
    ///
    /// Reading goes forward. An offset at or below one read before means the consumer
    /// went back (a seek or an offset reset): everything from there is read again, so
    /// the partition starts a new generation there, and settlements of the earlier
    /// reads count for nothing; the commit point never moves back.
    pub fn read(&mut self, key: &PartitionKey, offset: i64) -> Option<u64> {
        let state = self.partitions.get_mut(key)?;
        if state.highest_read.is_some_and(|highest| offset <= highest) {
            self.generations += 1;
            state.generation = self.generations;
            state.pending.clear();
            state.settled_to = None;
        }
        state.highest_read = Some(offset);
        state.pending.push_back((offset, false));
        Some(state.generation)
    }

    /// Records that the message at `offset` of `key`, read under `generation`, settled;
    /// false when that assignment is over (the settlement counts for nothing).
    pub fn settle(&mut self, key: &PartitionKey, generation: u64, offset: i64) -> bool {
        let Some(state) = self
            .partitions
            .get_mut(key)
            .filter(|s| s.generation == generation)
        else {
            return false;
        };
        let Ok(index) = state.pending.binary_search_by_key(&offset, |&(o, _)| o) else {
            return false;
        };
        state.pending[index].1 = true;
        while let Some(&(offset, true)) = state.pending.front() {
            state.pending.pop_front();
            state.settled_to = Some(offset + 1);
        }
        true
    }

    /// The commit points that advanced since they were last handed out, now marked as
    /// committed.
    pub fn to_commit(&mut self) -> Vec<(PartitionKey, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(key, state)| {
                let to = state.settled_to.filter(|&to| Some(to) > state.committed)?;
                state.committed = Some(to);
                Some((key.clone(), to))
            })
            .collect()
    }

    /// Records that committing `offset` for `key` failed, so it is handed out again.
    pub fn commit_failed(&mut self, key: &PartitionKey, offset: i64) {
        if let Some(state) = self.partitions.get_mut(key) {
            if state.committed == Some(offset) {
                state.committed = None;
            }
        }
    }

    /// Messages read and not settled, over every assigned partition.
    pub fn unsettled(&self) -> usize {
        self.partitions
            .values()
            .map(|s| s.pending.iter().filter(|(_, settled)| !settled).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("llm.telemetry".to_owned(), partition)
    }

    #[test]
    fn the_commit_point_waits_for_every_earlier_offset() {
        let mut tracker = Tracker::default();
        let generation = tracker.assign(key(0));
        for offset in [5, 6, 7, 9] {
            assert_eq!(tracker.read(&key(0), offset), Some(generation));
        }
        assert!(tracker.to_commit().is_empty());
        assert!(tracker.settle(&key(0), generation, 7));
        assert!(tracker.settle(&key(0), generation, 6));
        assert!(tracker.to_commit().is_empty(), "5 is not settled");
        assert!(tracker.settle(&key(0), generation, 5));
        assert_eq!(tracker.to_commit(), [(key(0), 8)]);
        assert!(tracker.to_commit().is_empty(), "handed out once");
        assert_eq!(tracker.unsettled(), 1);
        // Offset 8 was never read (a gap, e.g. a transaction marker): 9 follows 7.
        assert!(tracker.settle(&key(0), generation, 9));
        assert_eq!(tracker.to_commit(), [(key(0), 10)]);
        assert_eq!(tracker.unsettled(), 0);
    }

    #[test]
    fn offsets_passed_over_going_forward_are_skipped_ones() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.skipped(&key(0), 5), None, "not assigned");
        tracker.assign(key(0));
        assert_eq!(tracker.skipped(&key(0), 5), None, "nothing read yet");
        tracker.read(&key(0), 5);
        assert_eq!(tracker.skipped(&key(0), 6), None);
        tracker.read(&key(0), 6);
        assert_eq!(tracker.skipped(&key(0), 9), Some(7..9));
        tracker.read(&key(0), 9);
        assert_eq!(
            tracker.skipped(&key(0), 2),
            None,
            "going back skips nothing"
        );
    }

    #[test]
    fn partitions_are_independent_and_failed_commits_come_back() {
        let mut tracker = Tracker::default();
        let a = tracker.assign(key(0));
        let b = tracker.assign(key(1));
        tracker.read(&key(0), 0);
        tracker.read(&key(1), 40);
        tracker.read(&key(1), 41);
        tracker.settle(&key(1), b, 41);
        assert!(tracker.to_commit().is_empty());
        tracker.settle(&key(1), b, 40);
        tracker.settle(&key(0), a, 0);
        assert_eq!(tracker.to_commit(), [(key(0), 1), (key(1), 42)]);
        tracker.commit_failed(&key(1), 42);
        tracker.commit_failed(&key(0), 7);
        assert_eq!(tracker.to_commit(), [(key(1), 42)]);
    }

    #[test]
    fn unassigned_partitions_are_not_processed() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.read(&key(0), 3), None);
        let generation = tracker.assign(key(0));
        assert_eq!(tracker.read(&key(0), 3), Some(generation));
        assert!(!tracker.settle(&key(0), generation, 2), "never read");
        assert!(!tracker.settle(&key(1), generation, 3));
    }

    #[test]
    fn going_back_starts_over_without_moving_the_commit_point_back() {
        let mut tracker = Tracker::default();
        let first = tracker.assign(key(0));
        for offset in 10..15 {
            tracker.read(&key(0), offset);
        }
        for offset in 10..13 {
            tracker.settle(&key(0), first, offset);
        }
        assert_eq!(tracker.to_commit(), [(key(0), 13)]);
        // The consumer goes back to 11: 11.. are read again under a new generation.
        let again = tracker.read(&key(0), 11).unwrap();
        assert_ne!(again, first);
        assert!(!tracker.settle(&key(0), first, 13), "an earlier read");
        assert_eq!(tracker.unsettled(), 1);
        tracker.read(&key(0), 12);
        tracker.read(&key(0), 13);
        tracker.settle(&key(0), again, 11);
        tracker.settle(&key(0), again, 12);
        assert!(tracker.to_commit().is_empty(), "12 is behind 13");
        tracker.settle(&key(0), again, 13);
        assert_eq!(tracker.to_commit(), [(key(0), 14)]);
    }

    #[test]
    fn a_revoke_hands_out_the_last_commit_point_and_forgets_the_rest() {
        let mut tracker = Tracker::default();
        let old = tracker.assign(key(0));
        for offset in 10..14 {
            tracker.read(&key(0), offset);
        }
        tracker.settle(&key(0), old, 10);
        tracker.settle(&key(0), old, 12);
        assert_eq!(tracker.revoke(&key(0)), Some(11));
        assert_eq!(tracker.revoke(&key(0)), None);
        assert_eq!(tracker.unsettled(), 0);
        assert!(!tracker.settle(&key(0), old, 11), "not assigned");

        // Assigned again: reading restarts at the committed offset, 11; settlements of
        // the earlier assignment count for nothing.
        let new = tracker.assign(key(0));
        assert_ne!(new, old);
        assert_eq!(tracker.read(&key(0), 11), Some(new));
        assert!(!tracker.settle(&key(0), old, 11));
        assert!(tracker.to_commit().is_empty());
        assert!(tracker.settle(&key(0), new, 11));
        assert_eq!(tracker.revoke(&key(0)), Some(12));

        // Nothing settled since the last commit: nothing to commit on revoke.
        let gen = tracker.assign(key(0));
        tracker.read(&key(0), 12);
        tracker.settle(&key(0), gen, 12);
        assert_eq!(tracker.to_commit(), [(key(0), 13)]);
        assert_eq!(tracker.revoke(&key(0)), None);
    }
}
