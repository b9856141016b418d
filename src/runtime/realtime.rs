//! The real-time side of the actuate loop: thread priorities and CPU pinning
//! (Linux), and the phase alignment of the control clock with plan arrivals.

/// Gives the calling thread the lowest CPU priority, so rendering imagined
/// futures yields to ingest, plan and actuate on a busy machine: Linux's
/// SCHED_IDLE (any runnable normal thread preempts it at once; no privilege
/// needed), else nice 19.
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pthread_self is the calling thread; SCHED_IDLE takes priority 0.
        let idle = unsafe {
            let p = libc::sched_param { sched_priority: 0 };
            libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_IDLE, &p)
        };
        if idle == 0 {
            return;
        }
        // SAFETY: gettid has no preconditions; setpriority on our own thread id
        // only changes this thread's nice value.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19)
        };
        if rc != 0 {
            tracing::debug!("could not lower the monitor thread's priority");
        }
    }
}

/// The CPU the real-time actuate loop runs on (the last one); the monitor
/// stays off it. Only with two CPUs or more.
pub(crate) fn actuate_cpu() -> Option<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then_some(n - 1)
}

/// Sets the calling thread's CPU affinity to `cpus`; returns the old set, or
/// `None` when it could not be read or changed.
#[cfg(target_os = "linux")]
fn set_affinity(cpus: impl IntoIterator<Item = usize>) -> Option<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the sets are zeroed before use and filled with valid CPU
    // indices; pid 0 is the calling thread.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut old) != 0 {
            return None;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        (libc::sched_setaffinity(0, size, &set) == 0).then_some(old)
    }
}

/// Keeps the calling thread (the monitor) off the actuate CPU.
pub(crate) fn keep_off_actuate_cpu() {
    #[cfg(target_os = "linux")]
    if let Some(cpu) = actuate_cpu() {
        if set_affinity(0..cpu).is_none() {
            tracing::debug!("could not keep the monitor off the actuate CPU");
        }
    }
}

/// The calling thread set up for the real-time actuate loop while this lives
/// (Linux): pinned to [`actuate_cpu`] and, with a priority, under SCHED_FIFO
/// (without the privilege it logs and keeps the normal scheduler). The old
/// affinity and policy come back on drop.
pub(crate) struct ActuateThread {
    #[cfg(target_os = "linux")]
    affinity: Option<libc::cpu_set_t>,
    #[cfg(target_os = "linux")]
    sched: Option<(libc::c_int, libc::sched_param)>,
}

impl ActuateThread {
    pub(crate) fn enter(rt_priority: Option<i32>) -> Self {
        #[cfg(target_os = "linux")]
        {
            let affinity = actuate_cpu().and_then(|c| set_affinity([c]));
            let sched = rt_priority.and_then(|priority| {
                // SAFETY: pthread_self is always valid for the calling thread; the
                // get/set calls only read or change this thread's scheduling.
                unsafe {
                    let me = libc::pthread_self();
                    let mut policy = 0;
                    let mut old: libc::sched_param = std::mem::zeroed();
                    if libc::pthread_getschedparam(me, &mut policy, &mut old) != 0 {
                        return None;
                    }
                    let new = libc::sched_param {
                        sched_priority: priority.clamp(1, 99),
                    };
                    let rc = libc::pthread_setschedparam(me, libc::SCHED_FIFO, &new);
                    if rc != 0 {
                        tracing::info!(
                            errno = rc,
                            "actuate keeps the normal scheduler (SCHED_FIFO needs CAP_SYS_NICE)"
                        );
                        return None;
                    }
                    Some((policy, old))
                }
            });
            Self { affinity, sched }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = rt_priority;
            Self {}
        }
    }
}

impl Drop for ActuateThread {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            if let Some((policy, old)) = self.sched.take() {
                // SAFETY: as in `enter`, on the same (calling) thread.
                unsafe {
                    libc::pthread_setschedparam(libc::pthread_self(), policy, &old);
                }
            }
            if let Some(old) = self.affinity.take() {
                // SAFETY: restores the set read in `enter` on the same thread.
                unsafe {
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
                }
            }
        }
    }
}

/// Phase alignment of the fixed-rate actuate clock with plan arrivals: a
/// tick that finds a plan ready more than a tolerance before it moves the
/// clock later by at most `slew` per plan, until ticks land `lead` after plans
/// are ready. It only ever delays, so every period is at least the nominal one.
#[derive(Debug, Clone)]
pub struct PhaseAligner {
    period: f64,
    lead: Option<f64>,
    tolerance: f64,
    slew: f64,
}

impl PhaseAligner {
    /// Aligner for a clock of `period` (s); `lead` (s) after plans, or none.
    pub fn new(period: f64, lead: Option<f64>) -> Self {
        let lead = lead.filter(|l| l.is_finite() && *l >= 0.0);
        Self {
            period,
            lead,
            tolerance: lead.unwrap_or(0.0) + 0.001_f64.min(0.1 * period),
            slew: 0.1 * period,
        }
    }

    /// The delay (s, ≥ 0) to add to the clock after the tick with deadline
    /// `tick` found a plan that became ready at `ready` (both on the runtime
    /// clock). `first`: no plan was playing yet (the arm holds), so the whole
    /// correction is made at once instead of at most `slew`.
    pub fn delay(&self, tick: f64, ready: f64, first: bool) -> f64 {
        let Some(lead) = self.lead else {
            return 0.0;
        };
        let late = tick - (ready + lead);
        if !(late > self.tolerance && late < self.period) {
            return 0.0;
        }
        // Delaying by `period − late` puts the previous tick `lead` after the plan.
        let needed = self.period - late;
        if first {
            needed
        } else {
            needed.min(self.slew)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PhaseAligner;

    /// Simulates a 30 Hz clock and a 30 Hz camera whose plans (one per 4
    /// frames) are ready `latency` after capture; returns (late of each plan's
    /// first tick, tick times).
    fn simulate(
        aligner: &PhaseAligner,
        camera_phase: f64,
        latency: f64,
        first_at_once: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let period = 1.0 / 30.0;
        let mut start = 0.0;
        let mut ticks = vec![];
        let mut lates = vec![];
        let mut next_plan = 0usize;
        let ready = |i: usize| camera_phase + (4 * i) as f64 * period + latency;
        for k in 0..600u64 {
            let deadline = start + k as f64 * period;
            ticks.push(deadline);
            while ready(next_plan) <= deadline {
                let r = ready(next_plan);
                lates.push(deadline - r);
                start += aligner.delay(deadline, r, next_plan == 0 && first_at_once);
                next_plan += 1;
            }
        }
        (lates, ticks)
    }

    #[test]
    fn aligns_ticks_just_after_plans_and_never_shortens_a_period() {
        let period = 1.0 / 30.0;
        let lead = 0.0005;
        let aligner = PhaseAligner::new(period, Some(lead));
        for phase in [0.001, 0.005, 0.0167, 0.03, 0.0333] {
            let (lates, ticks) = simulate(&aligner, phase, 0.002, false);
            // Free-running, the command waits up to a period for the next tick.
            let (free, _) = simulate(&PhaseAligner::new(period, None), phase, 0.002, false);
            // Aligning at once on the first plan: every later plan is on time.
            let (at_once, _) = simulate(&aligner, phase, 0.002, true);
            for &l in &at_once[1..] {
                assert!(
                    (-1e-9..=lead + 0.0021).contains(&l),
                    "phase {phase}: late {l}"
                );
            }
            let tail = &lates[lates.len() - 50..];
            for &l in tail {
                assert!(
                    (-1e-9..=lead + 0.0021).contains(&l),
                    "phase {phase}: late {l}"
                );
            }
            assert!(free[free.len() - 1] > tail[tail.len() - 1] - 1e-12);
            for w in ticks.windows(2) {
                assert!(w[1] - w[0] >= period - 1e-12, "a period shrank");
                assert!(
                    w[1] - w[0] <= 1.1 * period + 1e-12,
                    "a delay beyond the slew"
                );
            }
        }
    }

    #[test]
    fn no_lead_means_a_free_running_clock() {
        let a = PhaseAligner::new(1.0 / 30.0, None);
        assert_eq!(a.delay(1.0, 0.99, true), 0.0);
        let a = PhaseAligner::new(1.0 / 30.0, Some(0.0005));
        // Ready 10 ms before the tick: delay by the slew (3.3 ms), not more…
        assert!((a.delay(1.0, 0.99, false) - 0.1 / 30.0).abs() < 1e-12);
        // …unless nothing is playing yet: then the whole 23.8 ms at once.
        assert!((a.delay(1.0, 0.99, true) - (1.0 / 30.0 - 0.0095)).abs() < 1e-12);
        // Ready just before the tick (within the tolerance): no change.
        assert_eq!(a.delay(1.0, 0.999, false), 0.0);
        // Ready after the tick's deadline (the tick woke late): no change.
        assert_eq!(a.delay(1.0, 1.001, false), 0.0);
    }
}
