//! Optimization: an AdamW whose moments can be saved and restored (candle_nn's
//! `AdamW` keeps them private), a cosine learning-rate schedule with linear
//! warm-up, and global-norm gradient clipping.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// Optimizer and schedule settings shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (reached at the end of the warm-up).
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Learning rate at the end of the cosine decay, as a fraction of `lr`.
    #[serde(default = "d_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Linear warm-up steps (from `lr / warmup_steps` to `lr`).
    #[serde(default = "d_warmup")]
    pub warmup_steps: u64,
    /// Decoupled weight decay, applied to matrices and conv kernels (rank ≥ 2) only.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Adam β₁.
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    /// Adam β₂.
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// Adam ε.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    #[serde(default = "d_clip")]
    pub clip_grad_norm: f64,
}

fn d_lr() -> f64 {
    1e-3
}
fn d_min_lr_ratio() -> f64 {
    0.1
}
fn d_warmup() -> u64 {
    5
}
fn d_wd() -> f64 {
    0.01
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: d_lr(),
            min_lr_ratio: d_min_lr_ratio(),
            warmup_steps: d_warmup(),
            weight_decay: d_wd(),
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            clip_grad_norm: d_clip(),
        }
    }
}

impl OptimConfig {
    /// Checks every field; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "optim.{name}: expected a finite value > 0, found {v}"
                ))
            }
        };
        pos("lr", self.lr)?;
        pos("eps", self.eps)?;
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("optim.{name}: expected 0 ≤ {name} < 1, found {v}"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!(
                "optim.min_lr_ratio: expected 0..=1, found {}",
                self.min_lr_ratio
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "optim.weight_decay: expected a finite value ≥ 0, found {}",
                self.weight_decay
            ));
        }
        if !(self.clip_grad_norm.is_finite() && self.clip_grad_norm >= 0.0) {
            return Err(format!(
                "optim.clip_grad_norm: expected a finite value ≥ 0 (0 = off), found {}",
                self.clip_grad_norm
            ));
        }
        Ok(())
    }

    /// Learning rate for update number `step` (0-based) out of `total_steps`:
    /// linear warm-up over `warmup_steps`, then cosine decay to `lr · min_lr_ratio`.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        let min_lr = self.lr * self.min_lr_ratio;
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Every trainable variable of `varmap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap poisoned");
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Sum of |gradient| for every variable (0 when it received none), sorted by name.
pub fn gradient_magnitudes(
    vars: &[(String, Var)],
    grads: &GradStore,
) -> Result<Vec<(String, f64)>> {
    vars.iter()
        .map(|(name, var)| {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g
                    .to_dtype(DType::F64)?
                    .abs()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
                None => 0.0,
            };
            Ok((name.clone(), g))
        })
        .collect()
}

/// Global L2 norm of the gradients of `vars`.
pub fn global_grad_norm(vars: &[(String, Var)], grads: &GradStore) -> Result<f64> {
    let mut sq = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    Ok(sq.sqrt())
}

/// AdamW with decoupled weight decay, over named `Var`s, with saveable moments.
///
/// Per update `t` (1-based): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `θ ← θ(1 − lr·wd) − lr·m̂/(√v̂ + ε)` with `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
/// Weight decay applies to parameters of rank ≥ 2 (not to biases and norms).
pub struct AdamW {
    cfg: OptimConfig,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl AdamW {
    /// A fresh optimizer (zero moments) over `vars`.
    pub fn new(vars: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!(e))?;
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            cfg: cfg.clone(),
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// The variables, by name.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr`. Gradients are first scaled so their
    /// global norm is at most `clip_grad_norm` (when > 0). Returns the global
    /// norm before clipping. Variables without a gradient are left unchanged.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let norm = global_grad_norm(&self.vars, grads)?;
        if !norm.is_finite() {
            bail!("gradient norm is {norm}: the loss produced NaN or Inf gradients");
        }
        let clip = self.cfg.clip_grad_norm;
        let scale = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let theta = var.as_tensor();
            let g = (g.to_dtype(theta.dtype())? * scale)?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let decay = if theta.rank() >= 2 {
                1.0 - lr * self.cfg.weight_decay
            } else {
                1.0
            };
            let update = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
            let next = ((theta * decay)? - (update * lr)?)?;
            var.set(&next)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(norm)
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores the moments and the update count from a checkpoint.
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps_done: u64,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| anyhow!("optimizer state: missing key '{key}'"))?;
                if t.shape() != var.as_tensor().shape() {
                    bail!(
                        "optimizer state: key '{key}': expected shape {:?}, found {:?}",
                        var.as_tensor().dims(),
                        t.dims()
                    );
                }
                *slot = t
                    .to_dtype(var.as_tensor().dtype())?
                    .to_device(var.as_tensor().device())?;
            }
        }
        self.t = steps_done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = OptimConfig {
            lr: 1.0,
            min_lr_ratio: 0.1,
            warmup_steps: 4,
            ..Default::default()
        };
        assert!((c.lr_at(0, 20) - 0.25).abs() < 1e-12);
        assert!((c.lr_at(3, 20) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(4, 20) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(12, 20) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(20, 20) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(99, 20) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_hand_computation() {
        // One scalar-ish matrix parameter, loss = sum(θ · g) so ∇ = g.
        let dev = Device::Cpu;
        let theta = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev).unwrap()).unwrap();
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            clip_grad_norm: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), theta.clone())], &cfg).unwrap();
        let g = Tensor::new(&[[0.5f32, -1.0]], &dev).unwrap();
        let loss = (theta.as_tensor() * &g).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 0.1).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = g/(|g|+ε) = sign(g).
        let got = theta.as_tensor().to_vec2::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) + 0.1];
        assert!((got[0][0] - want[0]).abs() < 1e-6, "{got:?}");
        assert!((got[0][1] - want[1]).abs() < 1e-6, "{got:?}");
        // Clipping scales the gradient to the clip norm.
        let cfg = OptimConfig {
            clip_grad_norm: 0.1,
            ..cfg
        };
        let mut opt = AdamW::new(vec![("w".into(), theta.clone())], &cfg).unwrap();
        let n = opt.step(&grads, 0.0).unwrap();
        assert!((n - (0.25f64 + 1.0).sqrt()).abs() < 1e-6);
        let st = opt.state_tensors();
        let m = st["m.w"].to_vec2::<f32>().unwrap();
        let s = 0.1 / (1.25f32.sqrt() + 1e-6);
        assert!((m[0][0] - 0.1 * 0.5 * s).abs() < 1e-6, "{m:?}");
    }
}
