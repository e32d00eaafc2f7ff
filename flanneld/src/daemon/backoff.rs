//! Retry delays that double after every failure, up to a maximum, and
//! start over after a success.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; the one after it is twice as
    /// long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.max);
        delay
    }

    /// What [`Backoff::next_delay`] will return, without moving on.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// After a success: the next delay is the minimum again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_max_and_starts_over_after_reset() {
        let mut b = Backoff::new(ms(100), ms(1000));
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(b.peek(), ms(1000));
        b.reset();
        assert_eq!(
            (b.peek(), b.next_delay(), b.next_delay()),
            (ms(100), ms(100), ms(200))
        );
        assert_eq!((b.min(), b.max()), (ms(100), ms(1000)));
    }

    #[test]
    fn a_max_below_the_min_is_the_min() {
        let mut b = Backoff::new(ms(500), ms(100));
        assert_eq!((b.next_delay(), b.next_delay()), (ms(500), ms(500)));
    }
}
