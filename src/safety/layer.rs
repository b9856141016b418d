//! [`SafetyLayer`]: the per-tick state machine.

use nalgebra::Vector3;

use super::config::{RelativeBase, SafetyConfig};
use super::limiter::{clamp_angle, clamp_linear, step_axis, AxisLimits};
use super::types::{
    ActionKind, ActionRequest, CommandKind, GripperState, InputKind, SafeCommand, SafetyEvent,
    SafetyEventKind, TcpPose, WatchdogState,
};
use super::{SafetyError, Seconds};

/// Most events kept between two [`SafetyLayer::drain_events`]; older ones are
/// dropped (and counted by [`SafetyLayer::dropped_events`]).
const MAX_EVENTS: usize = 4096;

/// The goal the layer is moving toward: already clamped into the limits.
#[derive(Debug, Clone, Copy)]
struct Goal {
    /// Clamped goal pose (m, rad).
    pose: TcpPose,
    /// Time of validity of the request it came from (s).
    t: Seconds,
    /// Requested gripper state.
    gripper: GripperState,
}

/// Result of the checks of one tick: move on, or hold for this reason.
type Gate<T> = Result<T, SafetyEventKind>;

/// Enforces [`SafetyConfig`] on every command sent to the arm.
///
/// Lifecycle: [`new`](Self::new) → [`reset`](Self::reset) (at the start of
/// every episode) → per tick: [`on_frame`](Self::on_frame) /
/// [`on_proprio`](Self::on_proprio) as inputs arrive, then
/// [`process`](Self::process) once. See the [module docs](super) for the
/// rules of `process`, in order.
#[derive(Debug, Clone)]
pub struct SafetyLayer {
    cfg: SafetyConfig,
    /// Control period (s).
    dt: Seconds,
    /// Per-axis limits: x, y, z (m), roll, pitch, yaw (rad).
    limits: [AxisLimits; 6],

    /// Last safe target (m, rad); `None` until a successful `reset`.
    target: Option<TcpPose>,
    /// Velocity of the last `Move` (m/s, rad/s); zero after a hold.
    velocity: [f64; 6],
    /// Commanded gripper state.
    gripper: GripperState,
    /// Time of the last gripper state change (s).
    gripper_changed_at: Option<Seconds>,
    /// Goal being approached.
    goal: Option<Goal>,

    /// Newest camera frame time (s).
    last_frame_t: Option<Seconds>,
    /// Last finite measured pose and its time (s).
    proprio: Option<(Seconds, TcpPose)>,
    /// Field of the last measured pose that was non-finite, until a finite one arrives.
    proprio_fault: Option<&'static str>,
    /// `now` of the last tick with a valid clock (s).
    last_now: Option<Seconds>,
    /// Newest finite time seen on any input (s), for events raised outside `process`.
    latest_t: Seconds,

    estopped: bool,
    /// Holds sent in the current hold episode.
    holds_sent: u32,
    /// All holds of the episode were sent.
    silent: bool,

    events: Vec<SafetyEvent>,
    dropped_events: u64,
}

impl SafetyLayer {
    /// Validates `cfg` and builds an uninitialized layer: call
    /// [`reset`](Self::reset) before the first tick. The config must carry its
    /// control rate (set from the policy bundle by [`SafetyConfig::with_control_rate`]).
    pub fn new(cfg: SafetyConfig) -> Result<Self, SafetyError> {
        cfg.validate()?;
        if cfg.control_rate_hz.is_none() {
            return Err(SafetyError::InvalidConfig {
                field: "control_rate_hz".into(),
                expected: "a control rate (Hz): the policy bundle's, set with SafetyConfig::with_control_rate".into(),
                found: "none".into(),
            });
        }
        let lin = |i: usize| {
            AxisLimits::new(
                cfg.workspace_min[i],
                cfg.workspace_max[i],
                cfg.max_linear_speed,
                cfg.max_linear_accel,
            )
        };
        let ang = |i: usize| {
            AxisLimits::angle(
                cfg.euler_min[i],
                cfg.euler_max[i],
                cfg.max_angular_speed,
                cfg.max_angular_accel,
            )
        };
        let limits = [lin(0), lin(1), lin(2), ang(0), ang(1), ang(2)];
        Ok(Self {
            dt: cfg.dt(),
            cfg,
            limits,
            target: None,
            velocity: [0.0; 6],
            gripper: GripperState::Open,
            gripper_changed_at: None,
            goal: None,
            last_frame_t: None,
            proprio: None,
            proprio_fault: None,
            last_now: None,
            latest_t: 0.0,
            estopped: false,
            holds_sent: 0,
            silent: false,
            events: Vec::new(),
            dropped_events: 0,
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &SafetyConfig {
        &self.cfg
    }

    /// Control period `dt = 1 / control_rate_hz` (s).
    pub fn dt(&self) -> Seconds {
        self.dt
    }

    /// Starts an episode from the measured pose `current` (m, rad) and
    /// gripper state at time `t` (s). The pose is clamped into the limits
    /// (with events) to give the first safe target; velocity is zero; the
    /// goal, the last frame (a fresh [`on_frame`](Self::on_frame) is needed
    /// before moving), the gripper debounce timer, the hold counter and the
    /// tick clock (an episode may restart its clock) are cleared. `current`
    /// also counts as a measured pose at `t`. The e-stop is **not** cleared.
    ///
    /// A non-finite `current` or `t` is an error and leaves the layer
    /// uninitialized (`process` returns `None`).
    pub fn reset(
        &mut self,
        current: TcpPose,
        gripper: GripperState,
        t: Seconds,
    ) -> Result<(), SafetyError> {
        let fault = if !t.is_finite() {
            Some("reset.t")
        } else if !current.position.iter().all(|x| x.is_finite()) {
            Some("reset.position")
        } else if !current.euler.iter().all(|x| x.is_finite()) {
            Some("reset.euler")
        } else {
            None
        };
        if let Some(field) = fault {
            self.target = None;
            let at = self.latest_t;
            self.record(at, SafetyEventKind::NonFinite { field });
            return Err(SafetyError::NonFinite { field });
        }
        self.latest_t = t;
        self.target = Some(self.clamp_pose(&current, t));
        self.velocity = [0.0; 6];
        self.gripper = gripper;
        self.gripper_changed_at = None;
        self.goal = None;
        self.last_frame_t = None;
        self.proprio = Some((t, current));
        self.proprio_fault = None;
        self.last_now = None;
        self.holds_sent = 0;
        self.silent = false;
        Ok(())
    }

    /// A fresh camera frame with time of validity `t` (s) arrived: feeds the
    /// watchdog. A non-finite `t` is ignored (and reported); an older `t`
    /// than the newest frame seen does not move the watchdog back.
    pub fn on_frame(&mut self, t: Seconds) {
        if !t.is_finite() {
            let at = self.latest_t;
            self.record(at, SafetyEventKind::NonFinite { field: "frame.t" });
            return;
        }
        self.see(t);
        self.last_frame_t = Some(self.last_frame_t.map_or(t, |f| f.max(t)));
    }

    /// The measured TCP pose `current` (m, rad) at time `t` (s). A NaN or
    /// ±Inf anywhere is reported at once and makes every tick hold until a
    /// finite measurement arrives.
    pub fn on_proprio(&mut self, t: Seconds, current: TcpPose) {
        let fault = if !t.is_finite() {
            Some("proprio.t")
        } else if !current.position.iter().all(|x| x.is_finite()) {
            Some("proprio.position")
        } else if !current.euler.iter().all(|x| x.is_finite()) {
            Some("proprio.euler")
        } else {
            None
        };
        match fault {
            Some(field) => {
                self.proprio_fault = Some(field);
                let at = if t.is_finite() { t } else { self.latest_t };
                self.record(at, SafetyEventKind::NonFinite { field });
            }
            None => {
                self.see(t);
                self.proprio_fault = None;
                self.proprio = Some((t, current));
            }
        }
    }

    /// One control tick at time `now` (s) with the policy's latest request,
    /// if any (`None`: keep approaching the current goal while its request is
    /// fresh). Returns the command to send, or `None` when there is nothing
    /// safe to send (not initialized, or quiet after `hold_repeats` holds).
    /// See the [module docs](super) for the rules, in order.
    pub fn process(
        &mut self,
        now: Seconds,
        request: Option<&ActionRequest>,
    ) -> Option<SafeCommand> {
        let clock = self.tick_clock(now);
        let stamp = if now.is_finite() { now } else { self.latest_t };
        let Some(target) = self.target else {
            let kind = if self.estopped {
                SafetyEventKind::EStop
            } else {
                SafetyEventKind::NotInitialized
            };
            self.record(stamp, kind);
            return None;
        };
        let planned = if self.estopped {
            Err(SafetyEventKind::EStop)
        } else {
            clock
                .and_then(|()| self.check_frame(now))
                .and_then(|()| self.check_proprio())
                .and_then(|()| self.select_goal(now, request, &target))
        };
        match planned {
            Ok(goal) => Some(self.step(now, &target, goal)),
            Err(cause) => {
                self.record(stamp, cause);
                self.hold(stamp, target)
            }
        }
    }

    /// A tick at `now` (s) that holds on a decision made outside the layer
    /// (the teleop arbiter: a stale or corrupt operator stream). `cause` is
    /// recorded and the layer holds exactly as for its own causes
    /// (`hold_repeats` holds, then quiet: `None`); the goal is dropped, so
    /// moving again needs a new request.
    pub fn process_hold(&mut self, now: Seconds, cause: SafetyEventKind) -> Option<SafeCommand> {
        let clock = self.tick_clock(now);
        let stamp = if now.is_finite() { now } else { self.latest_t };
        let Some(target) = self.target else {
            self.record(stamp, SafetyEventKind::NotInitialized);
            return None;
        };
        self.record(stamp, clock.err().unwrap_or(cause));
        self.hold(stamp, target)
    }

    /// Latches the e-stop: every later tick holds (`hold_repeats` times, then
    /// quiet) until [`reset_estop`](Self::reset_estop). Starts a new hold
    /// episode, so the holds are sent even if the layer was quiet.
    pub fn estop(&mut self) {
        self.estopped = true;
        self.goal = None;
        self.holds_sent = 0;
        self.silent = false;
        let at = self.latest_t;
        self.record(at, SafetyEventKind::EStop);
    }

    /// Clears a latched e-stop (the only way to clear it). Moving again needs
    /// a fresh frame and a new request; after the arm was moved by hand, call
    /// [`reset`](Self::reset) with the measured pose as well.
    pub fn reset_estop(&mut self) {
        if self.estopped {
            self.estopped = false;
            let at = self.latest_t;
            self.record(at, SafetyEventKind::EStopCleared);
        }
    }

    /// Whether the e-stop is latched.
    pub fn is_estopped(&self) -> bool {
        self.estopped
    }

    /// State of the hold machine.
    pub fn watchdog_state(&self) -> WatchdogState {
        if self.silent {
            WatchdogState::Silent
        } else if self.holds_sent > 0 {
            WatchdogState::Holding {
                sent: self.holds_sent,
            }
        } else {
            WatchdogState::Ok
        }
    }

    /// Events since the last [`drain_events`](Self::drain_events), oldest first.
    pub fn events(&self) -> &[SafetyEvent] {
        &self.events
    }

    /// Takes the events recorded so far, oldest first.
    pub fn drain_events(&mut self) -> Vec<SafetyEvent> {
        std::mem::take(&mut self.events)
    }

    /// Events dropped because more than 4096 piled up without a drain.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Last safe target (m, rad), `None` before a successful `reset`.
    pub fn last_target(&self) -> Option<&TcpPose> {
        self.target.as_ref()
    }

    /// Currently commanded gripper state.
    pub fn gripper(&self) -> GripperState {
        self.gripper
    }

    // ----- the small steps of `process` -----

    /// Rule 3: `now` finite and not earlier than the previous tick.
    fn tick_clock(&mut self, now: Seconds) -> Gate<()> {
        if !now.is_finite() {
            return Err(SafetyEventKind::NonFinite { field: "now" });
        }
        if let Some(last) = self.last_now {
            if now < last {
                return Err(SafetyEventKind::ClockWentBackwards { by_s: last - now });
            }
        }
        self.last_now = Some(now);
        self.see(now);
        Ok(())
    }

    /// Rule 4: a camera frame no older than `stale_timeout_s`.
    fn check_frame(&self, now: Seconds) -> Gate<()> {
        self.check_age(InputKind::Frame, self.last_frame_t, now)
    }

    /// Rule 5: the last measured pose is finite.
    fn check_proprio(&self) -> Gate<()> {
        match self.proprio_fault {
            Some(field) => Err(SafetyEventKind::NonFinite { field }),
            None => Ok(()),
        }
    }

    /// Rule 6 and the clamp of rule 7: the goal of this tick.
    fn select_goal(
        &mut self,
        now: Seconds,
        request: Option<&ActionRequest>,
        target: &TcpPose,
    ) -> Gate<Goal> {
        let Some(req) = request else {
            let goal = self.goal.ok_or(SafetyEventKind::NoRequest)?;
            self.check_age(InputKind::Request, Some(goal.t), now)?;
            return Ok(goal);
        };
        check_request_finite(req)?;
        self.check_age(InputKind::Request, Some(req.t), now)?;
        let raw = match req.kind {
            ActionKind::Absolute { pose } => pose,
            ActionKind::Relative { delta } => {
                let mut pose = self.relative_base(now, target)?;
                for (i, d) in delta.iter().enumerate() {
                    pose.set_axis(i, pose.axis(i) + d);
                }
                pose
            }
        };
        if !raw.is_finite() {
            return Err(SafetyEventKind::NonFinite { field: "goal" });
        }
        let goal = Goal {
            pose: self.clamp_pose(&raw, now),
            t: req.t,
            gripper: GripperState::from_signal(req.gripper),
        };
        self.goal = Some(goal);
        Ok(goal)
    }

    /// The pose a relative delta is added to.
    fn relative_base(&self, now: Seconds, target: &TcpPose) -> Gate<TcpPose> {
        match self.cfg.relative_base {
            RelativeBase::LastTarget => Ok(*target),
            RelativeBase::Measured => {
                self.check_age(InputKind::Proprio, self.proprio.map(|(t, _)| t), now)?;
                self.proprio
                    .map(|(_, pose)| pose)
                    .ok_or(SafetyEventKind::Stale {
                        input: InputKind::Proprio,
                        age_s: f64::INFINITY,
                    })
            }
        }
    }

    /// Age check shared by frames, requests and measurements.
    fn check_age(&self, input: InputKind, t: Option<Seconds>, now: Seconds) -> Gate<()> {
        let Some(t) = t else {
            return Err(SafetyEventKind::Stale {
                input,
                age_s: f64::INFINITY,
            });
        };
        let age = now - t;
        if age < 0.0 {
            Err(SafetyEventKind::FromFuture {
                input,
                ahead_s: -age,
            })
        } else if age > self.cfg.stale_timeout_s {
            Err(SafetyEventKind::Stale { input, age_s: age })
        } else {
            Ok(())
        }
    }

    /// Clamps a finite pose into the workspace box and Euler limits,
    /// recording an event per clamped axis.
    fn clamp_pose(&mut self, pose: &TcpPose, t: Seconds) -> TcpPose {
        let mut out = *pose;
        for i in 0..6 {
            let lim = self.limits[i];
            let (value, clamped) = if i < 3 {
                clamp_linear(pose.axis(i), lim.lo, lim.hi)
            } else {
                clamp_angle(pose.axis(i), lim.lo, lim.hi)
            };
            out.set_axis(i, value);
            if clamped {
                let kind = if i < 3 {
                    SafetyEventKind::ClampedPosition { axis: i }
                } else {
                    SafetyEventKind::ClampedOrientation { axis: i - 3 }
                };
                self.record(t, kind);
            }
        }
        out
    }

    /// Rule 7: one limited step toward `goal`, gripper debounced → `Move`.
    fn step(&mut self, now: Seconds, target: &TcpPose, goal: Goal) -> SafeCommand {
        let mut next = *target;
        for i in 0..6 {
            let s = step_axis(
                target.axis(i),
                self.velocity[i],
                goal.pose.axis(i),
                &self.limits[i],
                self.dt,
            );
            next.set_axis(i, s.p);
            self.velocity[i] = s.v;
            if s.velocity_limited {
                self.record(now, SafetyEventKind::VelocityLimited { axis: i });
            }
            if s.accel_limited {
                self.record(now, SafetyEventKind::AccelLimited { axis: i });
            }
        }
        self.debounce_gripper(now, goal.gripper);
        self.target = Some(next);
        self.holds_sent = 0;
        self.silent = false;
        let v = &self.velocity;
        SafeCommand {
            t: now,
            kind: CommandKind::Move,
            target: next,
            linear_velocity: Vector3::new(v[0], v[1], v[2]),
            angular_velocity: Vector3::new(v[3], v[4], v[5]),
            gripper: self.gripper,
        }
    }

    /// Applies a gripper request unless the last change was less than
    /// `gripper_debounce_s` ago.
    fn debounce_gripper(&mut self, now: Seconds, requested: GripperState) {
        if requested == self.gripper {
            return;
        }
        if let Some(changed) = self.gripper_changed_at {
            if now - changed < self.cfg.gripper_debounce_s {
                self.record(now, SafetyEventKind::GripperDebounced);
                return;
            }
        }
        self.gripper = requested;
        self.gripper_changed_at = Some(now);
    }

    /// A hold: the last safe target, zero velocity, goal dropped; `None`
    /// once `hold_repeats` holds were sent in this episode.
    fn hold(&mut self, t: Seconds, target: TcpPose) -> Option<SafeCommand> {
        self.goal = None;
        self.velocity = [0.0; 6];
        if self.holds_sent >= self.cfg.hold_repeats {
            if !self.silent {
                self.silent = true;
                self.record(t, SafetyEventKind::Silenced);
            }
            return None;
        }
        self.holds_sent += 1;
        Some(SafeCommand {
            t,
            kind: CommandKind::Hold,
            target,
            linear_velocity: Vector3::zeros(),
            angular_velocity: Vector3::zeros(),
            gripper: self.gripper,
        })
    }

    /// Remembers the newest finite time seen, for event stamps.
    fn see(&mut self, t: Seconds) {
        if t > self.latest_t {
            self.latest_t = t;
        }
    }

    fn record(&mut self, t: Seconds, kind: SafetyEventKind) {
        if self.events.len() >= MAX_EVENTS {
            let n = MAX_EVENTS / 2;
            self.events.drain(..n);
            self.dropped_events += n as u64;
        }
        self.events.push(SafetyEvent { t, kind });
        if !matches!(
            kind,
            SafetyEventKind::VelocityLimited { .. } | SafetyEventKind::AccelLimited { .. }
        ) {
            tracing::debug!(t, ?kind, "safety event");
        }
    }
}

/// Rule 6: every number in the request is finite.
fn check_request_finite(req: &ActionRequest) -> Gate<()> {
    let finite = |xs: &[f64]| xs.iter().all(|x| x.is_finite());
    let field = if !req.t.is_finite() {
        Some("request.t")
    } else if !req.gripper.is_finite() {
        Some("request.gripper")
    } else {
        match &req.kind {
            ActionKind::Relative { delta } if !finite(delta) => Some("request.delta"),
            ActionKind::Absolute { pose } if !finite(pose.position.as_slice()) => {
                Some("request.pose.position")
            }
            ActionKind::Absolute { pose } if !finite(pose.euler.as_slice()) => {
                Some("request.pose.euler")
            }
            _ => None,
        }
    };
    match field {
        Some(field) => Err(SafetyEventKind::NonFinite { field }),
        None => Ok(()),
    }
}
