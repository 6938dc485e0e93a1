//! The model's clock, and timelines of states that resources and operations move through.
//!
//! The clock follows real time plus an offset that the control endpoint can move forward, so a
//! test can finish a slow operation at once without waiting for it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Time as the model sees it: real time since the server started, plus an offset. Cheap to
/// clone; clones share the offset.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    origin: Instant,
    wall_origin: SystemTime,
    offset: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock starting now, without offset.
    pub fn new() -> Self {
        Clock {
            inner: Arc::new(Mutex::new(State {
                origin: Instant::now(),
                wall_origin: SystemTime::now(),
                offset: Duration::ZERO,
            })),
        }
    }

    /// Model time since the clock started.
    pub fn now(&self) -> Duration {
        let s = self.inner.lock().expect("clock poisoned");
        s.origin.elapsed() + s.offset
    }

    /// Moves model time forward.
    pub fn advance(&self, by: Duration) {
        self.inner.lock().expect("clock poisoned").offset += by;
    }

    /// How far model time is ahead of real time.
    pub fn offset(&self) -> Duration {
        self.inner.lock().expect("clock poisoned").offset
    }

    /// Forgets the offset.
    pub fn reset(&self) {
        self.inner.lock().expect("clock poisoned").offset = Duration::ZERO;
    }

    /// The wall-clock time of a model instant, as RFC 3339 with milliseconds (the format
    /// Google and Azure APIs use for timestamps).
    pub fn rfc3339(&self, at: Duration) -> String {
        let wall = self.inner.lock().expect("clock poisoned").wall_origin + at;
        rfc3339(wall)
    }
}

/// Formats a system time as RFC 3339 in UTC with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z", since.subsec_millis())
}

/// A sequence of states, each held for a duration, ending in a last state held forever: how
/// an operation goes `PENDING -> RUNNING -> DONE`, or an instance
/// `PROVISIONING -> STAGING -> RUNNING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline<S> {
    start: Duration,
    stages: Vec<(S, Duration)>,
    last: S,
}

impl<S: Clone> Timeline<S> {
    /// Starts at model time `start`, holds each stage for its duration, then stays in `last`.
    pub fn new(start: Duration, stages: impl IntoIterator<Item = (S, Duration)>, last: S) -> Self {
        Timeline { start, stages: stages.into_iter().collect(), last }
    }

    /// A timeline that is already in its last state.
    pub fn settled(start: Duration, last: S) -> Self {
        Timeline { start, stages: Vec::new(), last }
    }

    /// When the timeline started.
    pub fn start(&self) -> Duration {
        self.start
    }

    /// When it reaches its last state.
    pub fn end(&self) -> Duration {
        self.start + self.stages.iter().map(|(_, d)| *d).sum::<Duration>()
    }

    /// Whether it has reached its last state at `now`.
    pub fn is_done(&self, now: Duration) -> bool {
        now >= self.end()
    }

    /// The state at model time `now`.
    pub fn at(&self, now: Duration) -> S {
        let mut t = self.start;
        for (stage, held) in &self.stages {
            t += *held;
            if now < t {
                return stage.clone();
            }
        }
        self.last.clone()
    }

    /// When the timeline entered the state it is in at `now`.
    pub fn since(&self, now: Duration) -> Duration {
        let mut t = self.start;
        for (_, held) in &self.stages {
            if now < t + *held {
                return t;
            }
            t += *held;
        }
        t
    }

    /// How far along it is at `now`, 0 to 100.
    pub fn percent(&self, now: Duration) -> u8 {
        let total = self.end().saturating_sub(self.start);
        if total.is_zero() || now >= self.end() {
            return 100;
        }
        let done = now.saturating_sub(self.start);
        (done.as_millis() * 100 / total.as_millis().max(1)).min(99) as u8
    }

    /// Holds the current stage `by` longer (a slow operation).
    pub fn stretch(&mut self, by: Duration) {
        if let Some((_, held)) = self.stages.last_mut() {
            *held += by;
        } else {
            self.stages.push((self.last.clone(), by));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_moves_through_its_stages() {
        let ms = Duration::from_millis;
        let t = Timeline::new(ms(100), [("PENDING", ms(10)), ("RUNNING", ms(20))], "DONE");
        assert_eq!(t.at(ms(100)), "PENDING");
        assert_eq!(t.at(ms(109)), "PENDING");
        assert_eq!(t.at(ms(110)), "RUNNING");
        assert_eq!(t.since(ms(115)), ms(110));
        assert_eq!(t.at(ms(130)), "DONE");
        assert!(t.is_done(ms(130)) && !t.is_done(ms(129)));
        assert_eq!(t.percent(ms(115)), 50);
        assert_eq!(t.percent(ms(200)), 100);
        let mut slow = t.clone();
        slow.stretch(ms(1000));
        assert_eq!(slow.at(ms(500)), "RUNNING");
    }

    #[test]
    fn the_clock_moves_forward_on_request() {
        let clock = Clock::new();
        let before = clock.now();
        clock.advance(Duration::from_secs(60));
        assert!(clock.now() >= before + Duration::from_secs(60));
        clock.reset();
        assert!(clock.now() < Duration::from_secs(60));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
