//! Since when a node has been ready without a pause: a node takes back the leaderships
//! placement prefers it for only once it has been steady for `raft.leader_hold_ms`.

use std::time::Duration;

use tokio::time::Instant;

/// A look at the node older than this is stale: the process may have just been resumed
/// and the election loop not have seen the pause yet.
const FRESH_LOOK: Duration = Duration::from_secs(1);

/// Since when the node has been ready without a pause, as of the last look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steadiness {
    since: Option<Instant>,
    looked: Option<Instant>,
}

impl Steadiness {
    /// Records one look at the node at `now`: ready, or not (a pause counts as not ready).
    pub fn observe(&mut self, now: Instant, ready: bool) {
        self.looked = Some(now);
        if !ready {
            self.since = None;
        } else if self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// Whether the node may take a preferred leadership at `now`: looked at just now and
    /// steady for `hold`; otherwise why not.
    pub fn verdict(&self, now: Instant, hold: Duration) -> Result<(), String> {
        let age = |at: Instant| now.saturating_duration_since(at);
        match (self.since, self.looked) {
            (_, None) => Err("this node has not looked at itself yet".to_owned()),
            (_, Some(looked)) if age(looked) > FRESH_LOOK => {
                Err("this node has not looked at itself lately (was it paused?)".to_owned())
            }
            (None, _) => Err("this node is not ready, or was just paused".to_owned()),
            (Some(since), _) if age(since) < hold => Err(format!(
                "this node has been ready for {} ms of the {} ms it waits after a start or pause",
                age(since).as_millis(),
                hold.as_millis()
            )),
            (Some(_), _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_preferred_leaderships_only_after_being_steady_for_the_hold() {
        let hold = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut steady = Steadiness::default();
        assert!(steady.verdict(at(0), hold).is_err(), "not ready yet");
        // (second, ready, may lead)
        let timeline = [
            (1, true, false),
            (5, true, false),
            (11, true, true),
            // A pause (or a moment not ready) starts the hold again.
            (12, false, false),
            (13, true, false),
            (22, true, false),
            (23, true, true),
        ];
        for (second, ready, may_lead) in timeline {
            steady.observe(at(second), ready);
            assert_eq!(
                steady.verdict(at(second), hold).is_ok(),
                may_lead,
                "second {second}: {steady:?}"
            );
        }
        // Asked right after a pause, before the loop looked again: not yet.
        assert!(steady.verdict(at(23) + FRESH_LOOK, hold).is_ok());
        assert!(steady.verdict(at(40), hold).is_err());
    }
}
