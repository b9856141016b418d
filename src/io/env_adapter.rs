//! The env adapter: a simulator in a child process, driven over a versioned,
//! framed protocol on its stdin/stdout (see `docs/env-adapter-protocol.md`).
//!
//! Every frame is a 4-byte little-endian length followed by a msgpack map.
//! The child's crash, hang (no reply within the timeout) or malformed reply is
//! a clear error here, never a hang: a reader thread owns the child's stdout
//! and hands frames over a channel that is waited on with a timeout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rmpv::Value;
use serde::{Deserialize, Serialize};

use super::{Observation, RgbImage};

/// Protocol version spoken by this client.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest frame accepted (bytes).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Lines of the child's stderr kept for error messages.
const STDERR_TAIL_LINES: usize = 40;

/// Errors of the env adapter.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The child could not be started.
    #[error("cannot start env adapter `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child exited (crashed) while a request was pending.
    #[error(
        "env adapter '{backend}' exited ({status}) during '{op}'; its stderr ended with:\n{stderr}"
    )]
    Exited {
        /// Backend name.
        backend: String,
        /// The request.
        op: String,
        /// Exit status.
        status: String,
        /// Last lines of the child's stderr.
        stderr: String,
    },
    /// No reply within the timeout; the child was killed.
    #[error("env adapter '{backend}' did not answer '{op}' within {timeout_s:.1} s; it was killed. Its stderr ended with:\n{stderr}")]
    Timeout {
        /// Backend name.
        backend: String,
        /// The request.
        op: String,
        /// The timeout (s).
        timeout_s: f64,
        /// Last lines of the child's stderr.
        stderr: String,
    },
    /// The reply could not be decoded or lacks a field.
    #[error("env adapter '{backend}' sent a malformed reply to '{op}': {detail}")]
    Malformed {
        /// Backend name.
        backend: String,
        /// The request.
        op: String,
        /// What was wrong.
        detail: String,
    },
    /// The child answered with an error.
    #[error("env adapter '{backend}' refused '{op}': {message}")]
    Remote {
        /// Backend name.
        backend: String,
        /// The request.
        op: String,
        /// The child's message.
        message: String,
    },
    /// Writing the request failed (the child is gone).
    #[error("env adapter '{backend}': cannot send '{op}': {source}")]
    Send {
        /// Backend name.
        backend: String,
        /// The request.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How to start an env adapter child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// `playtable` (built in), `calvin` (a user's calvin_env checkout) or `fake`.
    pub backend: String,
    /// Python interpreter; default: `$VW2_PYTHON`, else the project's `.venv`, else `python3`.
    #[serde(default)]
    pub python: Option<PathBuf>,
    /// Folder holding the `vw2_adapter` and `vw2_sim` packages; default:
    /// `$VW2_PYTHON_DIR`, else the project's `python/`.
    #[serde(default)]
    pub python_dir: Option<PathBuf>,
    /// Seconds to wait for any reply before declaring the child hung.
    #[serde(default = "d_timeout")]
    pub timeout_s: f64,
    /// Seconds to wait for the first reply (imports, scene loading).
    #[serde(default = "d_start_timeout")]
    pub start_timeout_s: f64,
    /// Extra arguments for the server (e.g. `--calvin-env /path`).
    #[serde(default)]
    pub args: Vec<String>,
}

fn d_timeout() -> f64 {
    10.0
}
fn d_start_timeout() -> f64 {
    60.0
}

impl EnvConfig {
    /// A config for `backend` with default settings.
    pub fn new(backend: &str) -> Self {
        Self {
            backend: backend.into(),
            python: None,
            python_dir: None,
            timeout_s: d_timeout(),
            start_timeout_s: d_start_timeout(),
            args: vec![],
        }
    }

    fn resolve_python(&self) -> PathBuf {
        if let Some(p) = &self.python {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("VW2_PYTHON") {
            return p.into();
        }
        let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"));
        if venv.exists() {
            return venv;
        }
        "python3".into()
    }

    fn resolve_python_dir(&self) -> PathBuf {
        if let Some(p) = &self.python_dir {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("VW2_PYTHON_DIR") {
            return p.into();
        }
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
    }
}

/// What the child said about itself in `hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvHello {
    /// Backend name.
    pub backend: String,
    /// Task names its oracle knows.
    pub tasks: Vec<String>,
    /// Control rate (Hz).
    pub control_hz: f64,
    /// Child pid.
    pub pid: u32,
    /// What the backend chose at start that a user should see (e.g. the renderer).
    pub notes: Vec<String>,
}

/// A simulator in a child process.
pub struct EnvAdapter {
    backend: String,
    child: Child,
    stdin: ChildStdin,
    frames: Receiver<Result<Vec<u8>, String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    timeout: Duration,
    next_id: u64,
    hello: EnvHello,
    closed: bool,
    /// Every action sent with [`EnvAdapter::step`], when logging is on.
    action_log: Option<ActionLog>,
}

/// The actions a simulator was stepped with, in order (7-D CALVIN actions and
/// whether each was relative); see [`EnvAdapter::log_actions`].
pub type ActionLog = Arc<Mutex<Vec<([f64; 7], bool)>>>;

impl std::fmt::Debug for EnvAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvAdapter")
            .field("backend", &self.backend)
            .field("pid", &self.hello.pid)
            .finish()
    }
}

fn reader_thread(mut out: impl Read, tx: crossbeam_channel::Sender<Result<Vec<u8>, String>>) {
    loop {
        let mut head = [0u8; 4];
        if out.read_exact(&mut head).is_err() {
            return; // EOF: the channel disconnects and the client sees the exit.
        }
        let n = u32::from_le_bytes(head) as usize;
        if n > MAX_FRAME_BYTES {
            let _ = tx.send(Err(format!(
                "frame length {n} exceeds the {MAX_FRAME_BYTES}-byte limit"
            )));
            return;
        }
        let mut body = vec![0u8; n];
        if let Err(e) = out.read_exact(&mut body) {
            let _ = tx.send(Err(format!("truncated frame of {n} bytes: {e}")));
            return;
        }
        if tx.send(Ok(body)).is_err() {
            return;
        }
    }
}

impl EnvAdapter {
    /// Starts the child and performs the `hello` handshake.
    pub fn spawn(cfg: &EnvConfig) -> Result<Self, EnvError> {
        let python = cfg.resolve_python();
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg("-m")
            .arg("vw2_adapter.server")
            .arg("--backend")
            .arg(&cfg.backend)
            .args(&cfg.args)
            .env("PYTHONPATH", cfg.resolve_python_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .map_err(|source| EnvError::Spawn { command, source })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, frames) = crossbeam_channel::bounded(4);
        std::thread::Builder::new()
            .name(format!("env-{}-out", cfg.backend))
            .spawn(move || reader_thread(stdout, tx))
            .expect("spawn reader thread");
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let sink = stderr.clone();
        let backend = cfg.backend.clone();
        std::thread::Builder::new()
            .name(format!("env-{}-err", cfg.backend))
            .spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    tracing::debug!(target: "vw2::env", backend = %backend, "{line}");
                    let mut q = sink.lock().expect("stderr tail poisoned");
                    if q.len() == STDERR_TAIL_LINES {
                        q.pop_front();
                    }
                    q.push_back(line);
                }
            })
            .expect("spawn stderr thread");
        let mut env = Self {
            backend: cfg.backend.clone(),
            child,
            stdin,
            frames,
            stderr,
            timeout: Duration::from_secs_f64(cfg.start_timeout_s),
            next_id: 1,
            hello: EnvHello {
                backend: cfg.backend.clone(),
                tasks: vec![],
                control_hz: 30.0,
                pid: 0,
                notes: vec![],
            },
            closed: false,
            action_log: None,
        };
        let rep = env.request("hello", vec![])?;
        let protocol = field(&rep, "protocol").and_then(Value::as_u64);
        if protocol != Some(PROTOCOL_VERSION) {
            return Err(env.malformed(
                "hello",
                format!("expected protocol {PROTOCOL_VERSION}, found {protocol:?}"),
            ));
        }
        env.hello = EnvHello {
            backend: str_field(&rep, "backend").unwrap_or_default(),
            tasks: str_list(&rep, "tasks"),
            control_hz: field(&rep, "control_hz")
                .and_then(Value::as_f64)
                .unwrap_or(30.0),
            pid: field(&rep, "pid").and_then(Value::as_u64).unwrap_or(0) as u32,
            notes: str_list(&rep, "notes"),
        };
        for note in &env.hello.notes {
            tracing::info!(backend = %env.hello.backend, "{note}");
        }
        env.timeout = Duration::from_secs_f64(cfg.timeout_s);
        Ok(env)
    }

    /// From now on, keeps every action this env is stepped with: what
    /// reached the simulator, whichever path sent it (eval, `vw2 run`, teleop).
    pub fn log_actions(&mut self) -> ActionLog {
        self.action_log.get_or_insert_with(Default::default).clone()
    }

    /// What the child reported at start.
    pub fn hello(&self) -> &EnvHello {
        &self.hello
    }

    fn stderr_tail(&self) -> String {
        // Give the stderr thread a moment to drain what the child wrote last.
        std::thread::sleep(Duration::from_millis(50));
        let q = self.stderr.lock().expect("stderr tail poisoned");
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn malformed(&self, op: &str, detail: String) -> EnvError {
        EnvError::Malformed {
            backend: self.backend.clone(),
            op: op.into(),
            detail,
        }
    }

    fn exited(&mut self, op: &str) -> EnvError {
        let status = match self.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status: {e}"),
        };
        self.closed = true;
        EnvError::Exited {
            backend: self.backend.clone(),
            op: op.into(),
            status,
            stderr: self.stderr_tail(),
        }
    }

    /// Sends `op` with extra fields and waits for the reply map.
    pub fn request(
        &mut self,
        op: &str,
        fields: Vec<(&str, Value)>,
    ) -> Result<Vec<(Value, Value)>, EnvError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut map = vec![
            (Value::from("v"), Value::from(PROTOCOL_VERSION)),
            (Value::from("id"), Value::from(id)),
            (Value::from("op"), Value::from(op)),
        ];
        map.extend(fields.into_iter().map(|(k, v)| (Value::from(k), v)));
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &Value::Map(map))
            .expect("encoding to a Vec cannot fail");
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        if let Err(source) = self
            .stdin
            .write_all(&frame)
            .and_then(|()| self.stdin.flush())
        {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                return Err(self.exited(op));
            }
            return Err(EnvError::Send {
                backend: self.backend.clone(),
                op: op.into(),
                source,
            });
        }
        let body = match self.frames.recv_timeout(self.timeout) {
            Ok(Ok(body)) => body,
            Ok(Err(detail)) => {
                self.kill();
                return Err(self.malformed(op, detail));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.exited(op)),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                return Err(EnvError::Timeout {
                    backend: self.backend.clone(),
                    op: op.into(),
                    timeout_s: self.timeout.as_secs_f64(),
                    stderr: self.stderr_tail(),
                });
            }
        };
        let value = rmpv::decode::read_value(&mut body.as_slice()).map_err(|e| {
            self.kill();
            self.malformed(op, format!("not msgpack: {e}"))
        })?;
        let Value::Map(rep) = value else {
            self.kill();
            return Err(self.malformed(op, "expected a map".into()));
        };
        let rid = field(&rep, "id").and_then(Value::as_u64);
        if rid != Some(id) {
            self.kill();
            return Err(self.malformed(op, format!("expected reply id {id}, found {rid:?}")));
        }
        match field(&rep, "ok").and_then(Value::as_bool) {
            Some(true) => Ok(rep),
            Some(false) => Err(EnvError::Remote {
                backend: self.backend.clone(),
                op: op.into(),
                message: str_field(&rep, "error").unwrap_or_else(|| "no message".into()),
            }),
            None => Err(self.malformed(op, "missing boolean field 'ok'".into())),
        }
    }

    fn obs_reply(&mut self, op: &str, rep: &[(Value, Value)]) -> Result<Observation, EnvError> {
        let obs =
            field(rep, "obs").ok_or_else(|| self.malformed(op, "missing field 'obs'".into()))?;
        decode_obs(obs).map_err(|d| self.malformed(op, d))
    }

    /// Resets the scene to `robot_obs` / `scene_obs` (CALVIN layout); `None`
    /// lets the backend choose its default state.
    pub fn reset(
        &mut self,
        robot_obs: Option<&[f64]>,
        scene_obs: Option<&[f64]>,
    ) -> Result<Observation, EnvError> {
        let vec = |v: Option<&[f64]>| match v {
            Some(v) => Value::Array(v.iter().map(|&x| Value::from(x)).collect()),
            None => Value::Nil,
        };
        let rep = self.request(
            "reset",
            vec![("robot_obs", vec(robot_obs)), ("scene_obs", vec(scene_obs))],
        )?;
        self.obs_reply("reset", &rep)
    }

    /// Applies one 7-D action for one control step (1/30 s). Relative actions
    /// are in CALVIN units (xyz·0.02 m, euler·0.05 rad); the gripper is ±1.
    pub fn step(&mut self, action: &[f64; 7], relative: bool) -> Result<Observation, EnvError> {
        if let Some(log) = &self.action_log {
            log.lock()
                .expect("action log poisoned")
                .push((*action, relative));
        }
        let rep = self.request(
            "step",
            vec![
                (
                    "action",
                    Value::Array(action.iter().map(|&x| Value::from(x)).collect()),
                ),
                ("relative", Value::from(relative)),
            ],
        )?;
        self.obs_reply("step", &rep)
    }

    /// The backend's state snapshot, opaque here, for [`Self::task_success`].
    pub fn info(&mut self) -> Result<Value, EnvError> {
        let rep = self.request("info", vec![])?;
        field(&rep, "info")
            .cloned()
            .ok_or_else(|| self.malformed("info", "missing field 'info'".into()))
    }

    /// Which of `tasks` the oracle considers completed since `start_info`.
    pub fn task_success(
        &mut self,
        start_info: &Value,
        tasks: &[&str],
    ) -> Result<Vec<String>, EnvError> {
        let rep = self.request(
            "task_success",
            vec![
                ("start_info", start_info.clone()),
                (
                    "tasks",
                    Value::Array(tasks.iter().map(|&t| Value::from(t)).collect()),
                ),
            ],
        )?;
        let done = field(&rep, "completed")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("task_success", "missing list 'completed'".into()))?;
        Ok(done
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect())
    }

    /// The backend's scripted expert action for `task` (privileged state).
    pub fn expert_action(&mut self, task: &str) -> Result<[f64; 7], EnvError> {
        let rep = self.request("expert_action", vec![("task", Value::from(task))])?;
        let a = field(&rep, "action")
            .and_then(Value::as_array)
            .ok_or_else(|| self.malformed("expert_action", "missing list 'action'".into()))?;
        let v: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
        v.try_into().map_err(|v: Vec<f64>| {
            self.malformed(
                "expert_action",
                format!("expected 7 numbers, found {}", v.len()),
            )
        })
    }

    /// Asks the child to close and waits for it to exit.
    pub fn close(mut self) -> Result<(), EnvError> {
        let r = self.request("close", vec![]);
        self.closed = true;
        let _ = self.child.wait();
        r.map(|_| ())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.closed = true;
    }
}

impl Drop for EnvAdapter {
    fn drop(&mut self) {
        if !self.closed {
            self.kill();
        }
    }
}

/// Looks up `key` in a msgpack map.
pub fn field<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn str_field(map: &[(Value, Value)], key: &str) -> Option<String> {
    field(map, key).and_then(Value::as_str).map(String::from)
}

/// The strings of a list field (empty when absent).
fn str_list(map: &[(Value, Value)], key: &str) -> Vec<String> {
    field(map, key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn decode_image(v: &Value, name: &str, h: usize, w: usize) -> Result<RgbImage, String> {
    let map = v
        .as_map()
        .ok_or_else(|| format!("obs.{name}: expected a map"))?;
    let shape: Vec<u64> = field(map, "shape")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    if shape != [h as u64, w as u64, 3] {
        return Err(format!(
            "obs.{name}: expected shape [{h}, {w}, 3], found {shape:?}"
        ));
    }
    let data = field(map, "data")
        .and_then(Value::as_slice)
        .ok_or_else(|| format!("obs.{name}.data: expected bytes"))?
        .to_vec();
    let img = RgbImage {
        height: h,
        width: w,
        data,
    };
    img.validate(&format!("obs.{name}"))?;
    Ok(img)
}

fn decode_vec(v: Option<&Value>, name: &str) -> Result<Vec<f64>, String> {
    let a = v
        .and_then(Value::as_array)
        .ok_or_else(|| format!("obs.{name}: expected a list of numbers"))?;
    a.iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| format!("obs.{name}: expected numbers, found {x}"))
        })
        .collect()
}

/// Decodes an observation and checks it against CALVIN's layout.
pub fn decode_obs(v: &Value) -> Result<Observation, String> {
    let map = v.as_map().ok_or("obs: expected a map")?;
    let get = |k: &str| field(map, k).ok_or_else(|| format!("obs: missing field '{k}'"));
    let obs = Observation {
        rgb_static: decode_image(get("rgb_static")?, "rgb_static", 200, 200)?,
        rgb_gripper: decode_image(get("rgb_gripper")?, "rgb_gripper", 84, 84)?,
        robot_obs: decode_vec(field(map, "robot_obs"), "robot_obs")?,
        scene_obs: decode_vec(field(map, "scene_obs"), "scene_obs")?,
    };
    obs.validate().map_err(|e| format!("obs.{e}"))?;
    Ok(obs)
}
