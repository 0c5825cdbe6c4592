//! The clock a node stamps into replicated state: when it received a batch (which drives
//! the shard clock, and so the event-id dedup horizon) and the cut-offs of retention
//! purges. It is the monotonic clock, anchored to the wall clock at the first reading and
//! steered toward it by at most `SLEW` of the time elapsed: a wall clock that jumps (an
//! NTP step, an operator's `date -s`, a VM restored from a snapshot) moves it by no more
//! than that, so a jump ahead cannot expire event ids early or purge data that is not old.

use std::sync::Mutex;

use tokio::time::Instant;

/// The most the clock is steered toward the wall clock, per unit of elapsed time (1 %:
/// 36 s an hour, the rate of a fast NTP slew).
const SLEW: f64 = 0.01;

/// A reading: milliseconds since the Unix epoch (with their fraction, so that frequent
/// readings lose no time) and the monotonic instant they were read at.
pub type Reading = (f64, Instant);

/// The next reading after `last`, given the wall clock `wall_ms` read at `now`.
pub fn next(last: Option<Reading>, wall_ms: f64, now: Instant) -> f64 {
    let Some((last_ms, at)) = last else {
        return wall_ms;
    };
    let elapsed = now.saturating_duration_since(at).as_secs_f64() * 1000.0;
    let monotonic = last_ms + elapsed;
    let steer = elapsed * SLEW;
    wall_ms.clamp(monotonic - steer, monotonic + steer)
}

/// The node's stamping clock.
static LAST: Mutex<Option<Reading>> = Mutex::new(None);

/// Milliseconds since the Unix epoch by the node's stamping clock.
pub fn now_ms() -> i64 {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let ms = next(*last, wall, now);
    *last = Some((ms, now));
    ms.floor() as i64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_first_reading_is_the_wall_clock_and_steady_clocks_agree() {
        let start = Instant::now();
        assert_eq!(next(None, 1e6, start), 1e6);
        let later = start + Duration::from_secs(10);
        assert_eq!(next(Some((1e6, start)), 1.01e6, later), 1.01e6);
    }

    #[test]
    fn a_wall_clock_jump_moves_the_clock_by_at_most_the_slew() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        // An hour ahead: 10 s elapsed, so 10.1 s at most.
        assert_eq!(next(Some((0.0, start)), 3.6e6, later), 10_100.0);
        // An hour back: 9.9 s at least; the clock never runs backwards.
        assert_eq!(next(Some((0.0, start)), -3.6e6, later), 9_900.0);
        assert_eq!(next(Some((5.0, start)), 0.0, start), 5.0);
    }

    #[test]
    fn readings_a_fraction_of_a_millisecond_apart_lose_no_time() {
        let start = Instant::now();
        let mut last = (0.0, start);
        for step in 1..=1000 {
            let now = start + Duration::from_micros(100 * step);
            last = (next(Some(last), 1e9, now), now);
        }
        // 100 ms elapsed; steered up by 1 % of it.
        assert!((last.0 - 101.0).abs() < 1e-6, "{}", last.0);
    }
}
