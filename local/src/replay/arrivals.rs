//! Arrival times of requests: one bursty, diurnally modulated process per service,
//! merged in time order.

use crate::rng::Rng;

use super::params::DIURNAL;
use super::profile::{ArrivalFit, DIURNAL_BINS};

/// Seconds per diurnal bin.
const BIN_S: f64 = 86_400.0 / DIURNAL_BINS as f64;

/// The diurnal rate multiplier at `second_of_day`, interpolated between bin centres.
pub(super) fn diurnal_at(second_of_day: f64) -> f64 {
    let x = second_of_day.rem_euclid(86_400.0) / BIN_S - 0.5;
    let lower = x.floor();
    let frac = x - lower;
    let i = (lower as i64).rem_euclid(DIURNAL_BINS as i64) as usize;
    let j = (i + 1) % DIURNAL_BINS;
    DIURNAL[i] + (DIURNAL[j] - DIURNAL[i]) * frac
}

/// Arrivals of one service: a Markov on/off chain of windows, a log-normal AR(1) rate
/// multiplier in active windows, and Gamma-renewal gaps inside windows.
#[derive(Debug, Clone)]
struct ServiceArrivals {
    rng: Rng,
    fit: &'static ArrivalFit,
    mean_rate: f64,
    start_second_of_day: f64,
    key_weights: Vec<f64>,
    /// Current time, seconds since the start.
    now: f64,
    window_end: f64,
    window_rate: f64,
    on: bool,
    log_state: f64,
    on_boost: f64,
}

impl ServiceArrivals {
    fn new(
        rng: Rng,
        fit: &'static ArrivalFit,
        mean_rate: f64,
        start_second_of_day: f64,
        key_weights: Vec<f64>,
    ) -> Self {
        let mut s = ServiceArrivals {
            rng,
            fit,
            mean_rate,
            start_second_of_day,
            key_weights,
            now: 0.0,
            window_end: 0.0,
            window_rate: 0.0,
            on: true,
            log_state: 0.0,
            on_boost: 1.0 / fit.on_fraction(),
        };
        s.log_state = s.fit.on_log_sigma * s.rng.standard_normal();
        s.set_window_rate();
        s.window_end = s.fit.window_s;
        s
    }

    fn set_window_rate(&mut self) {
        self.window_rate = if self.on {
            let sigma = self.fit.on_log_sigma;
            let multiplier = (self.log_state - 0.5 * sigma * sigma).exp() * self.on_boost;
            let middle = self.now + 0.5 * self.fit.window_s;
            self.mean_rate * multiplier * diurnal_at(self.start_second_of_day + middle)
        } else {
            0.0
        };
    }

    fn next_window(&mut self) {
        self.now = self.window_end;
        self.window_end += self.fit.window_s;
        self.on = if self.on {
            !self.rng.bernoulli(self.fit.p_on_to_off)
        } else {
            self.rng.bernoulli(self.fit.p_off_to_on)
        };
        let (rho, sigma) = (self.fit.on_log_rho, self.fit.on_log_sigma);
        self.log_state =
            rho * self.log_state + (1.0 - rho * rho).sqrt() * sigma * self.rng.standard_normal();
        self.set_window_rate();
    }

    /// The next arrival before `horizon_s` as (seconds since start, key index), if any.
    fn next_arrival(&mut self, horizon_s: f64) -> Option<(f64, usize)> {
        let shape = self.fit.gap_shape;
        // Gap in expected-arrival units (mean 1), spent across windows of different rates.
        let mut work = self.rng.gamma(shape, 1.0 / shape);
        loop {
            let available = self.window_rate * (self.window_end - self.now);
            if work < available {
                self.now += work / self.window_rate;
                break;
            }
            work -= available;
            if self.window_end >= horizon_s {
                self.now = horizon_s;
                return None;
            }
            self.next_window();
        }
        if self.now >= horizon_s {
            return None;
        }
        let key = self.rng.choose_weighted(&self.key_weights).unwrap_or(0);
        Some((self.now, key))
    }
}

/// The merged arrival stream of all services.
#[derive(Debug, Clone)]
pub(super) struct Arrivals {
    services: Vec<ServiceArrivals>,
    pending: Vec<Option<(f64, usize)>>,
    horizon_s: f64,
}

/// What [`Arrivals`] needs to know about one service.
pub(super) struct ServiceArrivalSpec {
    /// Burstiness fit of the service's workload.
    pub fit: &'static ArrivalFit,
    /// Mean rate over a day, events per second.
    pub mean_rate: f64,
    /// Relative traffic of each of the service's keys.
    pub key_weights: Vec<f64>,
}

impl Arrivals {
    /// Arrival processes for `specs`, running from second 0 to `horizon_s`.
    pub fn new(
        seed: u64,
        stream_base: u64,
        start_second_of_day: f64,
        horizon_s: f64,
        specs: Vec<ServiceArrivalSpec>,
    ) -> Self {
        let mut services: Vec<ServiceArrivals> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                ServiceArrivals::new(
                    Rng::from_stream(seed, stream_base + i as u64),
                    spec.fit,
                    spec.mean_rate,
                    start_second_of_day,
                    spec.key_weights,
                )
            })
            .collect();
        let pending = services
            .iter_mut()
            .map(|s| s.next_arrival(horizon_s))
            .collect();
        Arrivals {
            services,
            pending,
            horizon_s,
        }
    }
}

impl Iterator for Arrivals {
    /// (seconds since start, service index, key index within the service).
    type Item = (f64, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, f64)> = None;
        for (i, p) in self.pending.iter().enumerate() {
            if let Some((t, _)) = p {
                if best.is_none_or(|(_, bt)| *t < bt) {
                    best = Some((i, *t));
                }
            }
        }
        let (service, _) = best?;
        let (t, key) = self.pending[service]?;
        self.pending[service] = self.services[service].next_arrival(self.horizon_s);
        Some((t, service, key))
    }
}
