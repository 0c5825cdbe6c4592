//! The false-alarm stream: 16 service × model keys of log-normal traffic in which 0.5 %
//! of calls have 10× latency, and the recall / precision of detector sets on it.

use sentinel_core::config::{CusumConfig, DetectionConfig, Direction, Scale, ThresholdDetector};
use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::{Event, ShardDetector};

use sentinel_local::rng::Rng;

/// Services of the stream (× [`MODELS`] = 16 keys).
pub const SERVICES: [&str; 4] = [
    "chat-api",
    "code-assistant",
    "doc-summarizer",
    "support-bot",
];
/// Models of the stream.
pub const MODELS: [&str; 4] = [
    "gpt-4o",
    "gpt-4o-mini",
    "claude-3-5-sonnet",
    "llama-2-70b-chat",
];

/// How large a latency spike is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpikeSize {
    /// Ten times the key's median latency (8 s): the spike is 4.6 σ out in log space.
    TenTimesMedian,
    /// Ten times a fresh draw of the key's latency: a spike of a fast call can land inside
    /// the normal range, so no detector can catch all of these.
    TenTimesDraw,
}

/// Shape of the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Events generated.
    pub events: usize,
    /// Share of calls with a latency spike.
    pub spike_rate: f64,
    /// How large a spike is.
    pub spike_size: SpikeSize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            seed: 42,
            events: 400_000,
            spike_rate: 0.005,
            spike_size: SpikeSize::TenTimesMedian,
        }
    }
}

/// Median latency (ms), σ of log latency, median prompt and completion tokens and their log σ.
const LATENCY_MEDIAN_MS: f64 = 800.0;
const LATENCY_SIGMA: f64 = 0.5;
const PROMPT_MEDIAN: f64 = 500.0;
const PROMPT_SIGMA: f64 = 0.6;
const COMPLETION_MEDIAN: f64 = 200.0;
const COMPLETION_SIGMA: f64 = 0.5;

/// A generated call and whether it carries an injected spike.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The call.
    pub event: Event,
    /// Whether its latency was multiplied.
    pub spike: bool,
}

/// Iterator over the stream's calls, 100 calls/s in total, keys taking turns at random.
#[derive(Debug, Clone)]
pub struct SpikeStream {
    cfg: StreamConfig,
    rng: Rng,
    emitted: usize,
}

impl SpikeStream {
    /// A stream with this shape.
    pub fn new(cfg: StreamConfig) -> Self {
        SpikeStream {
            rng: Rng::seed_from_u64(cfg.seed),
            cfg,
            emitted: 0,
        }
    }
}

impl Iterator for SpikeStream {
    type Item = StreamEvent;

    fn next(&mut self) -> Option<StreamEvent> {
        if self.emitted == self.cfg.events {
            return None;
        }
        self.emitted += 1;
        let r = &mut self.rng;
        let key = r.below(16) as usize;
        let spike = r.bernoulli(self.cfg.spike_rate);
        let draw = r.log_normal(LATENCY_MEDIAN_MS.ln(), LATENCY_SIGMA);
        let latency = match (spike, self.cfg.spike_size) {
            (false, _) => draw,
            (true, SpikeSize::TenTimesMedian) => 10.0 * LATENCY_MEDIAN_MS,
            (true, SpikeSize::TenTimesDraw) => 10.0 * draw,
        };
        let prompt = r
            .log_normal(PROMPT_MEDIAN.ln(), PROMPT_SIGMA)
            .round()
            .max(1.0) as u64;
        let completion = r
            .log_normal(COMPLETION_MEDIAN.ln(), COMPLETION_SIGMA)
            .round()
            .max(1.0) as u64;
        let event = Event {
            event_id: Some(format!("stream-{}", self.emitted)),
            timestamp_ms: 1_767_600_000_000 + 10 * self.emitted as i64,
            service: SERVICES[key / 4].to_owned(),
            model: MODELS[key % 4].to_owned(),
            latency_ms: latency,
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            ..Event::default()
        };
        Some(StreamEvent { event, spike })
    }
}

/// How a detector set did on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    /// Spiked calls.
    pub spikes: u64,
    /// Spiked calls the set flagged.
    pub caught: u64,
    /// Clean calls.
    pub clean: u64,
    /// Clean calls the set flagged.
    pub false_alarms: u64,
    /// Incidents opened (isolated spikes of 0.5 % of calls should open none).
    pub incidents: u64,
}

impl Confusion {
    /// Share of spikes flagged.
    pub fn recall(&self) -> f64 {
        self.caught as f64 / self.spikes.max(1) as f64
    }

    /// Share of flagged calls that were spikes.
    pub fn precision(&self) -> f64 {
        self.caught as f64 / (self.caught + self.false_alarms).max(1) as f64
    }

    /// Share of clean calls flagged.
    pub fn false_alarm_rate(&self) -> f64 {
        self.false_alarms as f64 / self.clean.max(1) as f64
    }
}

/// Runs the stream through one shard with `config`; a call counts as flagged when any
/// detector fires on it (before dedup).
pub fn evaluate(stream: StreamConfig, config: DetectionConfig) -> Confusion {
    let prices = PriceTable::default();
    let mut detector =
        ShardDetector::new(0, config).expect("detector sets of this module are valid");
    let mut c = Confusion::default();
    for StreamEvent { event, spike } in SpikeStream::new(stream) {
        let values = extract_metrics(&event, &prices).values;
        let observation = detector.observe(&event, &values);
        let flagged = observation.flagged;
        c.incidents += observation
            .incidents
            .iter()
            .filter(|c| c.kind == sentinel_core::NotificationKind::Opened)
            .count() as u64;
        if spike {
            c.spikes += 1;
            c.caught += u64::from(flagged);
        } else {
            c.clean += 1;
            c.false_alarms += u64::from(flagged);
        }
    }
    c
}

/// The detector sets compared on the stream: each detector alone, the shipped default,
/// and the raw-scale any-of-four set that simple implementations run.
pub fn detector_sets() -> Vec<(&'static str, DetectionConfig)> {
    let off = ThresholdDetector {
        enabled: false,
        ..ThresholdDetector::on(1.0)
    };
    let only = |pick: &str| {
        let d = DetectionConfig::default();
        DetectionConfig {
            z_score: if pick == "z_score" { d.z_score } else { off },
            iqr: if pick == "iqr" { d.iqr } else { off },
            mad: if pick == "mad" { d.mad } else { off },
            cusum: CusumConfig {
                enabled: pick == "cusum",
                ..d.cusum
            },
            min_votes: 1,
            ..d
        }
    };
    let mut naive = DetectionConfig {
        min_votes: 1,
        ..DetectionConfig::default()
    };
    for metric in sentinel_core::Metric::ALL {
        let mut mc = naive.metric(metric);
        mc.scale = Scale::Linear;
        mc.direction = Direction::Both;
        mc.detectors = vec![
            sentinel_core::config::DetectorKind::ZScore,
            sentinel_core::config::DetectorKind::Iqr,
            sentinel_core::config::DetectorKind::Mad,
            sentinel_core::config::DetectorKind::Cusum,
        ];
        mc.floor.absolute = 1e-9;
        naive.metrics.insert(metric, mc);
    }
    vec![
        ("z_score", only("z_score")),
        ("iqr", only("iqr")),
        ("mad", only("mad")),
        ("cusum", only("cusum")),
        ("default", DetectionConfig::default()),
        ("any-of-four, raw scale", naive),
    ]
}
