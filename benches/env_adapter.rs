//! Env adapter benchmark: step round trip through the adapter against the bare
//! simulator step measured in the same run, and throughput with 1 and N processes.
//!
//! `cargo bench --bench env_adapter [-- --steps N --workers W]`

use std::process::Command;
use std::time::Instant;

use vw2_policy::io::env_adapter::{EnvAdapter, EnvConfig};
use vw2_policy::io::record::sample_task;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Steps/s of `steps` adapter round trips (expert actions, both cameras), and
/// the mean seconds per `step` call.
fn through_adapter(backend: &str, steps: usize, seed: u64) -> (f64, f64) {
    let mut env = EnvAdapter::spawn(&EnvConfig::new(backend)).expect("adapter starts");
    let mut done = 0;
    let mut step_time = 0.0;
    let mut k = 0;
    while done < steps {
        let s = sample_task(&mut env, seed + k, &[]).expect("sample_task");
        k += 1;
        env.reset(Some(&s.robot_obs), Some(&s.scene_obs))
            .expect("reset");
        for _ in 0..60.min(steps - done) {
            let a = env.expert_action(&s.task).expect("expert");
            let t0 = Instant::now();
            env.step(&a, true).expect("step");
            step_time += t0.elapsed().as_secs_f64();
            done += 1;
        }
    }
    env.close().expect("close");
    (done as f64 / step_time, step_time / done as f64)
}

/// The bare simulator's env.step rate with both cameras, from `vw2_sim.bench`.
fn bare_sim(steps: usize) -> Option<f64> {
    let py = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let out = Command::new(py)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .args(["-m", "vw2_sim.bench", "--steps", &steps.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("render=True"))?;
    let rate = line
        .split("env.step:")
        .nth(1)?
        .split('/')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(rate)
}

fn main() {
    let steps = arg("--steps", 300);
    let workers = arg("--workers", 2);
    println!("env adapter benchmark: {steps} steps per measurement, both cameras rendered");

    let (fake_rate, fake_step) = through_adapter("fake", steps * 3, 0);
    println!(
        "fake backend (protocol only, CALVIN-size images): {fake_rate:8.1} steps/s, {:.3} ms per round trip",
        fake_step * 1e3
    );

    let bare = bare_sim(steps);
    let (rate, per_step) = through_adapter("playtable", steps, 0);
    println!(
        "playtable through the adapter, 1 process:        {rate:8.1} steps/s, {:.2} ms per step",
        per_step * 1e3
    );
    match bare {
        Some(b) => {
            let overhead = per_step - 1.0 / b;
            println!("playtable bare env.step (same run):              {b:8.1} steps/s, {:.2} ms per step", 1e3 / b);
            println!(
                "adapter overhead per step: {:.3} ms ({:.1}% of the bare step); adapter/bare rate ratio {:.3}",
                overhead * 1e3,
                100.0 * overhead * b,
                rate / b
            );
        }
        None => println!("(bare simulator rate unavailable: is .venv set up?)"),
    }

    let t0 = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || through_adapter("playtable", steps, 1000 * (w as u64 + 1)))
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "playtable, {workers} processes in parallel: {:8.1} steps/s in total ({:.1} per process), wall {wall:.1} s",
        (workers * steps) as f64 / wall,
        (steps) as f64 / wall
    );
}
