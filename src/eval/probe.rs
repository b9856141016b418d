//! Instruction sensitivity of a policy bundle (`vw2 eval instructions`).
//!
//! From each chain's start state the bundle makes its first plan once for each
//! of CALVIN's 34 validation instructions. A policy that follows the
//! instruction predicts different codes and acts differently for different
//! tasks from the same frame; one that ignores it gives the same plan 34 times.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::chains::Chain;
use super::sentences::VALIDATION_SENTENCES;
use crate::io::env_adapter::{EnvAdapter, EnvConfig};
use crate::policy::{LoadedPolicy, Policy, PolicyOptions};

/// The first plans from one start state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartProbe {
    /// Index of the chain whose start state this is.
    pub chain: usize,
    /// Distinct predicted code tuples over the instructions.
    pub distinct_codes: usize,
    /// Distinct first action chunks (rounded to 1e-3 CALVIN units).
    pub distinct_actions: usize,
    /// Mean over instruction pairs of the L2 distance between their first
    /// action chunks (CALVIN units, all rows and dims).
    pub mean_pairwise_action_l2: f64,
    /// Per instruction: task, predicted codes, first action of the chunk.
    pub plans: Vec<ProbePlan>,
}

/// One instruction's first plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbePlan {
    /// The oracle's task name.
    pub task: String,
    /// Codes the AR predicts for the first latent step.
    pub predicted_codes: Vec<u32>,
    /// The chunk's first action (CALVIN units for relative bundles).
    pub first_action: [f32; 7],
}

/// Instruction sensitivity over several start states.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstructionProbe {
    /// The bundle probed.
    pub policy: String,
    /// Instructions per start (CALVIN's 34).
    pub instructions: usize,
    /// Mean of [`StartProbe::distinct_codes`].
    pub mean_distinct_codes: f64,
    /// Mean of [`StartProbe::distinct_actions`].
    pub mean_distinct_actions: f64,
    /// Mean of [`StartProbe::mean_pairwise_action_l2`].
    pub mean_pairwise_action_l2: f64,
    /// Per start state.
    pub starts: Vec<StartProbe>,
}

/// The first plan of `policy` for every validation instruction from `obs`.
fn probe_start(
    policy: &mut Policy,
    chain: usize,
    obs: &crate::io::Observation,
) -> Result<StartProbe> {
    let mut plans = Vec::with_capacity(VALIDATION_SENTENCES.len());
    let mut chunks: Vec<Vec<f32>> = Vec::with_capacity(VALIDATION_SENTENCES.len());
    for (task, sentence) in VALIDATION_SENTENCES {
        policy.reset(sentence)?;
        let plan = policy
            .observe(&obs.rgb_static, &obs.robot_obs, 0.0)?
            .context("the first observation always makes a plan")?;
        chunks.push(plan.actions.iter().flatten().copied().collect());
        plans.push(ProbePlan {
            task: task.to_string(),
            predicted_codes: plan.predicted_codes.clone(),
            first_action: plan.actions.first().copied().unwrap_or_default(),
        });
    }
    Ok(summarize(chain, plans, &chunks))
}

/// Distinct codes and actions, and the mean pairwise chunk distance.
fn summarize(chain: usize, plans: Vec<ProbePlan>, chunks: &[Vec<f32>]) -> StartProbe {
    let distinct_codes = plans
        .iter()
        .map(|p| p.predicted_codes.clone())
        .collect::<BTreeSet<_>>()
        .len();
    let distinct_actions = chunks
        .iter()
        .map(|c| {
            c.iter()
                .map(|v| (v * 1000.0).round() as i64)
                .collect::<Vec<_>>()
        })
        .collect::<BTreeSet<_>>()
        .len();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..chunks.len() {
        for j in i + 1..chunks.len() {
            let d: f64 = chunks[i]
                .iter()
                .zip(&chunks[j])
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            sum += d.sqrt();
            pairs += 1;
        }
    }
    StartProbe {
        chain,
        distinct_codes,
        distinct_actions,
        mean_pairwise_action_l2: if pairs > 0 { sum / pairs as f64 } else { 0.0 },
        plans,
    }
}

/// Probes `bundle` from the start states of `chains` in a simulator of `env`.
pub fn probe_instructions(
    bundle: &Path,
    env: &EnvConfig,
    chains: &[(usize, Chain)],
) -> Result<InstructionProbe> {
    let device = candle_core::Device::Cpu;
    let loaded = LoadedPolicy::load(bundle, &device)
        .with_context(|| format!("{}: cannot load policy bundle", bundle.display()))?;
    let mut policy = Policy::new(loaded, PolicyOptions::default(), device)?;
    let mut sim = EnvAdapter::spawn(env)?;
    let mut starts = Vec::with_capacity(chains.len());
    for (index, chain) in chains {
        let obs = sim.reset(Some(&chain.robot_obs), Some(&chain.scene_obs))?;
        starts.push(probe_start(&mut policy, *index, &obs)?);
    }
    sim.close()?;
    let mean = |f: &dyn Fn(&StartProbe) -> f64| {
        starts.iter().map(f).sum::<f64>() / starts.len().max(1) as f64
    };
    Ok(InstructionProbe {
        policy: bundle.display().to_string(),
        instructions: VALIDATION_SENTENCES.len(),
        mean_distinct_codes: mean(&|s| s.distinct_codes as f64),
        mean_distinct_actions: mean(&|s| s.distinct_actions as f64),
        mean_pairwise_action_l2: mean(&|s| s.mean_pairwise_action_l2),
        starts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(task: &str, codes: &[u32]) -> ProbePlan {
        ProbePlan {
            task: task.into(),
            predicted_codes: codes.to_vec(),
            first_action: [0.0; 7],
        }
    }

    #[test]
    fn identical_plans_count_once_and_distances_average_over_pairs() {
        let plans = vec![plan("a", &[1, 2]), plan("b", &[1, 2]), plan("c", &[3, 2])];
        let chunks = vec![vec![0.0, 0.0], vec![0.0, 0.0], vec![3.0, 4.0]];
        let s = summarize(7, plans, &chunks);
        assert_eq!(s.chain, 7);
        assert_eq!(s.distinct_codes, 2);
        assert_eq!(s.distinct_actions, 2);
        // Pairs: (a,b) 0, (a,c) 5, (b,c) 5.
        assert!((s.mean_pairwise_action_l2 - 10.0 / 3.0).abs() < 1e-9);
    }
}
