//! Bounded waits for state that becomes true later.

use std::time::{Duration, Instant};

/// How long tests wait for state that becomes true later: several times every product
/// bound, because the test machine is shared and noisy.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often [`until`] looks again.
const INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds (true) or `patience` runs out (false). For waits
/// outside an async runtime: a process starting or exiting, a cluster converging.
pub fn until(patience: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() >= patience {
            return false;
        }
        // The one pause of a synchronous poll: these waits run outside any runtime (in
        // Drop, in plain #[test]s, in the benchmark's set-up), with nothing to await.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_as_soon_as_the_condition_holds_and_false_when_it_never_does() {
        let mut calls = 0;
        assert!(until(PATIENCE, || {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3);
        let started = Instant::now();
        assert!(!until(Duration::from_millis(100), || false));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
