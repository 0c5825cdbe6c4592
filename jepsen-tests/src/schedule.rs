//! Fault schedules: which faults a run injects and when, planned from a seed alone.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sentinel_local::rng::Rng;
use serde::Serialize;

/// A node a fault is aimed at, resolved when the fault happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The node with this ordinal.
    Node(usize),
    /// The node leading the most shards at that moment.
    MostLeader,
}

/// How the nodes are cut apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cut {
    /// Two random halves (the larger one a majority).
    Halves,
    /// One node alone against the rest.
    Isolate(Target),
    /// Two halves that each still see one middle node.
    Bridge,
    /// Each router cut from a random half of the nodes (the nodes still see each other).
    Routers,
    /// A random half of the nodes cut from the alert receivers (RabbitMQ, the webhook).
    Sinks,
}

/// One fault or its repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    Partition {
        cut: Cut,
    },
    Heal,
    Kill {
        target: Target,
    },
    Restart,
    Pause {
        target: Target,
    },
    Resume,
    /// Moves one node's wall clock by `seconds` (the monotonic clock is left alone).
    ClockJump {
        target: Target,
        seconds: i64,
    },
    ClockReset,
    /// Fills the data volume of one node.
    DiskFull {
        target: Target,
    },
    DiskFree,
    /// Kills a node and deletes its data: it rejoins as a new member.
    Wipe {
        target: Target,
    },
    /// Starts the spare node.
    ScaleOut,
    /// Drains and removes the spare node again.
    Decommission,
    KillRouter {
        router: usize,
    },
    RestartRouter,
}

/// A fault at a time after the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    pub at: Duration,
    pub fault: Fault,
}

/// The named schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Nothing: the workload alone.
    None,
    /// One partition, one kill, one pause, one clock jump.
    Smoke,
    /// Every kind of partition in turn: halves, an isolated leader, a bridge, flapping,
    /// routers cut from nodes, nodes cut from the alert receivers.
    Partition,
    PartitionHalves,
    PartitionLeader,
    PartitionBridge,
    PartitionFlap,
    PartitionRouters,
    PartitionSinks,
    Kill,
    KillLeader,
    Pause,
    Clock,
    Disk,
    Membership,
    RouterKill,
    /// Partitions with kills and pauses.
    CombinedCrash,
    /// Partitions with clock jumps and pauses.
    CombinedClock,
    /// Membership changes during partitions and kills.
    CombinedMembership,
}

const NAMES: &[(&str, Schedule)] = &[
    ("none", Schedule::None),
    ("smoke", Schedule::Smoke),
    ("partition", Schedule::Partition),
    ("partition-halves", Schedule::PartitionHalves),
    ("partition-leader", Schedule::PartitionLeader),
    ("partition-bridge", Schedule::PartitionBridge),
    ("partition-flap", Schedule::PartitionFlap),
    ("partition-routers", Schedule::PartitionRouters),
    ("partition-sinks", Schedule::PartitionSinks),
    ("kill", Schedule::Kill),
    ("kill-leader", Schedule::KillLeader),
    ("pause", Schedule::Pause),
    ("clock", Schedule::Clock),
    ("disk", Schedule::Disk),
    ("membership", Schedule::Membership),
    ("router-kill", Schedule::RouterKill),
    ("combined-crash", Schedule::CombinedCrash),
    ("combined-clock", Schedule::CombinedClock),
    ("combined-membership", Schedule::CombinedMembership),
];

impl FromStr for Schedule {
    type Err = String;

    fn from_str(name: &str) -> Result<Schedule, String> {
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown schedule {name:?}; known: {}", known.join(", "))
            })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES.iter().find(|(_, s)| s == self).map(|(n, _)| *n);
        f.write_str(name.unwrap_or("?"))
    }
}

/// Faults are this long (a pause longer than any election timeout), with this much calm
/// between them.
const FAULT: Duration = Duration::from_secs(10);
const CALM: Duration = Duration::from_secs(10);
/// A full disk lasts this long: long enough for a flush, a snapshot or a new log file.
const DISK_FAULT: Duration = Duration::from_secs(30);
/// A flapping partition changes this often.
const FLAP: Duration = Duration::from_secs(3);
/// A killed router stays down this long: past its consumer group's session timeout (the
/// router's default, 10 s), as a crash-looping pod's back-off would. tansu 0.6 never
/// hands over the partitions of a member that expires after a router rejoined (see
/// docs/reliability.md), so a quicker restart tests the broker, not the router.
const ROUTER_DOWN: Duration = Duration::from_secs(25);
/// Wall-clock jumps, in seconds: small, an election timeout's worth many times over, an
/// hour, and past the telemetry retention (24 h by default).
const JUMPS: [i64; 5] = [2, 30, 300, 3600, 25 * 3600];

/// The steps of `schedule` over a run of `length` on `nodes` nodes, drawn from `seed`;
/// every fault is repaired before the run ends.
pub fn plan(schedule: Schedule, seed: u64, length: Duration, nodes: usize) -> Vec<Step> {
    let mut rng = Rng::from_stream(seed, 0x6e656d65);
    let lasts = match schedule {
        Schedule::Disk => DISK_FAULT,
        Schedule::RouterKill => ROUTER_DOWN,
        _ => FAULT,
    };
    let mut steps = Vec::new();
    let mut at = CALM;
    let mut round = 0usize;
    while at + lasts + CALM / 2 <= length {
        let faults = round_faults(schedule, round, nodes, &mut rng);
        if faults.is_empty() {
            break;
        }
        for (fault, repair, offset) in faults {
            steps.push(Step {
                at: at + offset,
                fault,
            });
            if let Some(repair) = repair {
                steps.push(Step {
                    at: at + lasts,
                    fault: repair,
                });
            }
        }
        at += lasts + CALM;
        round += 1;
    }
    steps.sort_by_key(|s| s.at);
    steps
}

/// A fault, its repair and when it starts within its round.
type Planned = (Fault, Option<Fault>, Duration);

/// The faults of round `round` of `schedule`.
fn round_faults(schedule: Schedule, round: usize, nodes: usize, rng: &mut Rng) -> Vec<Planned> {
    let node = |rng: &mut Rng| Target::Node(rng.below(nodes as u64) as usize);
    let jump = |rng: &mut Rng| {
        let magnitude = JUMPS[rng.below(JUMPS.len() as u64) as usize];
        if rng.bernoulli(0.5) {
            magnitude
        } else {
            -magnitude
        }
    };
    let partition = |cut| (Fault::Partition { cut }, Some(Fault::Heal), Duration::ZERO);
    let pause = |target| (Fault::Pause { target }, Some(Fault::Resume), Duration::ZERO);
    let kill = |target| (Fault::Kill { target }, Some(Fault::Restart), Duration::ZERO);
    let clock = |target, seconds| {
        let fault = Fault::ClockJump { target, seconds };
        (fault, Some(Fault::ClockReset), Duration::ZERO)
    };
    match schedule {
        Schedule::None => Vec::new(),
        Schedule::Smoke => match round {
            0 => vec![partition(Cut::Halves)],
            1 => vec![kill(Target::MostLeader)],
            2 => vec![pause(node(rng))],
            3 => vec![clock(node(rng), 3600)],
            _ => Vec::new(),
        },
        Schedule::Partition => match round % 6 {
            0 => vec![partition(Cut::Halves)],
            1 => vec![partition(Cut::Isolate(Target::MostLeader))],
            2 => vec![partition(Cut::Bridge)],
            3 => flap(nodes, rng),
            4 => vec![partition(Cut::Routers)],
            _ => vec![partition(Cut::Sinks)],
        },
        Schedule::PartitionHalves => vec![partition(Cut::Halves)],
        Schedule::PartitionLeader => vec![partition(Cut::Isolate(Target::MostLeader))],
        Schedule::PartitionBridge => vec![partition(Cut::Bridge)],
        Schedule::PartitionFlap => flap(nodes, rng),
        Schedule::PartitionRouters => vec![partition(Cut::Routers)],
        Schedule::PartitionSinks => vec![partition(Cut::Sinks)],
        Schedule::Kill => vec![kill(node(rng))],
        Schedule::KillLeader => vec![kill(Target::MostLeader)],
        Schedule::Pause => vec![pause(if rng.bernoulli(0.5) {
            Target::MostLeader
        } else {
            node(rng)
        })],
        Schedule::Clock => vec![clock(node(rng), jump(rng))],
        Schedule::Disk => {
            vec![(
                Fault::DiskFull { target: node(rng) },
                Some(Fault::DiskFree),
                Duration::ZERO,
            )]
        }
        Schedule::Membership => vec![membership(round, node(rng))],
        Schedule::RouterKill => {
            let router = rng.below(2) as usize;
            vec![(
                Fault::KillRouter { router },
                Some(Fault::RestartRouter),
                Duration::ZERO,
            )]
        }
        Schedule::CombinedCrash => match rng.below(3) {
            0 => vec![partition(Cut::Halves), kill(node(rng))],
            1 => vec![
                partition(Cut::Isolate(Target::MostLeader)),
                pause(node(rng)),
            ],
            _ => vec![kill(Target::MostLeader), pause(node(rng))],
        },
        Schedule::CombinedClock => vec![
            clock(node(rng), jump(rng)),
            if rng.bernoulli(0.5) {
                partition(Cut::Halves)
            } else {
                pause(Target::MostLeader)
            },
        ],
        Schedule::CombinedMembership => vec![
            membership(round, node(rng)),
            if rng.bernoulli(0.5) {
                partition(Cut::Isolate(node(rng)))
            } else {
                kill(node(rng))
            },
        ],
    }
}

/// A partition that changes every `FLAP` (random halves or one random node alone) and
/// heals at the end of the round.
fn flap(nodes: usize, rng: &mut Rng) -> Vec<Planned> {
    let flips = (FAULT.as_secs() / FLAP.as_secs()) as u32;
    (0..flips)
        .map(|i| {
            let cut = if rng.bernoulli(0.5) {
                Cut::Halves
            } else {
                Cut::Isolate(Target::Node(rng.below(nodes as u64) as usize))
            };
            let repair = (i + 1 == flips).then_some(Fault::Heal);
            (Fault::Partition { cut }, repair, FLAP * i)
        })
        .collect()
}

/// Round `round` of membership changes: scale out, decommission, wipe a node.
fn membership(round: usize, target: Target) -> Planned {
    match round % 3 {
        0 => (Fault::ScaleOut, None, Duration::ZERO),
        1 => (Fault::Decommission, None, Duration::ZERO),
        _ => (Fault::Wipe { target }, Some(Fault::Restart), Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn a_seed_gives_one_plan_and_every_fault_is_repaired_before_the_end() {
        let length = Duration::from_secs(600);
        for (_, schedule) in NAMES {
            let steps = plan(*schedule, 7, length, 5);
            assert_eq!(steps, plan(*schedule, 7, length, 5));
            assert!(steps.iter().all(|s| s.at < length));
            let open = |is: fn(&Fault) -> bool, closes: fn(&Fault) -> bool| {
                steps.iter().fold(0i32, |n, s| {
                    n + is(&s.fault) as i32 - closes(&s.fault) as i32
                })
            };
            let partition = open(
                |f| matches!(f, Fault::Partition { .. }),
                |f| *f == Fault::Heal,
            );
            let flaps = [Schedule::PartitionFlap, Schedule::Partition].contains(schedule);
            assert!(partition == 0 || flaps, "{schedule}");
            assert_eq!(
                open(
                    |f| matches!(f, Fault::Pause { .. }),
                    |f| *f == Fault::Resume
                ),
                0
            );
            assert_eq!(
                open(
                    |f| matches!(f, Fault::ClockJump { .. }),
                    |f| *f == Fault::ClockReset
                ),
                0
            );
            assert_eq!(
                open(
                    |f| matches!(f, Fault::DiskFull { .. }),
                    |f| *f == Fault::DiskFree
                ),
                0
            );
        }
    }

    #[test]
    fn the_smoke_schedule_has_one_partition_kill_pause_and_clock_jump_within_two_minutes() {
        let steps = plan(Schedule::Smoke, 1, Duration::from_secs(100), 5);
        let faults: Vec<&str> = steps
            .iter()
            .map(|s| match s.fault {
                Fault::Partition { .. } => "partition",
                Fault::Kill { .. } => "kill",
                Fault::Pause { .. } => "pause",
                Fault::ClockJump { .. } => "clock",
                _ => "repair",
            })
            .filter(|f| *f != "repair")
            .collect();
        assert_eq!(faults, ["partition", "kill", "pause", "clock"]);
    }

    #[test]
    fn the_partition_schedule_cuts_every_way_in_six_rounds() {
        let steps = plan(Schedule::Partition, 5, Duration::from_secs(125), 5);
        let cuts: BTreeSet<String> = steps
            .iter()
            .filter_map(|s| match s.fault {
                Fault::Partition { cut } => Some(format!("{cut:?}")),
                _ => None,
            })
            .map(|cut| cut.split('(').next().unwrap_or_default().to_owned())
            .collect();
        let every = ["Bridge", "Halves", "Isolate", "Routers", "Sinks"];
        assert_eq!(cuts, every.map(String::from).into());
    }

    #[test]
    fn a_killed_router_stays_down_past_its_consumer_group_session() {
        let steps = plan(Schedule::RouterKill, 2, Duration::from_secs(120), 5);
        let kill = steps
            .iter()
            .find(|s| matches!(s.fault, Fault::KillRouter { .. }));
        let restart = steps.iter().find(|s| s.fault == Fault::RestartRouter);
        let (Some(kill), Some(restart)) = (kill, restart) else {
            panic!("no router kill and restart in {steps:?}");
        };
        assert!(restart.at - kill.at > Duration::from_secs(10));
    }

    #[test]
    fn a_flapping_partition_heals_once_at_the_end_of_its_round() {
        let steps = plan(Schedule::PartitionFlap, 3, Duration::from_secs(60), 5);
        let heals = steps.iter().filter(|s| s.fault == Fault::Heal).count();
        let partitions = steps
            .iter()
            .filter(|s| matches!(s.fault, Fault::Partition { .. }))
            .count();
        assert_eq!(partitions, heals * 3);
        assert_eq!(steps.last().map(|s| s.fault), Some(Fault::Heal));
    }
}
