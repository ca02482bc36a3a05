//! Warnings that a client or a failing dependency can cause once per request (a connection over
//! the per-IP cap, a failed upload whose delete has no room to run) are logged at most once per
//! period, each line saying how many happened since the last one; the metric beside each counts
//! every one. A flood then costs the log one line a period, not one line an event.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts events and says when one is due to be logged (shared: `&self`).
#[derive(Debug)]
pub struct LogEvery {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    since_logged: u64,
}

impl LogEvery {
    /// At most one line per `period`.
    pub const fn new(period: Duration) -> Self {
        Self { period, state: Mutex::new(State { last_logged: None, since_logged: 0 }) }
    }

    /// Counts one event. `Some(n)` when a line is due — the first event, or the first one a period
    /// after the last line — with `n` the events since the last line, this one included.
    pub fn record(&self) -> Option<u64> {
        self.record_at(Instant::now())
    }

    fn record_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.since_logged += 1;
        if state.last_logged.is_some_and(|at| now.saturating_duration_since(at) < self.period) {
            return None;
        }
        state.last_logged = Some(now);
        Some(std::mem::take(&mut state.since_logged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_logged_then_one_line_a_period_with_the_count_since() {
        let log = LogEvery::new(Duration::from_secs(60));
        let start = Instant::now();
        let at = |seconds| start + Duration::from_secs(seconds);
        assert_eq!(log.record_at(at(0)), Some(1), "the first event");
        for second in 1..60 {
            assert_eq!(log.record_at(at(second)), None, "within the period: counted only");
        }
        assert_eq!(log.record_at(at(60)), Some(60), "a period later: the 59 held back and this one");
        assert_eq!(log.record_at(at(61)), None);
        assert_eq!(log.record_at(at(200)), Some(2), "after a quiet spell: the next event at once");
    }
}
