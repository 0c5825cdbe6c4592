//! Elections a paused process cannot disturb, and how long a node must have been steady
//! before it takes back the leaderships placement prefers it for.
//!
//! A follower stands for election when it has not heard from its leader for an election
//! timeout. A process that was stopped for a while (SIGSTOP, a frozen VM or container)
//! wakes with every timer expired: left to openraft's own timer, it would stand in every
//! group at once, and its higher terms would make healthy leaders step down. So openraft's
//! timer is off (`enable_elect: false`) and one loop here decides every election: a gap in
//! its own ticks longer than the shortest election timeout means the process was paused,
//! and a group's silence counts only from the end of the last pause, so a resumed node
//! hears from the leaders it missed before it would stand.
//!
//! The same loop keeps the node's [`Steadiness`](crate::steadiness::Steadiness): since
//! when it has been ready without a pause. A node asked to take a preferred leadership
//! (the reconciler's `Campaign`) stands only once it has been steady for
//! `raft.leader_hold_ms`; a stopping leader's hand-over is always taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Instant as _, Raft, RaftMetrics, RaftTypeConfig, ServerState};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::RaftSection;
use crate::host::Host;
use crate::registry::METADATA_GROUP;

/// How often the election loop looks at every group.
const TICK: Duration = Duration::from_millis(100);
/// Longest wait for a group's Raft core to answer the loop.
const LOOK_TIMEOUT: Duration = Duration::from_millis(500);

/// The election timing of a node, from its Raft settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Shortest election timeout.
    pub min: Duration,
    /// Longest election timeout; also the leader lease a voter grants its leader.
    pub max: Duration,
}

impl Timing {
    /// The timing `raft` configures.
    pub fn of(raft: &RaftSection) -> Timing {
        Timing {
            min: Duration::from_millis(raft.election_timeout_min_ms),
            max: Duration::from_millis(raft.election_timeout_max_ms),
        }
    }

    /// Whether a gap between two ticks of the loop means the process was paused: longer
    /// than the shortest election timeout.
    pub fn is_pause(&self, gap: Duration) -> bool {
        gap > self.min
    }

    /// An election timeout drawn from `min..=max` with the random `draw` (any u64).
    pub fn timeout(&self, draw: u64) -> Duration {
        let span = self.max.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(draw % (span + 1))
    }
}

/// What the election loop knows of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    /// openraft's state of this replica.
    pub state: ServerState,
    /// Whether this node is a voter of the group.
    pub voter: bool,
    /// Number of voters.
    pub voters: usize,
    /// Whether the vote this node holds is committed (it follows an elected leader).
    pub committed: bool,
    /// Time since the node last heard from a leader or voted, counted from the end of the
    /// last pause at most.
    pub silent: Duration,
}

/// Whether the group should stand for election now, with this round's drawn `timeout`:
/// a voter that is not leading stands once its silence exceeds the timeout (plus the
/// leader lease while it follows a leader, which voters grant before they vote again);
/// the only voter of a group stands at once.
pub fn should_elect(view: &GroupView, timeout: Duration, timing: Timing) -> bool {
    if !view.voter || matches!(view.state, ServerState::Leader | ServerState::Shutdown) {
        return false;
    }
    if view.voters == 1 {
        return view.state != ServerState::Candidate;
    }
    let needed = if view.committed {
        timing.max + timeout
    } else {
        timeout
    };
    view.silent >= needed
}

/// Each group's drawn election timeout, drawn again after every election it stands in.
struct Timeouts {
    timing: Timing,
    /// xorshift state: the timeouts only need to differ between nodes and rounds.
    state: u64,
    drawn: HashMap<u32, Duration>,
}

impl Timeouts {
    fn new(timing: Timing, seed: u64) -> Timeouts {
        Timeouts {
            timing,
            state: seed | 1,
            drawn: HashMap::new(),
        }
    }

    fn draw(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// The current timeout of `group`.
    fn of(&mut self, group: u32) -> Duration {
        if let Some(&timeout) = self.drawn.get(&group) {
            return timeout;
        }
        let draw = self.draw();
        let timeout = self.timing.timeout(draw);
        self.drawn.insert(group, timeout);
        timeout
    }

    /// Forgets the timeout of `group`, which stood for election.
    fn stood(&mut self, group: u32) {
        self.drawn.remove(&group);
    }
}

/// Runs the election loop of `host` until `stopped` turns true.
pub async fn run(host: Arc<Host>, mut stopped: watch::Receiver<bool>) {
    let timing = Timing::of(&host.config.raft);
    let seed = crate::now_ms() as u64 ^ host.id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut timeouts = Timeouts::new(timing, seed);
    let mut last_tick = Instant::now();
    let mut quiet_since = last_tick;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let now = Instant::now();
        let gap = now.saturating_duration_since(last_tick);
        last_tick = now;
        let paused = timing.is_pause(gap);
        if paused {
            quiet_since = now;
            tracing::warn!(
                node = host.id,
                gap_ms = gap.as_millis() as u64,
                "this process was paused: no election before the leaders are heard again"
            );
        }
        let ready = !paused && crate::http::not_ready(&host).is_none();
        host.observe_steadiness(now, ready);
        if paused {
            continue;
        }
        let since_pause = now.saturating_duration_since(quiet_since);
        let group = METADATA_GROUP;
        if elect(&host.meta, group, since_pause, timeouts.of(group), timing).await {
            timeouts.stood(group);
        }
        for replica in host.replicas() {
            let group = replica.shard;
            if elect(
                &replica.raft,
                group,
                since_pause,
                timeouts.of(group),
                timing,
            )
            .await
            {
                timeouts.stood(group);
            }
        }
    }
}

/// Whether a replica's own latest membership makes it a voter of its group.
fn is_voter(metrics: &RaftMetrics<u64, BasicNode>) -> bool {
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|n| n == metrics.id)
}

/// Looks at one group and starts an election when [`should_elect`] says so; answers
/// whether it did.
async fn elect<C>(
    raft: &Raft<C>,
    group: u32,
    since_pause: Duration,
    timeout: Duration,
    timing: Timing,
) -> bool
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    let metrics: RaftMetrics<u64, BasicNode> = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voter = is_voter(&metrics);
    if !voter || metrics.running_state.is_err() || metrics.state == ServerState::Leader {
        return false;
    }
    let heard = tokio::time::timeout(
        LOOK_TIMEOUT,
        raft.with_raft_state(|state| state.vote_last_modified().map(|at| at.elapsed())),
    )
    .await;
    let Ok(Ok(heard)) = heard else {
        return false;
    };
    let view = GroupView {
        state: metrics.state,
        voter,
        voters: membership.voter_ids().count(),
        committed: metrics.vote.is_committed(),
        silent: heard.map_or(since_pause, |h| h.min(since_pause)),
    };
    if !should_elect(&view, timeout, timing) {
        return false;
    }
    tracing::info!(
        group,
        silent_ms = view.silent.as_millis() as u64,
        "no word from a leader: standing for election"
    );
    if let Err(e) = raft.trigger().elect().await {
        tracing::warn!(group, error = %e, "could not stand for election");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        min: Duration::from_millis(1500),
        max: Duration::from_millis(3000),
    };

    fn view(state: ServerState, voters: usize, committed: bool, silent_ms: u64) -> GroupView {
        GroupView {
            state,
            voter: true,
            voters,
            committed,
            silent: Duration::from_millis(silent_ms),
        }
    }

    #[test]
    fn a_follower_stands_only_after_the_lease_and_its_timeout() {
        use ServerState::*;
        let timeout = Duration::from_millis(2000);
        let cases = [
            // (view, stands)
            (view(Follower, 3, true, 4_999), false),
            (view(Follower, 3, true, 5_000), true),
            (view(Follower, 3, false, 2_000), true),
            (view(Candidate, 3, false, 1_999), false),
            (view(Candidate, 3, false, 2_000), true),
            (view(Leader, 3, true, 60_000), false),
            (view(Shutdown, 3, true, 60_000), false),
            (view(Follower, 1, true, 0), true),
            (view(Candidate, 1, false, 0), false),
            (
                GroupView {
                    voter: false,
                    ..view(Learner, 3, true, 60_000)
                },
                false,
            ),
        ];
        for (view, stands) in cases {
            assert_eq!(should_elect(&view, timeout, TIMING), stands, "{view:?}");
        }
    }

    #[test]
    fn only_gaps_longer_than_the_shortest_timeout_are_pauses() {
        assert!(!TIMING.is_pause(Duration::from_millis(100)));
        assert!(!TIMING.is_pause(Duration::from_millis(1500)));
        assert!(TIMING.is_pause(Duration::from_millis(1501)));
        assert!(TIMING.is_pause(Duration::from_secs(15)));
    }

    #[test]
    fn timeouts_are_drawn_within_the_configured_range_and_again_after_standing() {
        let mut timeouts = Timeouts::new(TIMING, 7);
        for group in 0..1000 {
            let t = timeouts.of(group);
            assert!(t >= TIMING.min && t <= TIMING.max, "{t:?}");
            assert_eq!(timeouts.of(group), t, "kept until the group stands");
        }
        let before: Vec<Duration> = (0..100).map(|g| timeouts.of(g)).collect();
        (0..100).for_each(|g| timeouts.stood(g));
        let after: Vec<Duration> = (0..100).map(|g| timeouts.of(g)).collect();
        assert_ne!(before, after);
        assert_eq!(TIMING.timeout(0), TIMING.min);
        assert_eq!(TIMING.timeout(1500), TIMING.max);
    }
}
