//! Leadership hand-over. openraft 0.9 has no leader transfer, and a voter refuses every
//! vote while its leader lease runs (`raft.election_timeout_max_ms` since it last heard
//! from its leader), so a successor that simply stands is refused, its higher term makes
//! the leader step down, and whichever times out first wins the next round: often the old
//! leader again. Instead the leader goes quiet — no heartbeats, no writes, no reads that
//! confirm its leadership — and the successor stands once every lease has run out, when
//! every voter grants its vote. The leader speaks again when the leadership has moved or
//! after a bound, whichever comes first.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RaftSection;

/// Slack for a heartbeat already on the wire when the leader went quiet.
const MARGIN: Duration = Duration::from_millis(250);

/// When the successor stands and when the leader gives up, after the leader went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOverTiming {
    /// Every voter's lease has run out: the longest election timeout after the last
    /// heartbeat, plus slack.
    pub stand_after: Duration,
    /// The successor had two more election timeouts to win.
    pub give_up_after: Duration,
}

impl HandOverTiming {
    /// The timing the Raft settings give.
    pub fn of(raft: &RaftSection) -> HandOverTiming {
        let lease = Duration::from_millis(raft.election_timeout_max_ms);
        let stand_after = lease + Duration::from_millis(raft.heartbeat_ms) + MARGIN;
        HandOverTiming {
            stand_after,
            give_up_after: stand_after + 2 * lease,
        }
    }
}

/// The hand-over in progress on one replica, if any: until when its leader keeps quiet.
#[derive(Debug, Default)]
pub struct HandOver {
    until: Mutex<Option<Instant>>,
}

impl HandOver {
    fn until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the leader is keeping quiet for a hand-over.
    pub fn in_progress(&self) -> bool {
        self.until().is_some()
    }

    /// Starts keeping quiet until `until`; false when a hand-over is already in progress.
    pub fn begin(&self, until: Instant) -> bool {
        let mut current = self.until();
        if current.is_some() {
            return false;
        }
        *current = Some(until);
        true
    }

    /// Ends the hand-over when this node no longer leads or its time is up; whether one ended.
    pub fn end_if_done(&self, leading: bool, now: Instant) -> bool {
        let mut current = self.until();
        let done = current.is_some_and(|until| !leading || now >= until);
        if done {
            *current = None;
        }
        done
    }

    /// Ends the hand-over, whatever its state; whether one was in progress.
    pub fn end(&self) -> bool {
        self.until().take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_stands_after_every_lease_and_the_leader_waits_two_timeouts_more() {
        let raft = RaftSection {
            heartbeat_ms: 500,
            election_timeout_max_ms: 3000,
            ..RaftSection::default()
        };
        let timing = HandOverTiming::of(&raft);
        assert_eq!(timing.stand_after, Duration::from_millis(3750));
        assert_eq!(timing.give_up_after, Duration::from_millis(9750));
    }

    #[test]
    fn a_hand_over_ends_once_leadership_moved_or_its_time_is_up_and_never_overlaps() {
        let now = Instant::now();
        let hand_over = HandOver::default();
        assert!(hand_over.begin(now + Duration::from_secs(10)));
        assert!(!hand_over.begin(now + Duration::from_secs(20)));
        assert!(!hand_over.end_if_done(true, now + Duration::from_secs(5)));
        assert!(hand_over.in_progress());
        assert!(hand_over.end_if_done(false, now + Duration::from_secs(5)));
        assert!(!hand_over.in_progress());
        assert!(hand_over.begin(now));
        assert!(hand_over.end_if_done(true, now + Duration::from_secs(1)));
        assert!(!hand_over.end());
    }
}
