//! One-dimensional clamp / velocity / acceleration limiting, applied per axis.
//!
//! Every axis (x, y, z in m; roll, pitch, yaw in rad) is limited on its own by
//! [`step_axis`]. The step keeps a hard invariant: the state `(p, v)` it
//! returns can always brake to rest (decelerating by `a_max·dt` per tick)
//! without leaving `[lo, hi]`. Starting from a position inside the interval at
//! rest, every later step therefore stays inside the interval *and* within the
//! velocity and acceleration limits at the same time: no tick ever has to choose
//! between the workspace box and the acceleration limit.

use std::f64::consts::TAU;

/// Limits of one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AxisLimits {
    /// Lower bound of the position interval (m or rad).
    pub lo: f64,
    /// Upper bound of the position interval (m or rad).
    pub hi: f64,
    /// Maximum speed on this axis (m/s or rad/s), > 0.
    pub v_max: f64,
    /// Maximum change of speed on this axis (m/s² or rad/s²), > 0.
    pub a_max: f64,
    /// `true` for an angle whose interval covers the full circle (width ≥ 2π):
    /// there is no wall, motion takes the shortest way round and the position
    /// is wrapped back into `[centre − π, centre + π)`.
    pub full_circle: bool,
}

impl AxisLimits {
    /// Linear axis or angle limited to an interval narrower than 2π.
    pub(crate) fn new(lo: f64, hi: f64, v_max: f64, a_max: f64) -> Self {
        Self {
            lo,
            hi,
            v_max,
            a_max,
            full_circle: false,
        }
    }

    /// Angle axis: `full_circle` is set when `hi − lo ≥ 2π`.
    pub(crate) fn angle(lo: f64, hi: f64, v_max: f64, a_max: f64) -> Self {
        Self {
            full_circle: hi - lo >= TAU,
            ..Self::new(lo, hi, v_max, a_max)
        }
    }

    fn centre(&self) -> f64 {
        0.5 * (self.lo + self.hi)
    }
}

/// Result of one limited step on one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AxisStep {
    /// New position (m or rad), inside `[lo, hi]`.
    pub p: f64,
    /// New velocity (m/s or rad/s): `(p − p_prev) / dt`, shortest way round on
    /// a full-circle angle.
    pub v: f64,
    /// The goal was more than one tick away at `v_max`.
    pub velocity_limited: bool,
    /// The acceleration limit (or braking before a wall) shortened the step.
    pub accel_limited: bool,
}

pub(crate) use crate::base::angle::wrap_pi;

/// Clamps a position (m) into `[lo, hi]`; `clamped` tells whether it moved.
pub(crate) fn clamp_linear(x: f64, lo: f64, hi: f64) -> (f64, bool) {
    let c = x.clamp(lo, hi);
    (c, c != x)
}

/// Clamps an angle (rad) into `[lo, hi]`, comparing angles modulo 2π relative
/// to the interval centre: the angle is first wrapped into
/// `[centre − π, centre + π)` (that move is not a clamp, it is the same
/// orientation), then clamped to the nearer bound. `clamped` is `true` only
/// when the orientation itself changed.
pub(crate) fn clamp_angle(a: f64, lo: f64, hi: f64) -> (f64, bool) {
    let c = 0.5 * (lo + hi);
    let w = c + wrap_pi(a - c);
    let out = w.clamp(lo, hi);
    (out, out != w)
}

/// Distance (m or rad) covered while braking from speed `v ≥ 0` to rest,
/// decelerating by `a·dt` per tick of `dt` seconds:
/// `dt · Σ_{j ≥ 1} max(0, v − j·a·dt)`.
pub(crate) fn braking_distance(v: f64, a: f64, dt: f64) -> f64 {
    if v <= 0.0 {
        return 0.0;
    }
    let step = a * dt;
    let n = (v / step).floor();
    // Terms j = 1..=n are positive (the j = n term may be exactly 0).
    dt * (n * v - step * n * (n + 1.0) * 0.5).max(0.0)
}

/// Largest speed `v ≥ 0` (m/s or rad/s) such that moving one tick at `v` and
/// then braking at `a` per tick covers at most `dist`, capped at `v_max`:
/// the inverse of `v ↦ v·dt + braking_distance(v)`.
pub(crate) fn stopping_speed(dist: f64, v_max: f64, a: f64, dt: f64) -> f64 {
    if dist.is_nan() || dist <= 0.0 {
        return 0.0;
    }
    if dist >= v_max * dt + braking_distance(v_max, a, dt) {
        return v_max;
    }
    let u = a * dt * dt;
    // f(v) = dt·((n+1)·v − a·dt·n(n+1)/2) on v ∈ [n·a·dt, (n+1)·a·dt),
    // f(n·a·dt) = u·n(n+1)/2.
    let tri = |n: f64| u * n * (n + 1.0) * 0.5;
    let mut n = (((1.0 + 8.0 * dist / u).sqrt() - 1.0) * 0.5)
        .floor()
        .max(0.0);
    for _ in 0..4 {
        if n > 0.0 && tri(n) > dist {
            n -= 1.0;
        } else if tri(n + 1.0) <= dist {
            n += 1.0;
        } else {
            break;
        }
    }
    let v = (dist / dt + a * dt * n * (n + 1.0) * 0.5) / (n + 1.0);
    v.clamp(0.0, v_max)
}

/// One control tick on one axis: moves from `p` (velocity `v_prev`) toward
/// `goal` (already clamped into the limits), at most `v_max`, changing speed
/// by at most `a_max·dt`, and never to a state that could not brake to rest
/// inside `[lo, hi]`. `dt` is the control period (s).
pub(crate) fn step_axis(p: f64, v_prev: f64, goal: f64, lim: &AxisLimits, dt: f64) -> AxisStep {
    let dv = lim.a_max * dt;
    let d = if lim.full_circle {
        wrap_pi(goal - p)
    } else {
        goal - p
    };
    // What the request asks for: reach the goal in this tick.
    let v_raw = d / dt;
    let velocity_limited = v_raw.abs() > lim.v_max;
    // Desired: fastest approach that can still stop on the goal.
    let v_des = stopping_speed(d.abs(), lim.v_max, lim.a_max, dt).copysign(d);

    // Hard bounds: acceleration window, speed limit, braking before walls.
    let mut lower = (v_prev - dv).max(-lim.v_max);
    let mut upper = (v_prev + dv).min(lim.v_max);
    if !lim.full_circle {
        lower = lower.max(-stopping_speed(p - lim.lo, lim.v_max, lim.a_max, dt));
        upper = upper.min(stopping_speed(lim.hi - p, lim.v_max, lim.a_max, dt));
    }
    let mut v = if lower <= upper {
        v_des.clamp(lower, upper)
    } else {
        // Only reachable through rounding: brake, which is always feasible.
        (v_prev.abs() - dv).max(0.0).copysign(v_prev)
    };

    let mut p_new = p + v * dt;
    if lim.full_circle {
        let c = lim.centre();
        p_new = (c + wrap_pi(p_new - c)).clamp(lim.lo, lim.hi);
    } else {
        let clamped = p_new.clamp(lim.lo, lim.hi);
        if clamped != p_new {
            // Rounding only: keep the reported velocity consistent.
            p_new = clamped;
            v = (p_new - p) / dt;
        }
    }
    let accel_limited = (v - v_des).abs() > 1e-12 * (1.0 + v_des.abs());
    AxisStep {
        p: p_new,
        v,
        velocity_limited,
        accel_limited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const DT: f64 = 1.0 / 30.0;

    #[test]
    fn wrap_pi_range() {
        for a in [-10.0, -PI, -1e-300, 0.0, 1.0, PI, 3.0 * PI, 1e6] {
            let w = wrap_pi(a);
            assert!((-PI..PI).contains(&w), "{a} -> {w}");
            assert!(((a - w) / TAU - ((a - w) / TAU).round()).abs() < 1e-6);
        }
    }

    #[test]
    fn clamp_angle_uses_interval_centre() {
        // Interval centred on π: −3.1 rad is the same orientation as 3.183 rad.
        let (lo, hi) = (PI - 0.5, PI + 0.5);
        let (a, clamped) = clamp_angle(-3.1, lo, hi);
        assert!(!clamped);
        assert!((a - (TAU - 3.1)).abs() < 1e-12);
        // Far outside: goes to the nearer bound.
        let (a, clamped) = clamp_angle(PI - 1.0, lo, hi);
        assert!(clamped);
        assert_eq!(a, lo);
        let (a, clamped) = clamp_angle(-PI + 1.0, lo, hi);
        assert!(clamped);
        assert_eq!(a, hi);
    }

    #[test]
    fn stopping_speed_inverts_travel() {
        let (vmax, a) = (1.0, 3.0);
        for dist in [1e-6, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.33, 0.5] {
            let v = stopping_speed(dist, vmax, a, DT);
            let travel = v * DT + braking_distance(v, a, DT);
            assert!(travel <= dist * (1.0 + 1e-12) + 1e-15, "{dist}: {travel}");
            if v < vmax {
                assert!((travel - dist).abs() < 1e-12, "{dist}: {travel}");
            }
        }
    }

    #[test]
    fn reaches_goal_and_stays_in_box() {
        let lim = AxisLimits::new(-0.2, 0.2, 0.5, 2.0);
        let (mut p, mut v) = (0.0, 0.0);
        for _ in 0..200 {
            let s = step_axis(p, v, 0.2, &lim, DT);
            assert!(s.p <= 0.2 && s.p >= -0.2);
            assert!(s.v.abs() <= 0.5 + 1e-12);
            assert!((s.v - v).abs() <= 2.0 * DT + 1e-12);
            p = s.p;
            v = s.v;
        }
        assert!((p - 0.2).abs() < 1e-12 && v.abs() < 1e-12, "{p} {v}");
    }

    #[test]
    fn full_circle_takes_short_way() {
        let lim = AxisLimits::angle(-PI, PI, 1.0, 100.0);
        let s = step_axis(PI - 0.01, 0.0, -PI + 0.01, &lim, DT);
        assert!(s.v > 0.0);
        assert!((-PI..=PI).contains(&s.p));
    }
}
