//! Keyboard teleop of a simulator in a terminal (crossterm, raw mode).
//!
//! Terminals report key presses and auto-repeats, not releases, so a key
//! drives its axis for [`KEY_HOLD_S`] after its last press or repeat: hold a
//! key to keep moving, let go and the arm stops within that time. The
//! operator then sends zero motion, which the arbiter treats as released.

use std::time::Duration;

use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind};

use super::operator::{Operator, OperatorCommand, OperatorContext};
use crate::io::env_adapter::EnvAdapter;
use crate::io::Observation;

/// How long one key press (or auto-repeat) keeps its axis moving (s).
pub const KEY_HOLD_S: f64 = 0.25;

/// The key map, printed when the run starts.
pub const KEY_MAP: &str = "keys: w/s +x/−x   a/d +y/−y   r/f up/down   q/e yaw ±   \
     i/k pitch ±   j/l roll ±   space gripper open/close   (Ctrl-C stops)";

/// What the keys pressed so far ask for at a given time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    /// Per motion axis: direction (±1) and the time of the last press (s).
    axes: [Option<(f64, f64)>; 6],
    /// Gripper requested by the last space press (±1), `None` until pressed.
    gripper: Option<f64>,
    /// A gripper input not yet sent.
    gripper_pending: bool,
}

impl KeyState {
    /// Applies a key pressed at `t` (s); `false` for keys outside the map.
    pub fn press(&mut self, key: char, t: f64) -> bool {
        let (axis, dir) = match key {
            'w' => (0, 1.0),
            's' => (0, -1.0),
            'a' => (1, 1.0),
            'd' => (1, -1.0),
            'r' => (2, 1.0),
            'f' => (2, -1.0),
            'j' => (3, 1.0),
            'l' => (3, -1.0),
            'i' => (4, 1.0),
            'k' => (4, -1.0),
            'q' => (5, 1.0),
            'e' => (5, -1.0),
            ' ' => {
                let next = match self.gripper {
                    Some(g) if g > 0.0 => -1.0,
                    Some(_) => 1.0,
                    None => -1.0,
                };
                self.gripper = Some(next);
                self.gripper_pending = true;
                return true;
            }
            _ => return false,
        };
        self.axes[axis] = Some((dir, t));
        true
    }

    /// The command at time `t` (s): full speed (1 CALVIN unit per tick) on
    /// every axis pressed within [`KEY_HOLD_S`], the gripper once per press.
    pub fn command(&mut self, t: f64) -> OperatorCommand {
        let mut motion = [0.0; 6];
        for (m, a) in motion.iter_mut().zip(&self.axes) {
            if let Some((dir, at)) = a {
                if t - at <= KEY_HOLD_S {
                    *m = *dir;
                }
            }
        }
        let gripper = if self.gripper_pending {
            self.gripper_pending = false;
            self.gripper
        } else {
            None
        };
        OperatorCommand { t, motion, gripper }
    }
}

/// Restores the terminal when the operator goes away.
struct RawMode;

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The keyboard of the terminal as an operator.
pub struct KeyboardOperator {
    keys: KeyState,
    _raw: RawMode,
}

impl KeyboardOperator {
    /// Puts the terminal in raw mode and prints the key map.
    pub fn new() -> Result<Self> {
        crossterm::terminal::enable_raw_mode()
            .context("keyboard teleop needs an interactive terminal (raw mode)")?;
        eprint!("{KEY_MAP}\r\n");
        Ok(Self {
            keys: KeyState::default(),
            _raw: RawMode,
        })
    }
}

impl Operator for KeyboardOperator {
    fn name(&self) -> String {
        "keyboard".into()
    }
    fn reset(&mut self, task: &str, instruction: &str) -> Result<()> {
        eprint!("subtask: {task} — \"{instruction}\"\r\n");
        self.keys = KeyState::default();
        Ok(())
    }
    fn poll(
        &mut self,
        ctx: &OperatorContext,
        _obs: &Observation,
        _env: &mut EnvAdapter,
    ) -> Result<Option<OperatorCommand>> {
        while crossterm::event::poll(Duration::ZERO)? {
            if let Event::Key(KeyEvent {
                code,
                kind,
                modifiers,
                ..
            }) = crossterm::event::read()?
            {
                if kind == KeyEventKind::Release {
                    continue;
                }
                match code {
                    KeyCode::Char('c')
                        if modifiers.contains(crossterm::event::KeyModifiers::CONTROL) =>
                    {
                        anyhow::bail!("stopped by the operator (Ctrl-C)");
                    }
                    KeyCode::Char(c) => {
                        self.keys.press(c.to_ascii_lowercase(), ctx.t);
                    }
                    _ => {}
                }
            }
        }
        Ok(Some(self.keys.command(ctx.t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_drive_their_axis_while_held_and_toggle_the_gripper_once() {
        let mut k = KeyState::default();
        assert!(k.press('w', 0.0));
        assert!(k.press('q', 0.0));
        assert!(!k.press('z', 0.0));
        let c = k.command(0.1);
        assert_eq!(c.motion, [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(c.gripper, None);
        // Auto-repeat keeps +x alive; yaw lapses after KEY_HOLD_S.
        k.press('w', 0.2);
        let c = k.command(0.4);
        assert_eq!(c.motion, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Let go: zero motion (inside any deadband).
        assert_eq!(k.command(0.6).magnitude(), 0.0);
        // Space closes, is sent once, then opens on the next press.
        k.press(' ', 1.0);
        assert_eq!(k.command(1.0).gripper, Some(-1.0));
        assert_eq!(k.command(1.03).gripper, None);
        k.press(' ', 1.1);
        assert_eq!(k.command(1.1).gripper, Some(1.0));
        // The opposite key reverses the axis.
        k.press('s', 2.0);
        assert_eq!(k.command(2.0).motion[0], -1.0);
    }
}
