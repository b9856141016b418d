//! Teleop runs as MCAP (the ROS 2 bag format): ROS 2 messages in CDR with
//! their `ros2msg` schemas, so the file opens in Foxglove and `ros2 bag`.
//!
//! Topics: `/camera/static` (`sensor_msgs/msg/Image`, rgb8), `/policy/cmd`,
//! `/operator/cmd`, `/executed/cmd` (`geometry_msgs/msg/TwistStamped`: the
//! CALVIN relative action as a twist held for one control period, m/s and
//! rad/s), `/policy/gripper`, `/operator/gripper`, `/executed/gripper`
//! (`std_msgs/msg/Float64`, ±1), `/safety/events` and `/teleop/interventions`
//! (`std_msgs/msg/String`, one JSON object each).
//!
//! Crash safety: messages go into uncompressed chunks that are closed and
//! flushed to disk every `flush_every_s` of run time (default 1 s), so a
//! killed run leaves a file whose complete chunks a linear reader (the `mcap`
//! crate's `MessageStream`, `mcap recover`) reads up to the last flush; a run
//! that ends normally writes the summary and footer.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::base::units::{REL_EULER_RAD, REL_XYZ_M};
use crate::io::RgbImage;

const TIME_MSG: &str = "int32 sec\nuint32 nanosec\n";
const HEADER_MSG: &str = "builtin_interfaces/Time stamp\nstring frame_id\n";
const SEP: &str =
    "================================================================================\n";

fn image_schema() -> String {
    format!(
        "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n\
         uint32 step\nuint8[] data\n{SEP}MSG: std_msgs/Header\n{HEADER_MSG}{SEP}MSG: builtin_interfaces/Time\n{TIME_MSG}"
    )
}

fn twist_stamped_schema() -> String {
    format!(
        "std_msgs/Header header\nTwist twist\n{SEP}MSG: std_msgs/Header\n{HEADER_MSG}\
         {SEP}MSG: builtin_interfaces/Time\n{TIME_MSG}{SEP}MSG: geometry_msgs/Twist\n\
         Vector3 linear\nVector3 angular\n{SEP}MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n"
    )
}

/// A little-endian CDR (XCDR1) encoder: alignment counts from the end of the
/// 4-byte encapsulation header.
#[derive(Debug, Default)]
pub struct Cdr {
    buf: Vec<u8>,
}

impl Cdr {
    /// An encoder with the CDR_LE encapsulation header written.
    pub fn new() -> Self {
        Self {
            buf: vec![0x00, 0x01, 0x00, 0x00],
        }
    }
    fn align(&mut self, n: usize) {
        while !(self.buf.len() - 4).is_multiple_of(n) {
            self.buf.push(0);
        }
    }
    /// An `int32`.
    pub fn i32(&mut self, v: i32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A `uint32`.
    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A `uint8`.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A `float64`.
    pub fn f64(&mut self, v: f64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A `string` (length with the terminating NUL, bytes, NUL).
    pub fn string(&mut self, s: &str) {
        self.u32(s.len() as u32 + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// A `uint8[]`.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// A `std_msgs/Header` at time `t` (s).
    pub fn header(&mut self, t: f64, frame_id: &str) {
        let sec = t.floor();
        self.i32(sec as i32);
        self.u32(((t - sec) * 1e9).round().min(999_999_999.0) as u32);
        self.string(frame_id);
    }
    /// The encoded message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Channel ids of the bag's topics.
#[derive(Debug, Clone, Copy)]
struct Channels {
    image: u16,
    policy: u16,
    operator: u16,
    executed: u16,
    policy_gripper: u16,
    operator_gripper: u16,
    executed_gripper: u16,
    events: u16,
    interventions: u16,
}

/// Writes one teleop run as MCAP; see the [module docs](self).
pub struct BagWriter {
    path: PathBuf,
    writer: mcap::Writer<BufWriter<File>>,
    ch: Channels,
    seq: u32,
    rate_hz: f64,
    flush_every_s: f64,
    last_flush_t: f64,
    finished: bool,
}

impl BagWriter {
    /// Creates `path` for a run at `rate_hz` (the control rate of the twists).
    pub fn create(path: &Path, rate_hz: f64) -> Result<Self> {
        let f =
            File::create(path).map_err(|e| anyhow!("{}: cannot create: {e}", path.display()))?;
        let err = |e: mcap::McapError| anyhow!("{}: {e}", path.display());
        let mut w = mcap::WriteOptions::new()
            .profile("ros2")
            .library("vw2_policy")
            .compression(None)
            .use_chunks(true)
            .create(BufWriter::new(f))
            .map_err(err)?;
        let image = w
            .add_schema(
                "sensor_msgs/msg/Image",
                "ros2msg",
                image_schema().as_bytes(),
            )
            .map_err(err)?;
        let twist = w
            .add_schema(
                "geometry_msgs/msg/TwistStamped",
                "ros2msg",
                twist_stamped_schema().as_bytes(),
            )
            .map_err(err)?;
        let float = w
            .add_schema("std_msgs/msg/Float64", "ros2msg", b"float64 data\n")
            .map_err(err)?;
        let string = w
            .add_schema("std_msgs/msg/String", "ros2msg", b"string data\n")
            .map_err(err)?;
        let meta = BTreeMap::new();
        let mut chan = |schema: u16, topic: &str| w.add_channel(schema, topic, "cdr", &meta);
        let ch = Channels {
            image: chan(image, "/camera/static").map_err(err)?,
            policy: chan(twist, "/policy/cmd").map_err(err)?,
            operator: chan(twist, "/operator/cmd").map_err(err)?,
            executed: chan(twist, "/executed/cmd").map_err(err)?,
            policy_gripper: chan(float, "/policy/gripper").map_err(err)?,
            operator_gripper: chan(float, "/operator/gripper").map_err(err)?,
            executed_gripper: chan(float, "/executed/gripper").map_err(err)?,
            events: chan(string, "/safety/events").map_err(err)?,
            interventions: chan(string, "/teleop/interventions").map_err(err)?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            writer: w,
            ch,
            seq: 0,
            rate_hz,
            flush_every_s: 1.0,
            last_flush_t: 0.0,
            finished: false,
        })
    }

    fn put(&mut self, channel: u16, t: f64, data: &[u8]) -> Result<()> {
        let ns = (t.max(0.0) * 1e9).round() as u64;
        self.seq += 1;
        self.writer
            .write_to_known_channel(
                &mcap::records::MessageHeader {
                    channel_id: channel,
                    sequence: self.seq,
                    log_time: ns,
                    publish_time: ns,
                },
                data,
            )
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))
    }

    /// The static camera frame at `t` (s).
    pub fn image(&mut self, t: f64, img: &RgbImage) -> Result<()> {
        let mut c = Cdr::new();
        c.header(t, "static_camera");
        c.u32(img.height as u32);
        c.u32(img.width as u32);
        c.string("rgb8");
        c.u8(0);
        c.u32(img.width as u32 * 3);
        c.bytes(&img.data);
        self.put(self.ch.image, t, &c.finish())
    }

    /// A 7-D CALVIN relative action at `t` from `who` (`policy`, `operator`,
    /// `executed`): the twist on `/{who}/cmd`, the gripper on `/{who}/gripper`.
    pub fn command(&mut self, t: f64, who: &str, action: &[f64; 7]) -> Result<()> {
        let (cmd, grip) = match who {
            "policy" => (self.ch.policy, self.ch.policy_gripper),
            "operator" => (self.ch.operator, self.ch.operator_gripper),
            "executed" => (self.ch.executed, self.ch.executed_gripper),
            other => anyhow::bail!("bag: unknown command stream '{other}'"),
        };
        let mut c = Cdr::new();
        c.header(t, "base");
        for v in &action[..3] {
            c.f64(v * REL_XYZ_M * self.rate_hz);
        }
        for v in &action[3..6] {
            c.f64(v * REL_EULER_RAD * self.rate_hz);
        }
        self.put(cmd, t, &c.finish())?;
        let mut g = Cdr::new();
        g.f64(action[6]);
        self.put(grip, t, &g.finish())
    }

    /// A safety event or an intervention (`json` text) at `t`.
    pub fn note(&mut self, t: f64, intervention: bool, json: &str) -> Result<()> {
        let mut c = Cdr::new();
        c.string(json);
        let ch = if intervention {
            self.ch.interventions
        } else {
            self.ch.events
        };
        self.put(ch, t, &c.finish())
    }

    /// Closes the chunk and flushes it to disk when `flush_every_s` of run time
    /// passed since the last flush (call once per tick).
    pub fn maybe_flush(&mut self, t: f64) -> Result<()> {
        if t - self.last_flush_t >= self.flush_every_s || t < self.last_flush_t {
            self.last_flush_t = t;
            self.writer
                .flush()
                .map_err(|e| anyhow!("{}: flush: {e}", self.path.display()))?;
        }
        Ok(())
    }

    /// Writes the summary and footer.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.writer
            .finish()
            .map_err(|e| anyhow!("{}: finish: {e}", self.path.display()))?;
        Ok(())
    }
}

/// One message read back: topic, log time (ns), CDR bytes.
pub type BagMessage = (String, u64, Vec<u8>);

/// Messages of an MCAP file by topic, read linearly; a truncated file (a
/// killed run) yields the messages of its complete chunks. Returns
/// `(topic, log_time ns, data)` and whether the file ended cleanly.
pub fn read_messages(path: &Path) -> Result<(Vec<BagMessage>, bool)> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = vec![];
    let stream =
        mcap::MessageStream::new(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut clean = true;
    for m in stream {
        match m {
            Ok(m) => out.push((m.channel.topic.clone(), m.log_time, m.data.into_owned())),
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    Ok((out, clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_aligns_like_ros2() {
        // A Float64: header, then the double at offset 0 of the body.
        let mut c = Cdr::new();
        c.f64(1.5);
        assert_eq!(
            c.finish(),
            [&[0u8, 1, 0, 0][..], &1.5f64.to_le_bytes()].concat()
        );
        // Header(stamp 1.25 s, "ab") then a float64: sec, nanosec, len 3, "ab\0", pad to 8.
        let mut c = Cdr::new();
        c.header(1.25, "ab");
        c.f64(2.0);
        let b = c.finish();
        assert_eq!(&b[4..8], &1i32.to_le_bytes());
        assert_eq!(&b[8..12], &250_000_000u32.to_le_bytes());
        assert_eq!(&b[12..16], &3u32.to_le_bytes());
        assert_eq!(&b[16..19], b"ab\0");
        assert_eq!(b.len(), 4 + 16 + 8);
        assert_eq!(&b[20..28], &2.0f64.to_le_bytes());
    }

    #[test]
    fn a_killed_run_leaves_the_flushed_messages_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.mcap");
        let mut w = BagWriter::create(&path, 30.0).unwrap();
        let img = RgbImage::zeros(4, 4);
        for k in 0..90 {
            let t = k as f64 / 30.0;
            w.image(t, &img).unwrap();
            w.command(t, "executed", &[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
                .unwrap();
            w.maybe_flush(t).unwrap();
        }
        // A crash: copy the file as it is on disk, without the footer.
        let killed = dir.path().join("killed.mcap");
        std::fs::copy(&path, &killed).unwrap();
        w.finish().unwrap();
        let (all, clean) = read_messages(&path).unwrap();
        assert!(clean);
        assert_eq!(all.len(), 90 * 3);
        let (partial, _) = read_messages(&killed).unwrap();
        // Everything up to the last flush (t = 2 s, 61 ticks) survived.
        let images = partial.iter().filter(|m| m.0 == "/camera/static").count();
        assert!((60..90).contains(&images), "{images} images");
        // The executed twist is 1 unit × 0.02 m × 30 Hz = 0.6 m/s along x.
        let twist = all.iter().find(|m| m.0 == "/executed/cmd").unwrap();
        let x = f64::from_le_bytes(twist.2[28..36].try_into().unwrap());
        assert!((x - 0.6).abs() < 1e-12, "{x}");
    }
}
