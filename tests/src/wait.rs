//! Waiting for a condition: one polling loop for every test and helper.

use std::time::{Duration, Instant};

/// How often a condition is checked: often enough to time what a test
/// measures, rarely enough that conditions which run a command (`ip -j`,
/// an HTTP request) leave the CPU to the daemons under test.
const POLL: Duration = Duration::from_millis(20);

/// Checks `done` every 20 ms until it is true; returns how long that took.
/// Panics naming `what` and `timeout` when it is still false after
/// `timeout` (`done` is always checked once more at the deadline).
pub fn wait_until(timeout: Duration, what: &str, done: impl FnMut() -> bool) -> Duration {
    try_wait_until(timeout, done)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`wait_until`], but returns `None` when `timeout` passes: for a
/// test that expects the condition never to hold, or one that panics with
/// more than a name (a log, the state it found).
pub fn try_wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        // Read the clock before checking, so a check that itself takes
        // long still gets one last chance after the deadline.
        let late = start.elapsed() >= timeout;
        if done() {
            return Some(start.elapsed());
        }
        if late {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_true_and_none_after_the_timeout() {
        let mut calls = 0;
        let took = try_wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        });
        assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
        assert_eq!(calls, 3);

        let start = Instant::now();
        assert_eq!(try_wait_until(Duration::from_millis(50), || false), None);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting for the moon")]
    fn names_what_it_waited_for() {
        wait_until(Duration::from_millis(20), "the moon", || false);
    }
}
