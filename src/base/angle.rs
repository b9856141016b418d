//! Angles: one wrapping rule for the whole crate.

use std::f64::consts::{PI, TAU};

/// `a` (rad) wrapped to [−π, π).
pub fn wrap_pi(a: f64) -> f64 {
    let w = (a + PI).rem_euclid(TAU) - PI;
    // rem_euclid can round up to exactly TAU for tiny negative inputs.
    if w >= PI {
        w - TAU
    } else {
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_into_the_half_open_interval() {
        for (a, want) in [
            (0.0, 0.0),
            (PI, -PI),
            (-PI, -PI),
            (3.0 * PI, -PI),
            (PI + 0.1, -PI + 0.1),
            (-PI - 0.1, PI - 0.1),
            (7.0, 7.0 - TAU),
            (-1e-300, -1e-300),
        ] {
            let got = wrap_pi(a);
            assert!(
                (got - want).abs() < 1e-12,
                "wrap_pi({a}) = {got}, expected {want}"
            );
            assert!((-PI..PI).contains(&got));
        }
    }
}
