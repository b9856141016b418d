//! The node's `diagnostic_msgs/DiagnosticArray`: live state and the last
//! run's report. Pure values, tested without ROS (`--features ros2-check`).

use r2r::builtin_interfaces::msg::Time;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};

use super::convert::header;
use crate::runtime::RunReport;

/// `diagnostic_msgs/DiagnosticStatus` levels.
pub mod level {
    /// OK.
    pub const OK: u8 = 0;
    /// WARN.
    pub const WARN: u8 = 1;
    /// ERROR.
    pub const ERROR: u8 = 2;
    /// STALE.
    pub const STALE: u8 = 3;
}

/// The node's live state, for diagnostics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveDiagnostics {
    /// `idle`, `running`, `estop`, `waiting: …`.
    pub state: String,
    /// Why the last run ended, if one did.
    pub last_end: String,
    /// Policy enabled.
    pub enabled: bool,
    /// E-stop latched.
    pub estop_latched: bool,
    /// Current instruction.
    pub instruction: String,
    /// Watchdog: `moving`, `holding`, `quiet`.
    pub watchdog: String,
    /// Age of the newest camera frame when the last command was sent (s).
    pub frame_age_s: Option<f64>,
    /// Camera frames per second delivered to the pipeline.
    pub camera_rate_hz: f64,
    /// Plans per second.
    pub plan_rate_hz: f64,
    /// Mean planner time over the last period (s).
    pub plan_time_s: Option<f64>,
    /// Commands per second.
    pub command_rate_hz: f64,
    /// Frames dropped because the proprioception was missing or stale.
    pub frames_dropped: u64,
    /// Frames refused (bad encoding or size).
    pub frames_refused: u64,
    /// Last input error (refused message), if any.
    pub last_input_error: String,
    /// Camera intrinsics disagree with the calibration (what differs).
    pub camera_info_mismatch: Option<String>,
    /// Teleop messages received (shadow mode, later).
    pub teleop_msgs: u64,
}

fn kv(key: &str, value: impl ToString) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: value.to_string(),
    }
}

fn ms(s: f64) -> String {
    format!("{:.1}", s * 1e3)
}

/// Diagnostics: three statuses, `vw2_policy: node` (state, e-stop, last
/// end), `vw2_policy: watchdog` (frame age, rates, drops) and `vw2_policy:
/// latency` (live plan time, and the last finished run's obs→command,
/// plan time and safety events from its [`RunReport`]).
pub fn diagnostics_from_report(
    report: Option<&RunReport>,
    live: &LiveDiagnostics,
    stale_timeout_s: f64,
    hardware_id: &str,
    stamp: Time,
) -> DiagnosticArray {
    let node_level = if live.estop_latched {
        level::ERROR
    } else if live.last_end.starts_with("error") {
        level::WARN
    } else {
        level::OK
    };
    let node_msg = if live.estop_latched {
        "e-stop latched".to_string()
    } else {
        live.state.clone()
    };
    let node = DiagnosticStatus {
        level: node_level,
        name: "vw2_policy: node".into(),
        message: node_msg,
        hardware_id: hardware_id.into(),
        values: vec![
            kv("state", &live.state),
            kv("enabled", live.enabled),
            kv("estop_latched", live.estop_latched),
            kv("instruction", &live.instruction),
            kv("last_end", &live.last_end),
            kv("teleop_msgs", live.teleop_msgs),
        ],
    };
    let running = live.state == "running";
    let stale = live.frame_age_s.is_some_and(|a| a > stale_timeout_s);
    let mut wd_level =
        if running && (stale || live.watchdog == "holding" || live.watchdog == "quiet") {
            level::WARN
        } else {
            level::OK
        };
    let mut wd_msg = if running {
        live.watchdog.clone()
    } else {
        "not running".into()
    };
    if live.camera_info_mismatch.is_some() || !live.last_input_error.is_empty() {
        wd_level = wd_level.max(level::WARN);
        wd_msg = format!("{wd_msg}; input problems (see values)");
    }
    let mut wd_values = vec![
        kv("watchdog", &live.watchdog),
        kv("frame_age_ms", live.frame_age_s.map_or("n/a".into(), ms)),
        kv("stale_timeout_ms", ms(stale_timeout_s)),
        kv("camera_rate_hz", format!("{:.1}", live.camera_rate_hz)),
        kv("command_rate_hz", format!("{:.1}", live.command_rate_hz)),
        kv("frames_dropped_no_proprio", live.frames_dropped),
        kv("frames_refused", live.frames_refused),
        kv("last_input_error", &live.last_input_error),
    ];
    if let Some(m) = &live.camera_info_mismatch {
        wd_values.push(kv("camera_info_mismatch", m));
    }
    let watchdog = DiagnosticStatus {
        level: wd_level,
        name: "vw2_policy: watchdog".into(),
        message: wd_msg,
        hardware_id: hardware_id.into(),
        values: wd_values,
    };
    let mut values = vec![
        kv("plan_rate_hz", format!("{:.2}", live.plan_rate_hz)),
        kv("plan_time_ms", live.plan_time_s.map_or("n/a".into(), ms)),
    ];
    if let Some(r) = report {
        values.extend([
            kv("last_run.ended_by", &r.ended_by),
            kv("last_run.ticks", r.ticks),
            kv("last_run.commands", r.commands),
            kv("last_run.holds", r.holds),
            kv("last_run.plans", r.plans),
            kv("last_run.frames", r.frames),
            kv(
                "last_run.obs_to_command_p50_ms",
                format!("{:.1}", r.obs_to_command.p50_ms),
            ),
            kv(
                "last_run.obs_to_command_p99_ms",
                format!("{:.1}", r.obs_to_command.p99_ms),
            ),
            kv(
                "last_run.plan_time_p50_ms",
                format!("{:.1}", r.plan_time.p50_ms),
            ),
            kv(
                "last_run.plan_time_p99_ms",
                format!("{:.1}", r.plan_time.p99_ms),
            ),
            kv(
                "last_run.actuate_jitter_p99_ms",
                format!("{:.2}", r.actuate_jitter.p99_ms),
            ),
            kv("last_run.dropped_monitor_frames", r.dropped_monitor_frames),
        ]);
        for (k, n) in &r.safety_events {
            values.push(kv(&format!("last_run.safety_events.{k}"), n));
        }
    }
    let latency = DiagnosticStatus {
        level: level::OK,
        name: "vw2_policy: latency".into(),
        message: if running {
            format!("{:.2} plans/s", live.plan_rate_hz)
        } else {
            "not running".into()
        },
        hardware_id: hardware_id.into(),
        values,
    };
    DiagnosticArray {
        header: header(stamp, ""),
        status: vec![node, watchdog, latency],
    }
}
