//! Gamepad teleop of a simulator (gilrs): the first gamepad gilrs finds.
//!
//! A reader thread owns the gilrs context (it is not `Send` on every
//! platform) and keeps the pad's latest stick and button state; each control
//! tick turns that state into an [`OperatorCommand`] with [`pad_command`].
//! Sticks inside [`STICK_DEADZONE`] read as zero, so a pad at rest sends zero
//! motion, which the arbiter treats as released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::operator::{Operator, OperatorCommand, OperatorContext};
use crate::io::env_adapter::EnvAdapter;
use crate::io::Observation;

/// Stick deflection (of 1) below which an axis reads as zero.
pub const STICK_DEADZONE: f64 = 0.12;

/// The button map, printed when the run starts.
pub const PAD_MAP: &str = "gamepad: left stick x/y   right stick up/down z, left/right yaw   \
     d-pad up/down pitch, left/right roll   A (south) close gripper   B (east) open gripper";

/// What the pad reports: stick axes in [−1, 1] and the buttons that matter.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PadState {
    /// Left stick: x right (+), y up (+).
    pub left: [f64; 2],
    /// Right stick: x right (+), y up (+).
    pub right: [f64; 2],
    /// D-pad: up, down, left, right held.
    pub dpad: [bool; 4],
    /// South (A / cross) held: close the gripper.
    pub close: bool,
    /// East (B / circle) held: open the gripper.
    pub open: bool,
}

/// One stick axis after the dead zone, rescaled so motion starts from zero at
/// its edge and reaches ±1 at full deflection (non-finite reads as zero).
pub fn shape_axis(v: f64) -> f64 {
    if !v.is_finite() || v.abs() <= STICK_DEADZONE {
        return 0.0;
    }
    (v.signum() * (v.abs() - STICK_DEADZONE) / (1.0 - STICK_DEADZONE)).clamp(-1.0, 1.0)
}

/// The command a pad state asks for at time `t` (s), in CALVIN relative units
/// (1 = full speed: 0.02 m or 0.05 rad per tick). Forward on the left stick is
/// +x (away from the robot base), left is +y; a held A closes, a held B opens
/// (A wins when both are held: grasping is the safer reading of a squeeze).
pub fn pad_command(s: &PadState, t: f64) -> OperatorCommand {
    let d = |a: bool, b: bool| f64::from(u8::from(a)) - f64::from(u8::from(b));
    let motion = [
        shape_axis(s.left[1]),
        -shape_axis(s.left[0]),
        shape_axis(s.right[1]),
        d(s.dpad[3], s.dpad[2]),
        d(s.dpad[0], s.dpad[1]),
        -shape_axis(s.right[0]),
    ];
    let gripper = if s.close {
        Some(-1.0)
    } else if s.open {
        Some(1.0)
    } else {
        None
    };
    OperatorCommand { t, motion, gripper }
}

/// The first gamepad gilrs finds, as an operator.
pub struct GamepadOperator {
    state: Arc<Mutex<PadState>>,
    stop: Arc<AtomicBool>,
    name: String,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GamepadOperator {
    /// Opens gilrs on a reader thread and waits for its first gamepad; errors
    /// when gilrs cannot start or finds none.
    pub fn new() -> Result<Self> {
        let state = Arc::new(Mutex::new(PadState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<String, String>>(1);
        let (st, sp) = (state.clone(), stop.clone());
        let reader = std::thread::Builder::new()
            .name("gamepad".into())
            .spawn(move || read_pad(st, sp, ready_tx))?;
        let name = match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => {
                let _ = reader.join();
                return Err(anyhow!("--input gamepad: {e}"));
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err(anyhow!("--input gamepad: gilrs did not answer within 5 s"));
            }
        };
        eprintln!("{name}\n{PAD_MAP}");
        Ok(Self {
            state,
            stop,
            name,
            reader: Some(reader),
        })
    }
}

/// The reader thread: opens gilrs, reports the first gamepad's name (or why
/// there is none), then mirrors its state until `stop`.
fn read_pad(
    state: Arc<Mutex<PadState>>,
    stop: Arc<AtomicBool>,
    ready: crossbeam_channel::Sender<Result<String, String>>,
) {
    use gilrs::{Axis, Button, Gilrs};
    let mut gilrs = match Gilrs::new() {
        Ok(g) => g,
        Err(e) => {
            let _ = ready.send(Err(format!("gilrs could not start: {e}")));
            return;
        }
    };
    let Some((id, pad)) = gilrs.gamepads().next() else {
        let _ = ready.send(Err(
            "gilrs found no gamepad (is one plugged in, and is /dev/input/event* readable?)".into(),
        ));
        return;
    };
    let _ = ready.send(Ok(format!("gamepad: {} ({id})", pad.name())));
    while !stop.load(Ordering::Relaxed) {
        while gilrs
            .next_event_blocking(Some(Duration::from_millis(20)))
            .is_some()
        {}
        let pad = gilrs.gamepad(id);
        let axis = |a: Axis| f64::from(pad.value(a));
        let s = PadState {
            left: [axis(Axis::LeftStickX), axis(Axis::LeftStickY)],
            right: [axis(Axis::RightStickX), axis(Axis::RightStickY)],
            dpad: [
                pad.is_pressed(Button::DPadUp),
                pad.is_pressed(Button::DPadDown),
                pad.is_pressed(Button::DPadLeft),
                pad.is_pressed(Button::DPadRight),
            ],
            close: pad.is_pressed(Button::South),
            open: pad.is_pressed(Button::East),
        };
        // A pad that disconnects reads as released (zero motion, gripper kept).
        *state.lock().expect("pad state poisoned") = if pad.is_connected() {
            s
        } else {
            PadState::default()
        };
    }
}

impl Drop for GamepadOperator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Operator for GamepadOperator {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn reset(&mut self, task: &str, instruction: &str) -> Result<()> {
        eprintln!("subtask: {task} — \"{instruction}\"");
        Ok(())
    }
    fn poll(
        &mut self,
        ctx: &OperatorContext,
        _obs: &Observation,
        _env: &mut EnvAdapter,
    ) -> Result<Option<OperatorCommand>> {
        let s = *self.state.lock().expect("pad state poisoned");
        Ok(Some(pad_command(&s, ctx.t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticks_inside_the_deadzone_send_zero_and_full_deflection_full_speed() {
        assert_eq!(shape_axis(0.05), 0.0);
        assert_eq!(shape_axis(-STICK_DEADZONE), 0.0);
        assert_eq!(shape_axis(f64::NAN), 0.0);
        assert!((shape_axis(1.0) - 1.0).abs() < 1e-12);
        assert!((shape_axis(-1.0) + 1.0).abs() < 1e-12);
        let half = shape_axis(0.56);
        assert!(half > 0.4 && half < 0.6, "{half}");
        assert_eq!(pad_command(&PadState::default(), 0.0).magnitude(), 0.0);
    }

    #[test]
    fn the_pad_maps_to_the_calvin_axes_and_the_gripper() {
        let s = PadState {
            left: [-1.0, 1.0],  // stick up and left: +x, +y
            right: [1.0, -1.0], // right stick down and right: −z, −yaw
            dpad: [true, false, false, true],
            close: false,
            open: true,
        };
        let c = pad_command(&s, 2.5);
        assert_eq!(c.t, 2.5);
        for (got, want) in c.motion.iter().zip([1.0, 1.0, -1.0, 1.0, 1.0, -1.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", c.motion);
        }
        assert_eq!(c.gripper, Some(1.0));
        let both = PadState {
            close: true,
            open: true,
            ..Default::default()
        };
        assert_eq!(pad_command(&both, 0.0).gripper, Some(-1.0));
        let none = pad_command(&PadState::default(), 0.0);
        assert_eq!(none.gripper, None);
    }
}
