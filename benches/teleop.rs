//! Teleop takeover latency: operator input → the executed operator command.
//!
//! A 30 Hz real-time control loop (the ROS node's shape: a fixed-rate tick
//! that drains what arrived since the last one) runs the teleop pipeline
//! (arbiter + safety layer) in takeover mode with a policy request every tick.
//! An operator thread sends bursts of input beyond the deadband at random
//! moments, each stamped with its send time; the loop records when the first
//! command executing each burst left the pipeline. Reported beside the
//! control period (33.3 ms), and the pipeline's own cost per tick.
//!
//! `cargo bench --bench teleop [-- --seconds S]`

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vw2_policy::safety::{GripperState, SafetyConfig, TcpPose};
use vw2_policy::teleop::arbiter::{Control, TakeoverConfig};
use vw2_policy::teleop::operator::OperatorCommand;
use vw2_policy::teleop::session::{Issuer, Pipeline};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let seconds = arg("--seconds", 20.0);
    let cfg = SafetyConfig::calvin_default();
    let rate = cfg.rate_hz();
    let period = 1.0 / rate;
    let mut pipe = Pipeline::new(Control::Takeover, TakeoverConfig::default(), cfg).unwrap();
    let epoch = Instant::now();
    let now = move || epoch.elapsed().as_secs_f64();
    let mut pose = TcpPose::new([0.0, 0.0, 0.5], [std::f64::consts::PI, 0.0, 0.0]);
    pipe.begin_chain(now(), pose, GripperState::Open).unwrap();

    // Operator thread: idle messages at 60 Hz (a joystick driver's rate);
    // every 0.5–1.5 s a 0.3 s burst beyond the deadband, then released.
    let (tx, rx) = crossbeam_channel::unbounded::<(OperatorCommand, bool)>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let op = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut next_burst = now() + 1.0;
        let mut burst_until = 0.0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let t = now();
            let mut first = false;
            if t >= next_burst {
                burst_until = t + 0.3;
                next_burst = burst_until + 1.0 + rng.random_range(0.5..1.5);
                first = true;
            }
            let x = if t < burst_until { -0.8 } else { 0.0 };
            let c = OperatorCommand {
                t,
                motion: [x, 0.0, 0.0, 0.0, 0.0, 0.0],
                gripper: None,
            };
            if tx.send((c, first)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64(
                1.0 / 60.0 * rng.random_range(0.5..1.5),
            ));
        }
    });

    let mut latencies = vec![];
    let mut tick_cost = vec![];
    let mut pending_burst: Option<f64> = None;
    let start = now();
    let mut k = 0u64;
    while now() - start < seconds {
        let deadline = start + k as f64 * period;
        k += 1;
        let wait = deadline - now();
        if wait > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        let t = now();
        // Drain: the newest message is what the tick sees; remember a burst start.
        let mut msg = None;
        while let Ok((c, first)) = rx.try_recv() {
            if first {
                pending_burst = Some(c.t);
            }
            msg = Some(c);
        }
        let t0 = Instant::now();
        let o = pipe.tick(t, pose, Some([0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), msg);
        let sent = now();
        tick_cost.push(t0.elapsed().as_secs_f64());
        if let Some(c) = &o.command {
            pose = c.target;
        }
        if o.issuer == Issuer::Operator {
            if let Some(b) = pending_burst.take() {
                latencies.push(sent - b);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rx);
    op.join().unwrap();
    let n = latencies.len();
    let p50 = quantile(&mut latencies, 0.5) * 1e3;
    let p99 = quantile(&mut latencies, 0.99) * 1e3;
    let max = latencies.iter().copied().fold(0.0, f64::max) * 1e3;
    let c50 = quantile(&mut tick_cost, 0.5) * 1e6;
    let c99 = quantile(&mut tick_cost, 0.99) * 1e6;
    println!(
        "takeover latency (operator input → executed operator command), {n} takeovers over {seconds} s at {rate} Hz:"
    );
    println!(
        "  p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; control period {:.1} ms (max / period = {:.2})",
        period * 1e3,
        max / (period * 1e3)
    );
    println!("  pipeline tick (arbiter + safety): p50 {c50:.1} µs, p99 {c99:.1} µs");
}
