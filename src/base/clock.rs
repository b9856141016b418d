//! The runtime's monotonic clock (seconds since the process first asked) and a
//! precise sleep: the OS sleeps until 1 ms before the deadline, then it spins.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Seconds on the monotonic clock (since the first call in this process).
pub fn now_s() -> f64 {
    epoch().elapsed().as_secs_f64()
}

/// The `Instant` of a time on the [`now_s`] clock.
pub fn instant_at(t: f64) -> Instant {
    epoch() + Duration::from_secs_f64(t.max(0.0))
}

/// The [`now_s`] time of an `Instant` (0 for instants before the clock's epoch).
pub fn seconds_at(t: Instant) -> f64 {
    t.saturating_duration_since(epoch()).as_secs_f64()
}

/// Sleeps until `deadline`: OS sleep to 1 ms before it, then a spin.
pub fn sleep_until(deadline: Instant) {
    const SPIN: Duration = Duration::from_millis(1);
    let now = Instant::now();
    if deadline > now + SPIN {
        std::thread::sleep(deadline - now - SPIN);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}
