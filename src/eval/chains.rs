//! CALVIN's 1000 evaluation chains, generated here exactly as
//! `mees/calvin` does (`multistep_sequences.get_sequences(1000)` and
//! `utils.get_env_state_for_initial_condition`), with numpy's legacy random
//! state ported bit for bit ([`super::mt19937`]).
//!
//! - 192 initial conditions: the product of the condition values, keeping those
//!   with one or two blocks on the table and at most one block per slider side;
//! - `np.array_split(range(1000), 192)` chains per condition; for condition `i`,
//!   `np.random.seed(i)` and draws of 5 distinct tasks
//!   (`np.random.choice(tasks, 5, replace=False)`) until enough draws are
//!   feasible (each task has exactly one applicable rule, categories distinct);
//! - the (condition, tasks) list shuffled under `np.random.seed(0)`;
//! - per chain, `robot_obs` is CALVIN's fixed start pose and `scene_obs` follows
//!   the condition; table blocks take one of two spots (shuffled) and each block's
//!   yaw is uniform in π/2 ± π/8, from `np.random.seed(fnv1_32(str(cond.values())))`.

use std::f64::consts::PI;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::mt19937::{fnv1_32, utf16le, NumpyRandomState};

/// Number of chains in CALVIN's evaluation.
pub const NUM_CHAINS: usize = 1000;
/// Subtasks per chain.
pub const CHAIN_LEN: usize = 5;

/// A chain's symbolic initial condition, in CALVIN's key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialCondition {
    /// Green LED on (1) or off (0).
    pub led: u8,
    /// Light bulb on (1) or off (0).
    pub lightbulb: u8,
    /// Sliding door `left` or `right`.
    pub slider: String,
    /// Drawer `open` or `closed`.
    pub drawer: String,
    /// `table`, `slider_left` or `slider_right`.
    pub red_block: String,
    /// Likewise.
    pub blue_block: String,
    /// Likewise.
    pub pink_block: String,
    /// Always 0 in CALVIN's conditions.
    pub grasped: u8,
}

impl InitialCondition {
    /// Python's `str(cond.values())`, the text CALVIN hashes.
    pub fn python_values_str(&self) -> String {
        format!(
            "dict_values([{}, {}, '{}', '{}', '{}', '{}', '{}', {}])",
            self.led,
            self.lightbulb,
            self.slider,
            self.drawer,
            self.red_block,
            self.blue_block,
            self.pink_block,
            self.grasped
        )
    }

    /// The FNV-1 32 seed of the block placement (pyhash `fnv1_32` over UTF-16-LE).
    pub fn placement_seed(&self) -> u32 {
        fnv1_32(&utf16le(&self.python_values_str()), 0)
    }

    fn state(&self) -> IState {
        let int = |v: u8| if v == 0 { "0" } else { "1" };
        [
            int(self.led),
            int(self.lightbulb),
            &self.slider,
            &self.drawer,
            &self.red_block,
            &self.blue_block,
            &self.pink_block,
            int(self.grasped),
        ]
        .map(|v| VALUES.iter().position(|&x| x == v).unwrap_or(VALUES.len()) as u8)
    }
}

/// One evaluation chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    /// The symbolic start state.
    pub initial_condition: InitialCondition,
    /// The subtasks, in order.
    pub tasks: Vec<String>,
    /// CALVIN `robot_obs` (15) to reset to.
    pub robot_obs: Vec<f64>,
    /// CALVIN `scene_obs` (24) to reset to.
    pub scene_obs: Vec<f64>,
}

// ------------------------------------------------------------ symbolic planner

/// Keys of the symbolic state, in CALVIN's order.
const KEYS: [&str; 8] = [
    "led",
    "lightbulb",
    "slider",
    "drawer",
    "red_block",
    "blue_block",
    "pink_block",
    "grasped",
];

const VALUES: [&str; 16] = [
    "0",
    "1",
    "left",
    "right",
    "open",
    "closed",
    "table",
    "slider_left",
    "slider_right",
    "drawer",
    "grasped",
    "stacked_top",
    "stacked_bottom",
    "on_red",
    "on_blue",
    "on_pink",
];

fn key(k: &str) -> usize {
    KEYS.iter()
        .position(|&x| x == k)
        .expect("a key of the symbolic state")
}

/// A rule: conditions (key, allowed values) and effects (key, value).
struct Rule {
    cond: &'static [(&'static str, &'static [&'static str])],
    effect: &'static [(&'static str, &'static str)],
}

macro_rules! rule {
    ({$($ck:literal : [$($cv:literal),+]),*} => {$($ek:literal : $ev:literal),*}) => {
        Rule { cond: &[$(($ck, &[$($cv),+])),*], effect: &[$(($ek, $ev)),*] }
    };
}

/// CALVIN's tasks in the order of `multistep_sequences.tasks` (the order
/// `np.random.choice` indexes), with their category and rules.
#[rustfmt::skip]
const TASKS: [(&str, u8, &[Rule]); 34] = [
    ("rotate_red_block_right", 1, &[rule!({"red_block": ["table"], "grasped": ["0"]} => {"red_block": "table"})]),
    ("rotate_red_block_left", 1, &[rule!({"red_block": ["table"], "grasped": ["0"]} => {"red_block": "table"})]),
    ("rotate_blue_block_right", 1, &[rule!({"blue_block": ["table"], "grasped": ["0"]} => {"blue_block": "table"})]),
    ("rotate_blue_block_left", 1, &[rule!({"blue_block": ["table"], "grasped": ["0"]} => {"blue_block": "table"})]),
    ("rotate_pink_block_right", 1, &[rule!({"pink_block": ["table"], "grasped": ["0"]} => {"pink_block": "table"})]),
    ("rotate_pink_block_left", 1, &[rule!({"pink_block": ["table"], "grasped": ["0"]} => {"pink_block": "table"})]),
    ("push_red_block_right", 1, &[rule!({"red_block": ["table"], "grasped": ["0"]} => {"red_block": "table"})]),
    ("push_red_block_left", 1, &[rule!({"red_block": ["table"], "grasped": ["0"]} => {"red_block": "table"})]),
    ("push_blue_block_right", 1, &[rule!({"blue_block": ["table"], "grasped": ["0"]} => {"blue_block": "table"})]),
    ("push_blue_block_left", 1, &[rule!({"blue_block": ["table"], "grasped": ["0"]} => {"blue_block": "table"})]),
    ("push_pink_block_right", 1, &[rule!({"pink_block": ["table"], "grasped": ["0"]} => {"pink_block": "table"})]),
    ("push_pink_block_left", 1, &[rule!({"pink_block": ["table"], "grasped": ["0"]} => {"pink_block": "table"})]),
    ("move_slider_left", 2, &[rule!({"slider": ["right"], "grasped": ["0"]} => {"slider": "left"})]),
    ("move_slider_right", 2, &[rule!({"slider": ["left"], "grasped": ["0"]} => {"slider": "right"})]),
    ("open_drawer", 3, &[rule!({"drawer": ["closed"], "grasped": ["0"]} => {"drawer": "open"})]),
    ("close_drawer", 3, &[rule!({"drawer": ["open"], "grasped": ["0"]} => {"drawer": "closed"})]),
    ("lift_red_block_table", 4, &[rule!({"red_block": ["table"], "grasped": ["0"]} => {"red_block": "grasped", "grasped": "1"})]),
    ("lift_red_block_slider", 5, &[
        rule!({"red_block": ["slider_left"], "slider": ["right"], "grasped": ["0"]} => {"red_block": "grasped", "grasped": "1"}),
        rule!({"red_block": ["slider_right"], "slider": ["left"], "grasped": ["0"]} => {"red_block": "grasped", "grasped": "1"}),
    ]),
    ("lift_red_block_drawer", 6, &[rule!({"red_block": ["drawer"], "drawer": ["open"], "grasped": ["0"]} => {"red_block": "grasped", "grasped": "1"})]),
    ("lift_blue_block_table", 4, &[rule!({"blue_block": ["table"], "grasped": ["0"]} => {"blue_block": "grasped", "grasped": "1"})]),
    ("lift_blue_block_slider", 5, &[
        rule!({"blue_block": ["slider_left"], "slider": ["right"], "grasped": ["0"]} => {"blue_block": "grasped", "grasped": "1"}),
        rule!({"blue_block": ["slider_right"], "slider": ["left"], "grasped": ["0"]} => {"blue_block": "grasped", "grasped": "1"}),
    ]),
    ("lift_blue_block_drawer", 6, &[rule!({"blue_block": ["drawer"], "drawer": ["open"], "grasped": ["0"]} => {"blue_block": "grasped", "grasped": "1"})]),
    ("lift_pink_block_table", 4, &[rule!({"pink_block": ["table"], "grasped": ["0"]} => {"pink_block": "grasped", "grasped": "1"})]),
    ("lift_pink_block_slider", 5, &[
        rule!({"pink_block": ["slider_left"], "slider": ["right"], "grasped": ["0"]} => {"pink_block": "grasped", "grasped": "1"}),
        rule!({"pink_block": ["slider_right"], "slider": ["left"], "grasped": ["0"]} => {"pink_block": "grasped", "grasped": "1"}),
    ]),
    ("lift_pink_block_drawer", 6, &[rule!({"pink_block": ["drawer"], "drawer": ["open"], "grasped": ["0"]} => {"pink_block": "grasped", "grasped": "1"})]),
    ("place_in_slider", 7, &[
        rule!({"red_block": ["grasped"], "slider": ["right"], "grasped": ["1"]} => {"red_block": "slider_right", "grasped": "0"}),
        rule!({"red_block": ["grasped"], "slider": ["left"], "grasped": ["1"]} => {"red_block": "slider_left", "grasped": "0"}),
        rule!({"blue_block": ["grasped"], "slider": ["right"], "grasped": ["1"]} => {"blue_block": "slider_right", "grasped": "0"}),
        rule!({"blue_block": ["grasped"], "slider": ["left"], "grasped": ["1"]} => {"blue_block": "slider_left", "grasped": "0"}),
        rule!({"pink_block": ["grasped"], "slider": ["right"], "grasped": ["1"]} => {"pink_block": "slider_right", "grasped": "0"}),
        rule!({"pink_block": ["grasped"], "slider": ["left"], "grasped": ["1"]} => {"pink_block": "slider_left", "grasped": "0"}),
    ]),
    ("place_in_drawer", 7, &[
        rule!({"red_block": ["grasped"], "drawer": ["open"], "grasped": ["1"]} => {"red_block": "drawer", "grasped": "0"}),
        rule!({"blue_block": ["grasped"], "drawer": ["open"], "grasped": ["1"]} => {"blue_block": "drawer", "grasped": "0"}),
        rule!({"pink_block": ["grasped"], "drawer": ["open"], "grasped": ["1"]} => {"pink_block": "drawer", "grasped": "0"}),
    ]),
    ("stack_block", 10, &[
        rule!({"red_block": ["grasped"], "blue_block": ["table"], "grasped": ["1"]} => {"red_block": "stacked_top", "blue_block": "stacked_bottom", "grasped": "0"}),
        rule!({"red_block": ["grasped"], "pink_block": ["table"], "grasped": ["1"]} => {"red_block": "stacked_top", "pink_block": "stacked_bottom", "grasped": "0"}),
        rule!({"blue_block": ["grasped"], "red_block": ["table"], "grasped": ["1"]} => {"blue_block": "stacked_top", "red_block": "stacked_bottom", "grasped": "0"}),
        rule!({"blue_block": ["grasped"], "pink_block": ["table"], "grasped": ["1"]} => {"blue_block": "stacked_top", "pink_block": "stacked_bottom", "grasped": "0"}),
        rule!({"pink_block": ["grasped"], "red_block": ["table"], "grasped": ["1"]} => {"pink_block": "stacked_top", "red_block": "stacked_bottom", "grasped": "0"}),
        rule!({"pink_block": ["grasped"], "blue_block": ["table"], "grasped": ["1"]} => {"pink_block": "stacked_top", "blue_block": "stacked_bottom", "grasped": "0"}),
    ]),
    ("unstack_block", 11, &[
        rule!({"red_block": ["stacked_top"], "blue_block": ["stacked_bottom"], "grasped": ["0"]} => {"red_block": "table", "blue_block": "table"}),
        rule!({"red_block": ["stacked_top"], "pink_block": ["stacked_bottom"], "grasped": ["0"]} => {"red_block": "table", "pink_block": "table"}),
        rule!({"blue_block": ["stacked_top"], "red_block": ["stacked_bottom"], "grasped": ["0"]} => {"blue_block": "table", "red_block": "table"}),
        rule!({"blue_block": ["stacked_top"], "pink_block": ["stacked_bottom"], "grasped": ["0"]} => {"blue_block": "table", "pink_block": "table"}),
        rule!({"pink_block": ["stacked_top"], "red_block": ["stacked_bottom"], "grasped": ["0"]} => {"pink_block": "table", "red_block": "table"}),
        rule!({"pink_block": ["stacked_top"], "blue_block": ["stacked_bottom"], "grasped": ["0"]} => {"pink_block": "table", "blue_block": "table"}),
    ]),
    ("turn_on_lightbulb", 8, &[rule!({"lightbulb": ["0"], "grasped": ["0"]} => {"lightbulb": "1"})]),
    ("turn_off_lightbulb", 8, &[rule!({"lightbulb": ["1"], "grasped": ["0"]} => {"lightbulb": "0"})]),
    ("turn_on_led", 8, &[rule!({"led": ["0"], "grasped": ["0"]} => {"led": "1"})]),
    ("turn_off_led", 8, &[rule!({"led": ["1"], "grasped": ["0"]} => {"led": "0"})]),
    ("push_into_drawer", 9, &[
        rule!({"red_block": ["table"], "blue_block": ["slider_right", "slider_left"], "pink_block": ["slider_right", "slider_left"], "drawer": ["open"], "grasped": ["0"]} => {"red_block": "drawer", "grasped": "0"}),
        rule!({"blue_block": ["table"], "red_block": ["slider_right", "slider_left"], "pink_block": ["slider_right", "slider_left"], "drawer": ["open"], "grasped": ["0"]} => {"blue_block": "drawer", "grasped": "0"}),
        rule!({"pink_block": ["table"], "blue_block": ["slider_right", "slider_left"], "red_block": ["slider_right", "slider_left"], "drawer": ["open"], "grasped": ["0"]} => {"pink_block": "drawer", "grasped": "0"}),
    ]),
];

/// The 34 task names in CALVIN's order.
pub fn task_names() -> impl Iterator<Item = &'static str> {
    TASKS.iter().map(|t| t.0)
}

/// A rule compiled to indices: (key, allowed-value bit mask) conditions and
/// (key, value) effects.
struct CompiledRule {
    cond: Vec<(usize, u32)>,
    effect: Vec<(usize, u8)>,
}

/// The symbolic state as value indices into [`VALUES`].
type IState = [u8; 8];

fn value_index(v: &str) -> u8 {
    VALUES
        .iter()
        .position(|&x| x == v)
        .expect("a value of the symbolic state") as u8
}

fn compiled_rules() -> &'static Vec<Vec<CompiledRule>> {
    static RULES: std::sync::OnceLock<Vec<Vec<CompiledRule>>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        TASKS
            .iter()
            .map(|(_, _, rules)| {
                rules
                    .iter()
                    .map(|r| CompiledRule {
                        cond: r
                            .cond
                            .iter()
                            .map(|(k, vs)| {
                                (key(k), vs.iter().fold(0u32, |m, v| m | 1 << value_index(v)))
                            })
                            .collect(),
                        effect: r
                            .effect
                            .iter()
                            .map(|(k, v)| (key(k), value_index(v)))
                            .collect(),
                    })
                    .collect()
            })
            .collect()
    })
}

/// The single state after `task`, or `None` unless exactly one rule applies.
fn unique_next(state: &IState, task: usize) -> Option<IState> {
    let mut next = None;
    for r in &compiled_rules()[task] {
        if r.cond.iter().all(|&(k, m)| m & (1 << state[k]) != 0) {
            if next.is_some() {
                return None;
            }
            let mut s = *state;
            for &(k, v) in &r.effect {
                s[k] = v;
            }
            next = Some(s);
        }
    }
    next
}

/// `check_sequence`: every task has exactly one applicable rule, categories distinct.
fn check_sequence(state: &IState, seq: &[usize]) -> bool {
    let mut s = *state;
    for &t in seq {
        match unique_next(&s, t) {
            Some(n) => s = n,
            None => return false,
        }
    }
    let mut cats: Vec<u8> = seq.iter().map(|&t| TASKS[t].1).collect();
    cats.sort_unstable();
    cats.windows(2).all(|w| w[0] != w[1])
}

/// CALVIN's 192 initial conditions, in `itertools.product` order.
pub fn initial_conditions() -> Vec<InitialCondition> {
    let blocks = ["table", "slider_right", "slider_left"];
    let mut out = vec![];
    for led in [0u8, 1] {
        for lightbulb in [0u8, 1] {
            for slider in ["right", "left"] {
                for drawer in ["closed", "open"] {
                    for red in blocks {
                        for blue in blocks {
                            for pink in blocks {
                                let l = [red, blue, pink];
                                let count = |v: &str| l.iter().filter(|&&x| x == v).count();
                                if !(1..=2).contains(&count("table"))
                                    || count("slider_right") >= 2
                                    || count("slider_left") >= 2
                                {
                                    continue;
                                }
                                out.push(InitialCondition {
                                    led,
                                    lightbulb,
                                    slider: slider.into(),
                                    drawer: drawer.into(),
                                    red_block: red.into(),
                                    blue_block: blue.into(),
                                    pink_block: pink.into(),
                                    grasped: 0,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A chain for training data (`vw2 record --chained`): a start state drawn from
/// CALVIN's 192 initial conditions, placed as CALVIN places them, and up to `len`
/// subtasks that follow CALVIN's rules (each task has exactly one applicable rule,
/// categories distinct). Drawn from `seed` with its own generator, so the chains are
/// not the evaluation's. With `tasks`, only those tasks are used (the chain may then
/// be shorter than `len`; it is never empty).
pub fn training_chain(seed: u64, len: usize, tasks: &[String]) -> Result<Chain> {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    let candidates: Vec<usize> = if tasks.is_empty() {
        (0..TASKS.len()).collect()
    } else {
        tasks
            .iter()
            .map(|t| {
                TASKS.iter().position(|x| x.0 == t).ok_or_else(|| {
                    anyhow::anyhow!("tasks: '{t}' is not one of CALVIN's 34 task names")
                })
            })
            .collect::<Result<_>>()?
    };
    let states = initial_conditions();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..10_000 {
        let cond = &states[rng.random_range(0..states.len())];
        let start = cond.state();
        // Grow the chain greedily from a shuffled candidate order.
        let mut order = candidates.clone();
        order.shuffle(&mut rng);
        let mut seq: Vec<usize> = Vec::new();
        for &t in &order {
            if seq.len() == len {
                break;
            }
            let mut trial = seq.clone();
            trial.push(t);
            if check_sequence(&start, &trial) {
                seq = trial;
            }
        }
        if !seq.is_empty() {
            let (robot, scene) = env_state_for_condition(cond);
            return Ok(Chain {
                initial_condition: cond.clone(),
                tasks: seq.iter().map(|&t| TASKS[t].0.to_string()).collect(),
                robot_obs: robot.to_vec(),
                scene_obs: scene.to_vec(),
            });
        }
    }
    anyhow::bail!("tasks {tasks:?}: no initial condition lets any of them start")
}

/// A drawn chain: its condition and task names.
pub type DrawnChain = (InitialCondition, Vec<&'static str>);

/// `get_sequences(num_sequences)`: (condition, task names) pairs, shuffled.
pub fn sequences(num_sequences: usize) -> Vec<DrawnChain> {
    let states = initial_conditions();
    let k = states.len();
    let (q, r) = (num_sequences / k, num_sequences % k);
    // Each condition draws from its own `np.random.seed(i)` stream (CALVIN runs
    // them in a process pool), so they are generated in parallel here too.
    let per_state = |i: usize| -> Vec<DrawnChain> {
        let want = q + usize::from(i < r);
        let mut rs = NumpyRandomState::new(i as u32);
        let state = states[i].state();
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            // np.random.choice(34, 5, replace=False): permutation(34)[:5].
            let mut perm: [usize; TASKS.len()] = std::array::from_fn(|k| k);
            rs.shuffle(&mut perm);
            let seq = &perm[..CHAIN_LEN];
            if check_sequence(&state, seq) {
                out.push((states[i].clone(), seq.iter().map(|&t| TASKS[t].0).collect()));
            }
        }
        out
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<(usize, Vec<DrawnChain>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= k {
                            return done;
                        }
                        done.push((i, per_state(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("chain generator thread"))
            .collect()
    });
    parts.sort_by_key(|(i, _)| *i);
    let mut results: Vec<_> = parts.into_iter().flat_map(|(_, v)| v).collect();
    NumpyRandomState::new(0).shuffle(&mut results);
    results
}

/// CALVIN's fixed start `robot_obs` of every evaluation chain.
pub const EVAL_ROBOT_OBS: [f64; 15] = [
    0.02586889,
    -0.2313129,
    0.5712808,
    3.09045411,
    -0.02908596,
    1.50013585,
    0.07999963,
    -1.21779124,
    1.03987629,
    2.11978254,
    -2.34205014,
    -0.87015899,
    1.64119093,
    0.55344928,
    1.0,
];

/// `get_env_state_for_initial_condition`: (`robot_obs`, `scene_obs`).
pub fn env_state_for_condition(cond: &InitialCondition) -> ([f64; 15], [f64; 24]) {
    let rot = (PI / 2.0 - PI / 8.0, PI / 2.0 + PI / 8.0);
    let slider_left = [-2.40851662e-01, 9.24044687e-02, 4.60990009e-01];
    let slider_right = [7.03416330e-02, 9.24044687e-02, 4.60990009e-01];
    let mut table = [
        [5.00000896e-02, -1.20000177e-01, 4.59990009e-01],
        [2.29995412e-01, -1.19995140e-01, 4.59990010e-01],
    ];
    let mut rs = NumpyRandomState::new(cond.placement_seed());
    rs.shuffle(&mut table);
    let mut s = [0.0f64; 24];
    if cond.slider == "left" {
        s[0] = 0.28;
    }
    if cond.drawer == "open" {
        s[1] = 0.22;
    }
    if cond.lightbulb == 1 {
        s[3] = 0.088;
    }
    s[4] = cond.lightbulb as f64;
    s[5] = cond.led as f64;
    let place = |loc: &str, fallback: [f64; 3]| match loc {
        "slider_right" => slider_right,
        "slider_left" => slider_left,
        _ => fallback,
    };
    s[6..9].copy_from_slice(&place(&cond.red_block, table[0]));
    s[11] = rs.uniform(rot.0, rot.1);
    let blue_table = if cond.red_block == "table" {
        table[1]
    } else {
        table[0]
    };
    s[12..15].copy_from_slice(&place(&cond.blue_block, blue_table));
    s[17] = rs.uniform(rot.0, rot.1);
    s[18..21].copy_from_slice(&place(&cond.pink_block, table[1]));
    s[23] = rs.uniform(rot.0, rot.1);
    (EVAL_ROBOT_OBS, s)
}

/// The `n` CALVIN evaluation chains with their concrete start states
/// (`n` = 1000 for the official protocol).
pub fn calvin_chains(n: usize) -> Vec<Chain> {
    sequences(n)
        .into_iter()
        .map(|(cond, tasks)| {
            let (robot, scene) = env_state_for_condition(&cond);
            Chain {
                initial_condition: cond,
                tasks: tasks.into_iter().map(String::from).collect(),
                robot_obs: robot.to_vec(),
                scene_obs: scene.to_vec(),
            }
        })
        .collect()
}

/// CALVIN's 1000 evaluation chains, generated once per process.
pub fn official_chains() -> &'static [Chain] {
    static CHAINS: std::sync::OnceLock<Vec<Chain>> = std::sync::OnceLock::new();
    CHAINS.get_or_init(|| calvin_chains(NUM_CHAINS))
}

/// Reads a chain file (a JSON list of [`Chain`]), checking every chain.
pub fn load_chains(path: &std::path::Path) -> Result<Vec<Chain>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read chain file", path.display()))?;
    let chains: Vec<Chain> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a chain list", path.display()))?;
    for (i, c) in chains.iter().enumerate() {
        validate_chain(c).with_context(|| format!("{}: chain {i}", path.display()))?;
    }
    Ok(chains)
}

/// Checks a chain's sizes and task names.
pub fn validate_chain(c: &Chain) -> Result<()> {
    ensure!(
        (1..=CHAIN_LEN).contains(&c.tasks.len()),
        "tasks: expected 1 to {CHAIN_LEN} subtasks, found {}",
        c.tasks.len()
    );
    for t in &c.tasks {
        if super::sentences::validation_sentence(t).is_none() {
            bail!("tasks: unknown task '{t}' (expected one of CALVIN's 34)");
        }
    }
    ensure!(
        c.robot_obs.len() == crate::io::ROBOT_OBS_DIM,
        "robot_obs: expected {} values, found {}",
        crate::io::ROBOT_OBS_DIM,
        c.robot_obs.len()
    );
    ensure!(
        c.scene_obs.len() == crate::io::SCENE_OBS_DIM,
        "scene_obs: expected {} values, found {}",
        crate::io::SCENE_OBS_DIM,
        c.scene_obs.len()
    );
    Ok(())
}
